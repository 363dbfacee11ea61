package integration

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// switchSites are two sites on one Caddy: switched.test in front of a
// backend with one ETag per route, good.test in front of one whose strong
// ETags name versions. opts goes into both write_guard blocks.
func switchSites(constant, good, opts string) string {
	return fmtSite(`http://switched.test:9080 {
	metrics /metrics
	write_guard {
%[3]s
	}
	reverse_proxy %[1]s
}
http://good.test:9080 {
	write_guard {
%[3]s
	}
	reverse_proxy %[2]s
}
`, constant, good, opts)
}

// The switch itself, step by step: the write that shows the upstream's
// tag did not change switches the site to the guard's tags, and only that
// site; a write naming the upstream's tag is refused from then on, with a
// problem that says to read again, and the next read carries the guard's
// tag. A reload with changed settings keeps the switch.
func TestAutoSwitchToGuardTags(t *testing.T) {
	constant := newStore(map[string]string{"/doc": "v1"})
	constant.ETags = backend.ConstantETags
	good := newStore(map[string]string{"/doc": "g1"})
	constantAddr, goodAddr := startBackend(t, constant), startBackend(t, good)
	tester, logFile := startLoggedSites(t, switchSites(constantAddr, goodAddr, ""))
	const site = "switched.test"
	routeTag := backend.RouteETag("/doc")
	before := scrapeSite(t, site)

	get := at(t, caddyBase, site, "GET", "/doc", "")
	if get.status != 200 || get.header.Get("ETag") != routeTag {
		t.Fatalf("first GET: %d ETag %q, want the upstream's %s (nothing shows yet that it names no version)", get.status, get.header.Get("ETag"), routeTag)
	}
	waitLearnedAt(t, "http://localhost:2999", site+"/doc")
	first := at(t, caddyBase, site, "PUT", "/doc", "v2", "If-Match: "+routeTag)
	if first.status != 200 {
		t.Fatalf("the write that reveals the constant tag: %d %s", first.status, first.body)
	}
	t.Logf("the revealing write was answered ETag %q", first.header.Get("ETag"))
	if first.header.Get("ETag") == routeTag {
		t.Errorf("the revealing write's answer carries the upstream's tag %s, which the guard no longer trusts", routeTag)
	}

	src, ok := sourceOf(etagSourcesAt(t, "http://localhost:2999"), site)
	if !ok {
		t.Fatalf("after the revealing write the stats do not list %s: %+v", site, etagSourcesAt(t, "http://localhost:2999"))
	}
	if src.Source != "guard" || src.Key != site+"/doc" || src.ETag != routeTag {
		t.Errorf("etag_sources entry %+v, want source guard, key %s/doc, etag %s", src, site, routeTag)
	}
	if since, err := time.Parse(time.RFC3339, src.Since); err != nil || time.Since(since) > time.Minute || time.Until(since) > time.Second {
		t.Errorf("etag_sources since %q (%v): not the moment of the switch", src.Since, err)
	}
	if _, ok := sourceOf(etagSourcesAt(t, "http://localhost:2999"), "good.test"); ok {
		t.Errorf("the site with good ETags is listed as switched too")
	}

	// The write that revealed it replaced the version routeTag named, and
	// the upstream still shows that tag: it must stay refused.
	checkSwitched := func(step, want string) {
		t.Helper()
		stale := at(t, caddyBase, site, "PUT", "/doc", "lost after "+step, "If-Match: "+routeTag)
		if stale.status != http.StatusPreconditionFailed {
			t.Fatalf("%s: a write naming the upstream's tag: %d %s, want 412", step, stale.status, stale.body)
		}
		if p := problemOf(t, stale); !strings.Contains(p.Detail, "GET") {
			t.Errorf("%s: the 412's problem detail %q does not say to GET the resource again", step, p.Detail)
		}
		if got := mustBody(t, constant, "/doc"); got != want {
			t.Fatalf("%s: the backend holds %q, want %q", step, got, want)
		}
		read := at(t, caddyBase, site, "GET", "/doc", "")
		if tag := read.header.Get("ETag"); read.status != 200 || tag != guardTag([]byte(want)) {
			t.Fatalf("%s: GET: %d ETag %q, want the guard's tag %s", step, read.status, tag, guardTag([]byte(want)))
		}
		next := want + "+"
		if r := at(t, caddyBase, site, "PUT", "/doc", next, "If-Match: "+read.header.Get("ETag")); r.status != 200 {
			t.Fatalf("%s: a write naming the guard's tag just read: %d %s", step, r.status, r.body)
		}
		if got := mustBody(t, constant, "/doc"); got != next {
			t.Fatalf("%s: the backend holds %q, want %q", step, got, next)
		}
	}
	checkSwitched("the switch", "v2")

	// The other site goes on with its upstream's tags.
	goodTag := good.ETagOf([]byte("g1"))
	if r := at(t, caddyBase, "good.test", "GET", "/doc", ""); r.header.Get("ETag") != goodTag {
		t.Errorf("good.test: GET ETag %q, want the upstream's %s", r.header.Get("ETag"), goodTag)
	}
	if r := at(t, caddyBase, "good.test", "PUT", "/doc", "g2", "If-Match: "+goodTag); r.status != 200 {
		t.Errorf("good.test: a write naming the upstream's tag: %d %s", r.status, r.body)
	}

	// A reload that gives the guard new settings (and a cache of its own).
	tester.InitServer(loggedConfig(logFile, switchSites(constantAddr, goodAddr, "\t\tcache_ttl 6m")), "caddyfile")
	if _, ok := sourceOf(etagSourcesAt(t, "http://localhost:2999"), site); !ok {
		t.Fatalf("after a reload the stats do not list %s: %+v", site, etagSourcesAt(t, "http://localhost:2999"))
	}
	checkSwitched("the reload", "v2+")

	after := scrapeSite(t, site)
	if n := counterMoved(t, before, after, metricSwitches); n != 1 {
		t.Errorf("%s moved by %v, want 1", metricSwitches, n)
	}
	if n := counterMoved(t, before, after, metricHashed); n == 0 {
		t.Errorf("%s did not move although the guard tagged reads itself", metricHashed)
	}
	var lines []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if lines = loggedLines(t, logFile, logSwitched); len(lines) > 0 {
			break
		}
	}
	if len(lines) != 1 {
		t.Fatalf("the switch was logged %d times, want once:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if l := lines[0]; !strings.Contains(l, `"level":"warn"`) || !strings.Contains(l, site+"/doc") || !strings.Contains(l, strings.Trim(routeTag, `"`)) {
		t.Errorf("the switch's log line lacks its level or its evidence (key %s/doc, tag %s): %s", site, routeTag, l)
	}
}

// The workload in front of a backend with one ETag per route, with three
// reloads during it that give the guard a cache of its own each time:
// the switch made before a reload holds after it.
func TestAutoSwitchSurvivesReloadsDuringWrites(t *testing.T) {
	r := theTable(sendBackWhatWasRead)
	direct := "http://" + startBackend(t, countersAt(backend.ConstantETags, counters))
	control := r.workload(direct)
	control.run(t)
	control.requireLosses(t, "one ETag per route, reloads", counterAt(t, direct))

	upstream := startBackend(t, countersAt(backend.ConstantETags, counters))
	config := func(ttl string) string {
		return strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1) +
			fmtSite(":9080 {\n\twrite_guard {\n\t\tcache_ttl %s\n\t}\n\treverse_proxy %s\n}\n", ttl, upstream)
	}
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", upstream))
	tester.InitServer(config("5m"), "caddyfile")
	guarded := r.workload(caddyBase)
	done := make(chan struct{})
	go func() {
		defer close(done)
		guarded.run(t)
	}()
	for _, ttl := range []string{"6m", "7m", "8m"} {
		time.Sleep(300 * time.Millisecond)
		tester.InitServer(config(ttl), "caddyfile")
	}
	<-done
	guarded.requireNoneLost(t, "one ETag per route, 3 reloads", counterAt(t, "http://"+upstream))
	if _, ok := sourceOf(etagSourcesAt(t, "http://localhost:2999"), "*"); !ok {
		t.Errorf("after the reloads the stats do not list the site as switched: %+v", etagSourcesAt(t, "http://localhost:2999"))
	}
}

// Two Caddy instances sharing store redis in front of one backend with
// one ETag per route, every edit's read and write going through different
// instances: whichever instance switched, the other must not trust the
// upstream's tag for a version recorded with the guard's.
func TestAutoSwitchAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	r := theTable(sendBackWhatWasRead)
	direct := "http://" + startBackend(t, countersAt(backend.ConstantETags, counters))
	control := r.workload(direct)
	control.run(t)
	control.requireLosses(t, "one ETag per route, two instances", counterAt(t, direct))

	upstream := startBackend(t, countersAt(backend.ConstantETags, counters))
	a := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	b := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	guarded := r.workload(a.base, b.base)
	guarded.run(t)
	guarded.requireNoneLost(t, "one ETag per route, two instances with store redis", counterAt(t, "http://"+upstream))
	for _, i := range []*instance{a, b} {
		t.Logf("instance %s: etag_sources %+v, switch logged %d times", i.base, etagSourcesAt(t, i.admin), logged(logSwitched, i))
	}
	if n := logged(logSwitched, a, b); n == 0 {
		t.Errorf("neither instance logged a switch")
	}
}

// With store redis, the instance that saw the switch records the version
// the write made with the guard's tag; another instance that finds it
// there refuses the upstream's tag for that resource too: one that joins
// after the switch, and one that served before it and reloads after.
func TestAutoSwitchAdoptedByAnotherInstance(t *testing.T) {
	for _, c := range []struct {
		name string
		// reloadB: B serves a write before the switch and reloads after.
		reloadB bool
	}{
		{"new instance", false},
		{"reloaded instance", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := redistest.Start(t)
			store := newStore(map[string]string{"/doc": "v1"})
			store.ETags = backend.ConstantETags
			upstream := startBackend(t, store)
			a := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
			b := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
			routeTag := backend.RouteETag("/doc")
			if c.reloadB {
				activate(t, entrance{base: b.base})
			}

			if tag := send(t, "GET", a.base+"/doc", "").header.Get("ETag"); tag != routeTag {
				t.Fatalf("GET through A: ETag %q, want the upstream's %s", tag, routeTag)
			}
			if r := send(t, "PUT", a.base+"/doc", "v2", "If-Match: "+routeTag); r.status != 200 {
				t.Fatalf("the revealing write through A: %d %s", r.status, r.body)
			}
			if _, ok := sourceOf(etagSourcesAt(t, a.admin), "127.0.0.1"); !ok {
				t.Fatalf("A does not list the site as switched: %+v", etagSourcesAt(t, a.admin))
			}
			if c.reloadB {
				b.reload(t)
			}

			// B has seen nothing of it but what Redis holds.
			stale := send(t, "PUT", b.base+"/doc", "lost", "If-Match: "+routeTag)
			if stale.status != http.StatusPreconditionFailed {
				t.Fatalf("a write through B naming the upstream's tag: %d %s, want 412; the backend holds %q", stale.status, stale.body, mustBody(t, store, "/doc"))
			}
			problemOf(t, stale)
			if got := mustBody(t, store, "/doc"); got != "v2" {
				t.Fatalf("the backend holds %q, want v2", got)
			}
			read := send(t, "GET", b.base+"/doc", "")
			if tag := read.header.Get("ETag"); tag != guardTag([]byte("v2")) {
				t.Fatalf("GET through B: ETag %q, want the guard's %s", tag, guardTag([]byte("v2")))
			}
			if r := send(t, "PUT", b.base+"/doc", "v3", "If-Match: "+read.header.Get("ETag")); r.status != 200 {
				t.Fatalf("a write through B naming the guard's tag: %d %s", r.status, r.body)
			}
			t.Logf("B's etag_sources after it: %+v; switch logged by A %d, by B %d times", etagSourcesAt(t, b.admin), logged(logSwitched, a), logged(logSwitched, b))
		})
	}
}

// reload loads the instance's configuration again, as it is: Caddy
// provisions it anew when told the old one must not be kept.
func (i *instance) reload(t *testing.T) {
	t.Helper()
	resp, err := http.Get(i.admin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("reading the config of %s: %d %v", i.base, resp.StatusCode, err)
	}
	req, _ := http.NewRequest(http.MethodPost, i.admin+"/load", bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reloading %s: %d %s", i.base, resp.StatusCode, body)
	}
	// The old server closes its idle connections, and a PUT sent on one
	// is not retried.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
}
