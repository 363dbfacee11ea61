package integration

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// counters are the resources every lost-update run below increments.
var counters = []string{"/c/1", "/c/2", "/c/3"}

// counterBackend is a kind of backend: start serves fresh counters at 0 on
// loopback until the test ends and returns its address.
type counterBackend struct {
	name  string
	start func(t *testing.T) string
}

func naiveCounters(name string, style backend.ETagStyle) counterBackend {
	return counterBackend{name: name, start: func(t *testing.T) string {
		return startBackend(t, countersAt(style, counters))
	}}
}

func nginxCounters(name, etag string) counterBackend {
	return counterBackend{name: name, start: func(t *testing.T) string {
		n := startNginxDAV(t, etag)
		for _, r := range counters {
			n.put(t, r, counterBody(0))
		}
		return n.addr
	}}
}

// runs sizes the workload of a row.
type runs struct {
	sendBack  sendBack
	clients   int
	perClient int
	deadline  time.Duration
}

// theTable is the workload the rows were measured with: 12 clients, 15
// increments each, on 3 resources.
func theTable(s sendBack) runs {
	return runs{sendBack: s, clients: 12, perClient: 15, deadline: 90 * time.Second}
}

// dateValidated is the workload for clients that send If-Unmodified-Since
// only. The guard lets one such write per second through to a resource,
// so the table's 180 increments would take a minute per run; 12 clients
// with 5 increments each (20 per resource) contend just as hard and take
// about 20 seconds.
func dateValidated() runs {
	return runs{sendBack: sendBackDate, clients: 12, perClient: 5, deadline: 120 * time.Second}
}

func (r runs) workload(bases ...string) *incrementWorkload {
	return &incrementWorkload{
		bases: bases, resources: counters,
		clients: r.clients, perClient: r.perClient, sendBack: r.sendBack,
		deadline: time.Now().Add(r.deadline),
	}
}

// rowResult is what a row's guarded run left in Caddy's metrics.
type rowResult struct {
	hashed, switches float64
}

// lostUpdateRow runs a row of the table: the workload straight at one
// backend of the kind, which must lose increments, then through the plain
// write_guard, no options, in front of another, which must lose none and
// get every client through.
func lostUpdateRow(t *testing.T, kind counterBackend, r runs) rowResult {
	t.Helper()
	setup := kind.name + ", clients send " + r.sendBack.String()

	direct := "http://" + kind.start(t)
	control := r.workload(direct)
	control.run(t)
	control.requireLosses(t, setup, counterAt(t, direct))

	upstream := "http://" + kind.start(t)
	startCaddy(t, fmtSite(`
	metrics /metrics
	write_guard
	reverse_proxy %s`, strings.TrimPrefix(upstream, "http://")))
	before := scrape(t)
	guarded := r.workload(caddyBase)
	guarded.run(t)
	guarded.requireNoneLost(t, setup, counterAt(t, upstream))
	after := scrape(t)
	res := rowResult{
		hashed:   counterMoved(t, before, after, metricHashed),
		switches: counterMoved(t, before, after, metricSwitches),
	}
	t.Logf("%s: the guard hashed %v representations and switched %v times", setup, res.hashed, res.switches)
	return res
}

// A backend without ETags, Last-Modified in whole seconds, and clients
// that send If-Match with the ETag they read and nothing when there is
// none: through the guard every read must carry a tag they can send back.
func TestAutoNoETagsIfMatchClients(t *testing.T) {
	res := lostUpdateRow(t, naiveCounters("backend without ETags", backend.NoETags), theTable(sendBackETag))
	if res.hashed == 0 {
		t.Errorf("the guard hashed nothing in front of a backend without ETags")
	}
	r := do(t, http.DefaultClient, "GET", counters[0], "")
	if tag := r.header.Get("ETag"); tag != guardTag([]byte(r.body)) {
		t.Errorf("GET %s: ETag %q, want the guard's tag of the body, %s", counters[0], tag, guardTag([]byte(r.body)))
	}
}

// The same backend, with clients that send If-Unmodified-Since with the
// Last-Modified they read: two writes in one second carry one date.
func TestAutoNoETagsDateValidatedClients(t *testing.T) {
	lostUpdateRow(t, naiveCounters("backend without ETags", backend.NoETags), dateValidated())
}

