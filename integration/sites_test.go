package integration

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// Two catch-all sites on two ports, each in front of a backend of its own
// without ETags, where the guard's tags are digests of the content: the
// same content in both backends has the same tag. The default key leaves
// ports out (instances sharing Redis may listen on others), so such sites
// share keys; with a key that names the port, as the README says to give
// them, a write through one site is never decided on the version of the
// other site's backend.
func TestCatchAllSitesOnTwoPortsKeepTheirVersionsApart(t *testing.T) {
	one, two := backend.New(), backend.New()
	one.ETags, two.ETags = backend.NoETags, backend.NoETags
	one.Put("/doc", []byte(`{"n":0}`))
	two.Put("/doc", []byte(`{"n":0}`))
	oneAddr, twoAddr := startBackend(t, one), startBackend(t, two)

	// The workload on the second backend: X reads n=1, Y writes n=2, and
	// X, on its read of n=1, writes n=2. In between, the first site's
	// backend is written to n=1.
	workload := func(twoBase, oneBase string, guarded bool) {
		t.Helper()
		tag := send(t, "GET", twoBase+"/doc", "").header.Get("Etag")
		if guarded {
			waitLearned(t, "9081/doc")
		}
		x := send(t, "PUT", twoBase+"/doc", `{"n":1}`, "If-Match: "+tag).header.Get("Etag")
		if r := send(t, "PUT", twoBase+"/doc", `{"n":2}`, "If-Match: "+x); r.status/100 != 2 {
			t.Fatalf("Y's write: %d %s", r.status, r.body)
		}
		u := send(t, "GET", oneBase+"/doc", "").header.Get("Etag")
		if r := send(t, "PUT", oneBase+"/doc", `{"n":1}`, "If-Match: "+u); r.status/100 != 2 {
			t.Fatalf("write to the first site: %d %s", r.status, r.body)
		}
		r := send(t, "PUT", twoBase+"/doc", `{"n":2}`, "If-Match: "+x)
		if guarded && r.status != 412 {
			t.Errorf("X's write naming n=1 after Y wrote n=2: %d, want 412", r.status)
		}
	}

	t.Run("control", func(t *testing.T) {
		ctl := backend.New()
		ctl.ETags = backend.NoETags
		ctl.Put("/doc", []byte(`{"n":0}`))
		other := backend.New()
		other.ETags = backend.NoETags
		other.Put("/doc", []byte(`{"n":0}`))
		workload("http://"+startBackend(t, ctl), "http://"+startBackend(t, other), false)
		if got := string(must(ctl.Get("/doc"))); got != `{"n":2}` {
			t.Fatalf("without the guard the backend holds %s after three increments: the workload loses no update", got)
		}
		if ctl.Writes() != 3 {
			t.Fatalf("%d writes reached the backend, want 3", ctl.Writes())
		}
	})

	t.Run("guard", func(t *testing.T) {
		t.Cleanup(func() { unloadSites(t) })
		tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
		tester.InitServer(globalOptions+
			":9080 {\n\twrite_guard {\n\t\tkey {http.request.local.port}{http.request.uri.path}\n\t}\n\treverse_proxy "+oneAddr+"\n}\n"+
			":9081 {\n\twrite_guard {\n\t\tkey {http.request.local.port}{http.request.uri.path}\n\t}\n\treverse_proxy "+twoAddr+"\n}\n", "caddyfile")
		if t.Failed() {
			t.FailNow()
		}
		writes := two.Writes()
		workload("http://localhost:9081", "http://localhost:9080", true)
		if two.Writes()-writes != 2 {
			t.Errorf("%d writes reached the second backend, want 2 (n=1, n=2): an acknowledged update was overwritten", two.Writes()-writes)
		}
	})
}

func must(b []byte, ok bool) []byte {
	if !ok {
		return nil
	}
	return b
}

// routeTagged is an upstream with one tag for every version of every
// document, the tag of the route, in its reads and its writes' answers.
type routeTagged struct {
	mu   sync.Mutex
	docs map[string]string
}

func (u *routeTagged) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	w.Header().Set("Etag", `"route"`)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		io.WriteString(w, u.docs[r.URL.Path])
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		u.docs[r.URL.Path] = string(b)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (u *routeTagged) get(path string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.docs[path]
}

// The switch to the guard's tags outlives a reload that names the site
// otherwise (its names in another order: the first one names the site).
// A client that read a document before the switch still holds the
// upstream's tag, which names every version: its write after the reload
// must be refused as it was before.
func TestSwitchOutlivesAReloadThatReordersTheSiteNames(t *testing.T) {
	run := func(t *testing.T, guarded bool) string {
		up := &routeTagged{docs: map[string]string{"/doc": "n=0", "/other": "o=0"}}
		addr := startBackend(t, up)
		base := "http://" + addr
		var reload func()
		if guarded {
			base, reload = "http://localhost:9080", load(t, addr)
		}
		do := func(method, path, body, ifMatch string) *http.Response {
			t.Helper()
			req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
			req.Host = "a.localhost"
			if ifMatch != "" {
				req.Header.Set("If-Match", ifMatch)
			}
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp
		}
		z := do("GET", "/doc", "", "").Header.Get("Etag")
		if r := do("PUT", "/other", "o=1", `"route"`); r.StatusCode/100 != 2 {
			t.Fatalf("write that shows the constant tag: %d", r.StatusCode)
		}
		w := do("GET", "/doc", "", "").Header.Get("Etag")
		if r := do("PUT", "/doc", "n=1 (w)", w); r.StatusCode/100 != 2 {
			t.Fatalf("W's write: %d", r.StatusCode)
		}
		if reload != nil {
			reload()
		}
		r := do("PUT", "/doc", "n=1 (z)", z)
		if reload != nil && r.StatusCode != http.StatusPreconditionFailed {
			t.Errorf("Z's write on n=0 with the upstream's tag after the reload: %d, want 412", r.StatusCode)
		}
		return up.get("/doc")
	}
	t.Run("control", func(t *testing.T) {
		if got := run(t, false); got != "n=1 (z)" {
			t.Fatalf("without the guard /doc holds %q: the workload loses no update", got)
		}
	})
	t.Run("guard", func(t *testing.T) {
		if got := run(t, true); got != "n=1 (w)" {
			t.Errorf("/doc holds %q: W's acknowledged write is lost", got)
		}
	})
}

// load serves the guard for a site named a.localhost and b.localhost in
// front of upstream, and returns what reloads it with the names the other
// way round.
func load(t *testing.T, upstream string) func() {
	t.Helper()
	site := func(names string) string {
		return globalOptions + names + " {\n\twrite_guard\n\treverse_proxy " + upstream + "\n}\n"
	}
	t.Cleanup(func() { unloadSites(t) })
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
	tester.InitServer(site("http://a.localhost:9080, http://b.localhost:9080"), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return func() {
		req, _ := http.NewRequest(http.MethodPost, "http://localhost:2999/load", strings.NewReader(site("http://b.localhost:9080, http://a.localhost:9080")))
		req.Header.Set("Content-Type", "text/caddyfile")
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("reload: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("reload: %d %s", resp.StatusCode, b)
		}
	}
}