// A backend with one ETag for every version of a route, which the answer
// to a write carries too: the first write through the guard shows it, and
// the guard tags the site itself from then on.
func TestAutoConstantETags(t *testing.T) {
	res := lostUpdateRow(t, naiveCounters("backend with one ETag per route", backend.ConstantETags), theTable(sendBackWhatWasRead))
	if res.switches != 1 {
		t.Errorf("the guard switched %v times, want once for the one site", res.switches)
	}
	src, ok := sourceOf(etagSourcesAt(t, "http://localhost:2999"), "*")
	if !ok || src.Source != "guard" {
		t.Errorf("the stats do not list the catch-all site as tagged by the guard: %+v", etagSourcesAt(t, "http://localhost:2999"))
	}
}

// A real nginx with WebDAV: its ETag is the file's mtime in seconds and
// its size, the same for every version a second holds when the size does
// not change, and it answers a PUT without an ETag.
func TestAutoNginxDAV(t *testing.T) {
	lostUpdateRow(t, nginxCounters("nginx WebDAV, mtime-size ETags", "on"), theTable(sendBackWhatWasRead))
}

// The same nginx with etag off: Last-Modified only. Clients that send
// back what they read get the guard's tag through it; clients that only
// ever send If-Unmodified-Since must be safe too.
func TestAutoNginxDAVWithoutETags(t *testing.T) {
	kind := nginxCounters("nginx WebDAV, etag off", "off")
	t.Run("send back what was read", func(t *testing.T) {
		lostUpdateRow(t, kind, theTable(sendBackWhatWasRead))
	})
	t.Run("If-Unmodified-Since", func(t *testing.T) {
		lostUpdateRow(t, kind, dateValidated())
	})
}

// A backend whose strong ETags change with every write: the guard uses
// them as they are and hashes nothing.
func TestAutoGoodETagsHashNothing(t *testing.T) {
	res := lostUpdateRow(t, naiveCounters("backend with strong content ETags", backend.StrongETags), theTable(sendBackWhatWasRead))
	if res.hashed != 0 {
		t.Errorf("the guard hashed %v representations in front of a backend whose ETags are good", res.hashed)
	}
	if res.switches != 0 {
		t.Errorf("the guard switched %v times in front of a backend whose ETags are good", res.switches)
	}
	if sources := etagSourcesAt(t, "http://localhost:2999"); len(sources) != 0 {
		t.Errorf("the stats list sites tagged by the guard: %+v", sources)
	}
}

// Weak content tags, as Express sends, name versions too: the guard uses
// them without hashing.
func TestAutoWeakETagsHashNothing(t *testing.T) {
	res := lostUpdateRow(t, naiveCounters("backend with weak content ETags", backend.WeakETags), theTable(sendBackWhatWasRead))
	if res.hashed != 0 || res.switches != 0 {
		t.Errorf("in front of weak content ETags the guard hashed %v representations and switched %v times, want neither", res.hashed, res.switches)
	}
}

// A write that stores the body the resource already has leaves a content
// tag as it was, which looks like a reused tag. When the guard wrote that
// body itself it knows better and keeps trusting the upstream; when the
// version came from elsewhere it may switch, which may cost hashing, never
// an update, and the client goes on either way.
func TestAutoSameBodyWrittenAgain(t *testing.T) {
	for _, c := range []struct {
		name string
		// throughGuard: the version written again was written through
		// the guard.
		throughGuard bool
	}{
		{"written through the guard", true},
		{"written elsewhere", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := newStore(map[string]string{"/doc": "before"})
			startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, store)))
			client := &http.Client{Timeout: 30 * time.Second}
			tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
			waitLearned(t, "*/doc")
			if c.throughGuard {
				r := do(t, client, "PUT", "/doc", "same", "If-Match: "+tag)
				if r.status != 200 {
					t.Fatalf("the first write: %d %s", r.status, r.body)
				}
				tag = r.header.Get("ETag")
			} else {
				store.Put("/doc", []byte("same"))
				tag = do(t, client, "GET", "/doc", "").header.Get("ETag")
			}
			if tag != store.ETagOf([]byte("same")) {
				t.Fatalf("ETag %q of the version, want the upstream's %s", tag, store.ETagOf([]byte("same")))
			}
			if r := do(t, client, "PUT", "/doc", "same", "If-Match: "+tag); r.status != 200 {
				t.Fatalf("writing the same body again: %d %s", r.status, r.body)
			}
			_, switched := sourceOf(etagSourcesAt(t, "http://localhost:2999"), "*")
			read := do(t, client, "GET", "/doc", "")
			t.Logf("after the same body was written again: switched %v, GET ETag %s", switched, read.header.Get("ETag"))
			if c.throughGuard && switched {
				t.Errorf("the guard switched the site although it wrote the body of the version itself")
			}
			if r := do(t, client, "PUT", "/doc", "changed", "If-Match: "+read.header.Get("ETag")); r.status != 200 {
				t.Fatalf("a write naming the tag read after it: %d %s", r.status, r.body)
			}
			if r := do(t, client, "PUT", "/doc", "over changed", "If-Match: "+read.header.Get("ETag")); r.status != http.StatusPreconditionFailed {
				t.Fatalf("a write naming the version the last one replaced: %d %s", r.status, r.body)
			}
			if got := mustBody(t, store, "/doc"); got != "changed" {
				t.Fatalf("the backend holds %q", got)
			}
		})
	}
}

// Two date-validated writes that name one Last-Modified can never both
// pass, even when they arrive within the second the date names.
func TestAutoDateValidatedWritesOnePerDate(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v0"})
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}

	for round := range 3 {
		lm := do(t, client, "GET", "/doc", "").header.Get("Last-Modified")
		statuses := make(chan int, 2)
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodPut, caddyBase+"/doc", strings.NewReader(fmtSite("round %d writer %d", round, i)))
				req.Header.Set("If-Unmodified-Since", lm)
				resp, err := client.Do(req)
				if err != nil {
					statuses <- 0
					return
				}
				resp.Body.Close()
				statuses <- resp.StatusCode
			})
		}
		wg.Wait()
		a, b := <-statuses, <-statuses
		if !(a == 200 && b == 412 || a == 412 && b == 200) {
			t.Fatalf("round %d: two writes If-Unmodified-Since %s answered %d and %d, want one 200 and one 412", round, lm, a, b)
		}
		after := do(t, client, "GET", "/doc", "").header.Get("Last-Modified")
		if after == lm {
			t.Fatalf("round %d: the write left Last-Modified at %s, the date it was checked against", round, lm)
		}
		// A client that read after the write gets through.
		if r := do(t, client, "PUT", "/doc", fmtSite("round %d reader", round), "If-Unmodified-Since: "+after); r.status != 200 {
			t.Fatalf("round %d: a write naming the date just read (%s): %d %s", round, after, r.status, r.body)
		}
	}
}

// The answers to reads of guarded resources carry no-cache unless the
// upstream said how fresh they are, so that clients that keep answers
// ask again; read_freshness upstream leaves them as they come.
func TestAutoReadFreshness(t *testing.T) {
	// /plain carries a strong ETag and answers If-None-Match itself, so
	// that the 304 is the upstream's.
	const tag = `"p1"`
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", tag)
		w.Header().Set("Last-Modified", httpDate(time.Now().Add(-time.Hour)))
		switch r.URL.Path {
		case "/cached":
			w.Header().Set("Cache-Control", "max-age=60")
		case "/expires":
			w.Header().Set("Expires", httpDate(time.Now().Add(time.Minute)))
		}
		if r.Header.Get("If-None-Match") == tag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, "body of "+r.URL.Path)
	})
	addr := startBackend(t, upstream)
	for _, c := range []struct {
		opts  string
		plain string // Cache-Control on /plain
	}{
		{"", "no-cache"},
		{"{\n\t\tread_freshness no-cache\n\t}", "no-cache"},
		{"{\n\t\tread_freshness upstream\n\t}", ""},
	} {
		name := "default"
		if c.opts != "" {
			name = strings.Fields(c.opts)[2]
		}
		t.Run(name, func(t *testing.T) {
			startCaddy(t, fmtSite(`
	write_guard %s
	reverse_proxy %s`, c.opts, addr))
			client := &http.Client{Timeout: 30 * time.Second}
			get := do(t, client, "GET", "/plain", "")
			if got := get.header.Get("Cache-Control"); got != c.plain {
				t.Errorf("GET: Cache-Control %q, want %q", got, c.plain)
			}
			if got := headerOf(t, client, "HEAD", "/plain", "Cache-Control"); got != c.plain {
				t.Errorf("HEAD: Cache-Control %q, want %q", got, c.plain)
			}
			if r := do(t, client, "GET", "/plain", "", "If-None-Match: "+tag); r.status != http.StatusNotModified || r.header.Get("Cache-Control") != c.plain {
				t.Errorf("conditional GET: %d Cache-Control %q, want 304 and %q", r.status, r.header.Get("Cache-Control"), c.plain)
			}
			if got := do(t, client, "GET", "/cached", "").header.Get("Cache-Control"); got != "max-age=60" {
				t.Errorf("the upstream's Cache-Control became %q", got)
			}
			r := do(t, client, "GET", "/expires", "")
			if got := r.header.Get("Cache-Control"); got != "" || r.header.Get("Expires") == "" {
				t.Errorf("an answer with the upstream's Expires got Cache-Control %q (Expires %q)", got, r.header.Get("Expires"))
			}
		})
	}
}

func headerOf(t *testing.T, client *http.Client, method, path, field string) string {
	t.Helper()
	return do(t, client, method, path, "").header.Get(field)
}

// heldRead answers a GET marked X-Hold with the document as it is when the
// request arrives, but sends that answer only once release is closed: a
// read that began before a write and ends after it.
func heldRead(store *backend.Store, arrived chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.Header.Get("X-Hold") == "" {
			store.ServeHTTP(w, r)
			return
		}
		body := mustBodyOf(store, r.URL.Path)
		arrived <- struct{}{}
		<-release
		w.Header().Set("Last-Modified", httpDate(time.Now()))
		io.WriteString(w, body)
	})
}

func mustBodyOf(store *backend.Store, path string) string {
	b, _ := store.Get(path)
	return string(b)
}

// A read of a backend without ETags that the upstream answered with the
// version before a write, arriving after the write was recorded, must not
// teach the guard that this version is current: a write naming it would
// pass, over the write it missed.
func TestAutoReadOverlappingAWriteTeachesNothingStale(t *testing.T) {
	for _, mode := range []string{"hash", "auto"} {
		t.Run(mode, func(t *testing.T) {
			store := newStore(map[string]string{"/doc": "v1"})
			store.ETags = backend.NoETags
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			startCaddy(t, fmtSite(`
	write_guard {
		etags %s
	}
	reverse_proxy %s`, mode, startBackend(t, heldRead(store, arrived, release))))
			client := &http.Client{Timeout: 30 * time.Second}
			tag1 := do(t, client, "GET", "/doc", "").header.Get("ETag")
			waitLearned(t, "*/doc")

			// A read that the upstream answers with v1 and that reaches the
			// guard only after v2 was written and recorded.
			held := make(chan response, 1)
			go func() { held <- do(t, client, "GET", "/doc", "", "X-Hold: 1") }()
			<-arrived
			if r := do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag1); r.status != 200 {
				close(release)
				t.Fatalf("the write while the read is held: %d %s", r.status, r.body)
			}
			close(release)
			if r := <-held; r.body != "v1" || r.header.Get("ETag") != tag1 {
				t.Fatalf("the held read: %q ETag %q, want v1 with %s", r.body, r.header.Get("ETag"), tag1)
			}

			// The client that read v1 writes over it.
			r := do(t, client, "PUT", "/doc", "v3 over v1", "If-Match: "+tag1)
			if got := mustBody(t, store, "/doc"); r.status != http.StatusPreconditionFailed || got != "v2" {
				t.Fatalf("etags %s: a write naming v1, replaced by v2 while a read of v1 was on its way: %d, the backend holds %q; want 412 and v2 kept", mode, r.status, got)
			}
		})
	}
}
