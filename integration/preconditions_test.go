package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// oddUpstream answers version checks in the ways real upstreams do that the
// guard must not mistake for a version.
type oddUpstream struct {
	mu     sync.Mutex
	writes int
}

func (o *oddUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		o.mu.Lock()
		o.writes++
		o.mu.Unlock()
		if r.URL.Path == "/odd/express" {
			// Express tags the body it answers with, not the resource.
			w.Header().Set("ETag", `W/"b-ok"`)
			w.Write([]byte(`{"ok":true}`))
			return
		}
		w.Header().Set("ETag", `"after-write"`)
		w.WriteHeader(http.StatusOK)
		return
	}
	switch r.URL.Path {
	case "/odd/express":
		o.mu.Lock()
		w.Header().Set("ETag", fmt.Sprintf(`W/"doc-%d"`, o.writes))
		o.mu.Unlock()
		w.Write([]byte("{}"))
	case "/odd/revisions":
		if r.URL.Query().Get("rev") == "1" {
			w.Header().Set("ETag", `"rev-1"`)
		} else {
			w.Header().Set("ETag", `"rev-2"`)
		}
		w.Write([]byte("a revision"))
	case "/odd/broken":
		http.Error(w, "database on fire", http.StatusInternalServerError)
	case "/odd/private":
		if r.Header.Get("Authorization") != "Bearer letmein" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="notes"`)
			http.Error(w, "who are you?", http.StatusUnauthorized)
			return
		}
		w.Header().Set("ETag", `"p1"`)
		w.WriteHeader(http.StatusOK)
	case "/odd/nohead":
		if r.Method == http.MethodHead {
			w.Header().Set("Allow", "GET, PUT")
			http.Error(w, "no HEAD here", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("ETag", `"g1"`)
		w.Write([]byte("hello"))
	default:
		http.NotFound(w, r)
	}
}

func (o *oddUpstream) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.writes
}

// TestBehaviourTable walks through every row of the README's table of
// which request gets which status.
func TestBehaviourTable(t *testing.T) {
	big := `{"note":"` + strings.Repeat("lorem ipsum ", 100) + `"}`
	main := newStore(map[string]string{
		"/notes/1": `{"v":1}`, "/notes/2": `{"v":1}`, "/notes/3": `{"v":1}`, "/notes/post": "v1", "/notes/dated": `{"v":1}`,
		"/gz/doc": big, "/conflict/1": "x", "/open/1": "x", "/small/1": "x",
	})
	weak := newStore(map[string]string{"/weak/1": "w", "/strict/1": "s"})
	weak.ETags = backend.WeakETags
	slow := newStore(map[string]string{"/slow/1": "s"})
	slow.WriteDelay = 1500 * time.Millisecond
	odd := &oddUpstream{}

	mainAddr, weakAddr, slowAddr, oddAddr := startBackend(t, main), startBackend(t, weak), startBackend(t, slow), startBackend(t, odd)
	tester := startCaddy(t, fmtSite(`
	handle /weak/* {
		write_guard
		reverse_proxy %[2]s
	}
	handle /strict/* {
		write_guard {
			etag_match strict
		}
		reverse_proxy %[2]s
	}
	handle /gz/* {
		encode gzip
		write_guard
		reverse_proxy %[1]s
	}
	handle /conflict/* {
		write_guard {
			blind 409
		}
		reverse_proxy %[1]s
	}
	handle /open/* {
		write_guard {
			blind allow
		}
		reverse_proxy %[1]s
	}
	handle /small/* {
		write_guard {
			max_body 16
		}
		reverse_proxy %[1]s
	}
	handle /slow/* {
		write_guard {
			lock_timeout 300ms
		}
		reverse_proxy %[3]s
	}
	handle /odd/* {
		write_guard
		reverse_proxy %[4]s
	}
	handle {
		write_guard
		reverse_proxy %[1]s
	}`, mainAddr, weakAddr, slowAddr, oddAddr))
	c := tester.Client

	etagOf := func(path string, headers ...string) string {
		t.Helper()
		r := do(t, c, "GET", path, "", headers...)
		if r.status != 200 || r.header.Get("ETag") == "" {
			t.Fatalf("GET %s: %d, ETag %q", path, r.status, r.header.Get("ETag"))
		}
		return r.header.Get("ETag")
	}
	expectProblem := func(r response, status int, typ string) problemBody {
		t.Helper()
		if r.status != status {
			t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
		}
		p := problemOf(t, r)
		if !strings.HasSuffix(p.Type, "#"+typ) {
			t.Fatalf("problem type %q, want …#%s", p.Type, typ)
		}
		return p
	}

	t.Run("reads pass through untouched", func(t *testing.T) {
		r := do(t, c, "GET", "/notes/1", "")
		if r.status != 200 || r.body != `{"v":1}` || r.header.Get("ETag") != main.ETagOf([]byte(`{"v":1}`)) {
			t.Fatalf("GET: %d %q %q", r.status, r.body, r.header.Get("ETag"))
		}
		if r := do(t, c, "GET", "/notes/none", ""); r.status != 404 {
			t.Fatalf("GET missing: %d", r.status)
		}
		if r := do(t, c, "OPTIONS", "/notes/1", ""); r.status != 405 {
			t.Fatalf("OPTIONS must reach the backend untouched: %d", r.status)
		}
	})

	t.Run("an unguarded POST makes the guard forget the version", func(t *testing.T) {
		tag := etagOf("/notes/post")
		if r := do(t, c, "POST", "/notes/post", "posted"); r.status != 200 || mustBody(t, main, "/notes/post") != "posted" {
			t.Fatalf("unguarded POST must reach the backend: %d", r.status)
		}
		expectProblem(do(t, c, "PUT", "/notes/post", "over the POST", "If-Match: "+tag), 412, "precondition-failed")
		if mustBody(t, main, "/notes/post") != "posted" {
			t.Fatal("a write based on the version before the POST overwrote it")
		}
	})

	t.Run("blind write gets 428", func(t *testing.T) {
		r := do(t, c, "PUT", "/notes/1", `{"v":2}`)
		p := expectProblem(r, 428, "precondition-required")
		if !strings.Contains(p.Detail, "If-Match") || p.Instance != "/notes/1" {
			t.Fatalf("428 problem must say what to send: %+v", p)
		}
		if mustBody(t, main, "/notes/1") != `{"v":1}` {
			t.Fatal("a blind write reached the backend")
		}
		expectProblem(do(t, c, "DELETE", "/notes/1", ""), 428, "precondition-required")
		expectProblem(do(t, c, "PATCH", "/notes/1", `{"a":1}`), 428, "precondition-required")
	})

	t.Run("blind 409", func(t *testing.T) {
		expectProblem(do(t, c, "PUT", "/conflict/1", "y"), 409, "precondition-required")
		if mustBody(t, main, "/conflict/1") != "x" {
			t.Fatal("a blind write reached the backend")
		}
	})

	t.Run("blind allow", func(t *testing.T) {
		if r := do(t, c, "PUT", "/open/1", "y"); r.status != 200 || mustBody(t, main, "/open/1") != "y" {
			t.Fatalf("blind allow: %d", r.status)
		}
	})

	t.Run("if-match current version is forwarded", func(t *testing.T) {
		tag := etagOf("/notes/1")
		r := do(t, c, "PUT", "/notes/1", `{"v":2}`, "If-Match: "+tag)
		if r.status != 200 || mustBody(t, main, "/notes/1") != `{"v":2}` {
			t.Fatalf("PUT: %d %s", r.status, r.body)
		}
		// The old tag is now stale: the guard knows it from the write's answer.
		r = do(t, c, "PUT", "/notes/1", `{"v":3}`, "If-Match: "+tag)
		p := expectProblem(r, 412, "precondition-failed")
		if p.Header != "If-Match" || !strings.Contains(p.Detail, "GET it again") {
			t.Fatalf("412 problem: %+v", p)
		}
		if mustBody(t, main, "/notes/1") != `{"v":2}` {
			t.Fatal("a stale write reached the backend")
		}
		// The new tag, taken from the write's own response, chains.
		next := main.ETagOf([]byte(`{"v":2}`))
		if r := do(t, c, "PUT", "/notes/1", `{"v":3}`, "If-Match: "+next); r.status != 200 {
			t.Fatalf("chained PUT: %d %s", r.status, r.body)
		}
	})

	t.Run("if-match on a resource never read probes the upstream", func(t *testing.T) {
		tag := main.ETagOf([]byte(`{"v":1}`))
		if r := do(t, c, "PATCH", "/notes/2", `{"w":2}`, "If-Match: "+tag); r.status != 200 {
			t.Fatalf("PATCH: %d %s", r.status, r.body)
		}
		if got := mustBody(t, main, "/notes/2"); got != `{"v":1,"w":2}` {
			t.Fatalf("PATCH applied as %s", got)
		}
		expectProblem(do(t, c, "PATCH", "/notes/2", `{"w":3}`, `If-Match: "nope"`), 412, "precondition-failed")
	})

	t.Run("a change behind the proxy's back is confirmed before refusing", func(t *testing.T) {
		etagOf("/notes/3") // the guard learns v1
		main.Put("/notes/3", []byte(`{"v":"direct"}`))
		tag := main.ETagOf([]byte(`{"v":"direct"}`))
		if r := do(t, c, "PUT", "/notes/3", `{"v":4}`, "If-Match: "+tag); r.status != 200 {
			t.Fatalf("PUT with the backend's real current tag: %d %s", r.status, r.body)
		}
	})

	t.Run("malformed if-match gets 400", func(t *testing.T) {
		for _, v := range []string{`abc`, `*, "a"`, `"unterminated`, `W/abc`} {
			p := expectProblem(do(t, c, "PUT", "/notes/1", "x", "If-Match: "+v), 400, "invalid-precondition")
			if p.Header != "If-Match" {
				t.Fatalf("400 problem for %q: %+v", v, p)
			}
		}
		expectProblem(do(t, c, "PUT", "/notes/1", "x", "If-None-Match: a"), 400, "invalid-precondition")
	})

	t.Run("if-none-match star creates only", func(t *testing.T) {
		if r := do(t, c, "PUT", "/notes/new", "fresh", "If-None-Match: *"); r.status != 201 {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		p := expectProblem(do(t, c, "PUT", "/notes/new", "again", "If-None-Match: *"), 412, "precondition-failed")
		if p.Header != "If-None-Match" || mustBody(t, main, "/notes/new") != "fresh" {
			t.Fatalf("second create: %+v", p)
		}
	})

	t.Run("if-none-match naming the current version", func(t *testing.T) {
		tag := etagOf("/notes/new")
		p := expectProblem(do(t, c, "PUT", "/notes/new", "other", "If-None-Match: "+tag), 412, "precondition-failed")
		if p.Header != "If-None-Match" {
			t.Fatalf("412: %+v", p)
		}
		if r := do(t, c, "PUT", "/notes/new", "fresh", `If-None-Match: "something-else"`); r.status != 200 {
			t.Fatalf("If-None-Match naming another version: %d %s", r.status, r.body)
		}
	})

	t.Run("if-match star needs an existing resource", func(t *testing.T) {
		expectProblem(do(t, c, "PUT", "/notes/ghost", "x", "If-Match: *"), 412, "precondition-failed")
		if _, ok := main.Get("/notes/ghost"); ok {
			t.Fatal("If-Match: * created a resource")
		}
		if r := do(t, c, "PUT", "/notes/new", "updated", "If-Match: *"); r.status != 200 {
			t.Fatalf("If-Match: * on existing: %d", r.status)
		}
	})

	t.Run("delete then stale write", func(t *testing.T) {
		tag := etagOf("/notes/new")
		if r := do(t, c, "DELETE", "/notes/new", "", "If-Match: "+tag); r.status != 204 {
			t.Fatalf("DELETE: %d %s", r.status, r.body)
		}
		p := expectProblem(do(t, c, "PUT", "/notes/new", "zombie", "If-Match: "+tag), 412, "precondition-failed")
		if !strings.Contains(p.Detail, "does not exist") {
			t.Fatalf("412 after delete: %+v", p)
		}
		if _, ok := main.Get("/notes/new"); ok {
			t.Fatal("a write resurrected a deleted resource")
		}
	})

	t.Run("if-unmodified-since", func(t *testing.T) {
		r := do(t, c, "GET", "/notes/dated", "")
		lm := r.header.Get("Last-Modified")
		if do(t, c, "PUT", "/notes/dated", "y", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT").status != 412 {
			t.Fatal("old date must fail")
		}
		if r := do(t, c, "PUT", "/notes/dated", "y", "If-Unmodified-Since: "+lm); r.status != 200 {
			t.Fatalf("current date: %d %s", r.status, r.body)
		}
		// A version written within the second of the one before has a date
		// that names both: the client is told to send If-Match, which gets
		// through. (A second of its own for the three requests.)
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
		main.Put("/notes/crowded", []byte("v1"))
		tag := etagOf("/notes/crowded")
		if w := do(t, c, "PUT", "/notes/crowded", "v2", "If-Match: "+tag); w.status != 200 {
			t.Fatalf("PUT: %d %s", w.status, w.body)
		}
		r = do(t, c, "GET", "/notes/crowded", "")
		p := expectProblem(do(t, c, "PUT", "/notes/crowded", "v3", "If-Unmodified-Since: "+r.header.Get("Last-Modified")), 412, "precondition-failed")
		if !strings.Contains(p.Detail, "If-Match") || mustBody(t, main, "/notes/crowded") != "v2" {
			t.Fatalf("crowded date: %+v", p)
		}
		if w := do(t, c, "PUT", "/notes/crowded", "v3", "If-Match: "+r.header.Get("ETag")); w.status != 200 {
			t.Fatalf("If-Match after the advice: %d %s", w.status, w.body)
		}
		// An invalid date is ignored, which leaves the write blind.
		expectProblem(do(t, c, "PUT", "/notes/2", "z", "If-Unmodified-Since: yesterday"), 428, "precondition-required")
	})

	t.Run("weak etags work by default", func(t *testing.T) {
		tag := etagOf("/weak/1")
		if !strings.HasPrefix(tag, "W/") {
			t.Fatalf("backend sent %q", tag)
		}
		if r := do(t, c, "PUT", "/weak/1", "w2", "If-Match: "+tag); r.status != 200 {
			t.Fatalf("weak If-Match: %d %s", r.status, r.body)
		}
		expectProblem(do(t, c, "PUT", "/weak/1", "w3", "If-Match: "+tag), 412, "precondition-failed")
	})

	t.Run("etag_match strict refuses weak tags", func(t *testing.T) {
		tag := etagOf("/strict/1")
		expectProblem(do(t, c, "PUT", "/strict/1", "s2", "If-Match: "+tag), 412, "precondition-failed")
		if mustBody(t, weak, "/strict/1") != "s" {
			t.Fatal("strict mode forwarded a weak match")
		}
	})

	t.Run("tags suffixed by encode match", func(t *testing.T) {
		tag := etagOf("/gz/doc", "Accept-Encoding: gzip")
		if !strings.HasSuffix(tag, `-gzip"`) {
			t.Fatalf("encode did not suffix the ETag: %q", tag)
		}
		if r := do(t, c, "PUT", "/gz/doc", big+" ", "If-Match: "+tag); r.status != 200 {
			t.Fatalf("PUT with encode's tag: %d %s", r.status, r.body)
		}
		expectProblem(do(t, c, "PUT", "/gz/doc", big, "If-Match: "+tag), 412, "precondition-failed")
	})

	t.Run("body over max_body gets 413", func(t *testing.T) {
		expectProblem(do(t, c, "PUT", "/small/1", strings.Repeat("x", 17), "If-Match: *"), 413, "body-too-large")
		if mustBody(t, main, "/small/1") != "x" {
			t.Fatal("an oversized write reached the backend")
		}
		if r := do(t, c, "PUT", "/small/1", strings.Repeat("y", 16), "If-Match: *"); r.status != 200 {
			t.Fatalf("body at the limit: %d %s", r.status, r.body)
		}
	})

	t.Run("lock timeout gets 409 with Retry-After", func(t *testing.T) {
		done := make(chan response)
		go func() { done <- do(t, c, "PUT", "/slow/1", "first", "If-Match: *") }()
		deadline := time.Now().Add(5 * time.Second)
		for slow.Writes() == 0 && !inFlight(slow) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		r := do(t, c, "PUT", "/slow/1", "second", "If-Match: *")
		p := expectProblem(r, 409, "resource-busy")
		if r.header.Get("Retry-After") == "" {
			t.Fatalf("409 without Retry-After: %+v", p)
		}
		if first := <-done; first.status != 200 {
			t.Fatalf("first write: %d", first.status)
		}
		if mustBody(t, slow, "/slow/1") != "first" {
			t.Fatal("the timed-out write reached the backend")
		}
	})

	t.Run("probe failure is 502 and the write is not forwarded", func(t *testing.T) {
		expectProblem(do(t, c, "PUT", "/odd/broken", "x", `If-Match: "a"`), 502, "probe-failed")
		if odd.count() != 0 {
			t.Fatal("a write whose version could not be checked was forwarded")
		}
	})

	t.Run("401 from the probe is passed on", func(t *testing.T) {
		r := do(t, c, "PUT", "/odd/private", "x", `If-Match: "p1"`)
		if r.status != 401 || r.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("unauthorized probe: %d %v", r.status, r.header)
		}
		if odd.count() != 0 {
			t.Fatal("forwarded")
		}
		if r := do(t, c, "PUT", "/odd/private", "x", `If-Match: "p1"`, "Authorization: Bearer letmein"); r.status != 200 {
			t.Fatalf("the probe must carry the client's credentials: %d %s", r.status, r.body)
		}
	})

	t.Run("a read with a query string teaches nothing", func(t *testing.T) {
		if tag := etagOf("/odd/revisions?rev=1"); tag != `"rev-1"` {
			t.Fatalf("old revision: %s", tag)
		}
		before := odd.count()
		expectProblem(do(t, c, "PUT", "/odd/revisions", "x", `If-Match: "rev-1"`), 412, "precondition-failed")
		if odd.count() != before {
			t.Fatal("a write based on an old revision was forwarded")
		}
	})

	t.Run("a weak ETag on a write response is no version", func(t *testing.T) {
		a := do(t, c, "PUT", "/odd/express", "by A", "If-Match: "+etagOf("/odd/express"))
		// The answer's tag is its body's: the guard asked for the version
		// the write made, and the answer carries that one's.
		if a.status != 200 || a.header.Get("ETag") == `W/"b-ok"` || a.header.Get("ETag") != etagOf("/odd/express") {
			t.Fatalf("A: %d %q, want the new version's tag %q", a.status, a.header.Get("ETag"), etagOf("/odd/express"))
		}
		if b := do(t, c, "PUT", "/odd/express", "by B", "If-Match: "+etagOf("/odd/express")); b.status != 200 {
			t.Fatalf("B: %d", b.status)
		}
		before := odd.count()
		expectProblem(do(t, c, "PUT", "/odd/express", "by A again", "If-Match: "+a.header.Get("ETag")), 412, "precondition-failed")
		if odd.count() != before {
			t.Fatal("A's write chained on a response-body tag overwrote B's")
		}
	})

	t.Run("HEAD refused falls back to GET", func(t *testing.T) {
		before := odd.count()
		if r := do(t, c, "PUT", "/odd/nohead", "x", `If-Match: "g1"`); r.status != 200 {
			t.Fatalf("PUT: %d %s", r.status, r.body)
		}
		if odd.count() != before+1 {
			t.Fatal("not forwarded")
		}
	})
}

// inFlight reports whether a write is being applied (the store counts
// writes only when they finish).
func inFlight(s *backend.Store) bool { return s.InFlight() > 0 }

// TestBadInput sends malformed and oversized requests through Caddy: each
// gets its status and problem type, and a refused one leaves the backend as
// it was.
func TestBadInput(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	startCaddy(t, fmtSite(`
	write_guard {
		max_body 1KiB
	}
	reverse_proxy %s`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	manyTags := strings.TrimSuffix(strings.Repeat(`"t", `, 65), ", ")
	longTag := `"` + strings.Repeat("x", 9000) + `"`

	for _, c := range []struct {
		name    string
		method  string
		headers []string
		body    string
		chunked bool
		status  int
		problem string // "" when the answer is not the guard's
	}{
		{"unquoted If-Match", "PUT", []string{"If-Match: abc"}, "x", false, 400, "invalid-precondition"},
		{"star in a list", "PUT", []string{`If-Match: *, "a"`}, "x", false, 400, "invalid-precondition"},
		{"65 tags", "PUT", []string{"If-Match: " + manyTags}, "x", false, 400, "invalid-precondition"},
		{"9000-byte tag", "PUT", []string{"If-Match: " + longTag}, "x", false, 400, "invalid-precondition"},
		{"empty If-Match", "PUT", []string{"If-Match:"}, "x", false, 400, "invalid-precondition"},
		{"bad If-None-Match", "PUT", []string{"If-None-Match: W/"}, "x", false, 400, "invalid-precondition"},
		{"not a date alone", "PUT", []string{"If-Unmodified-Since: yesterday"}, "x", false, 428, "precondition-required"},
		{"date before the change", "PUT", []string{"If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT"}, "x", false, 412, "precondition-failed"},
		{"stale tag", "PUT", []string{`If-Match: "old"`}, "x", false, 412, "precondition-failed"},
		{"body over max_body", "PUT", []string{"If-Match: " + tag}, strings.Repeat("x", 2000), false, 413, "body-too-large"},
		{"chunked body over max_body", "PUT", []string{"If-Match: " + tag}, strings.Repeat("x", 2000), true, 413, "body-too-large"},
		{"blind DELETE", "DELETE", nil, "", false, 428, "precondition-required"},
		{"unknown method", "FROB", []string{"If-Match: " + tag}, "x", false, 405, ""},
		{"POST as PUT, blind", "POST", []string{"X-HTTP-Method-Override: PUT"}, "x", false, 428, "precondition-required"},
		{"POST as DELETE, stale", "POST", []string{"X-HTTP-Method: DELETE", `If-Match: "old"`}, "", false, 412, "precondition-failed"},
		{"GET as DELETE", "GET", []string{"X-Method-Override: delete"}, "", false, 428, "precondition-required"},
		{"two override methods", "POST", []string{"X-HTTP-Method-Override: PUT", "X-HTTP-Method: DELETE"}, "x", false, 400, "invalid-method-override"},
		{"override list", "POST", []string{"X-HTTP-Method-Override: PUT, DELETE"}, "x", false, 400, "invalid-method-override"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := store.Writes()
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
				if c.chunked {
					body = io.MultiReader(body) // hides the length
				}
			}
			req, _ := http.NewRequest(c.method, caddyBase+"/doc", body)
			for _, h := range c.headers {
				name, value, _ := strings.Cut(h, ":")
				req.Header.Add(name, strings.TrimSpace(value))
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := response{status: resp.StatusCode, header: resp.Header, body: string(b)}
			if r.status != c.status {
				t.Fatalf("status %d, want %d (%s)", r.status, c.status, r.body)
			}
			if c.problem != "" {
				if p := problemOf(t, r); !strings.HasSuffix(p.Type, "#"+c.problem) {
					t.Errorf("problem type %s, want #%s", p.Type, c.problem)
				}
			}
			if got := mustBody(t, store, "/doc"); got != "v1" || store.Writes() != before {
				t.Errorf("the backend changed: %q, %d writes", got, store.Writes()-before)
			}
		})
	}
	assertNoLocks(t)
}

// upperCasingMethods reads the request method case-insensitively, as
// Django, Werkzeug/Flask, Symfony/Laravel and the WordPress REST API do.
func upperCasingMethods(store *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r2 := r.Clone(r.Context())
		r2.Method = strings.ToUpper(r.Method)
		store.ServeHTTP(w, r2)
	})
}

// Caddy and Go's server accept "put" as a method token and reverse_proxy
// passes it on unchanged.
func TestLowerCaseMethodThroughCaddy(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, upperCasingMethods(store))))
	client := &http.Client{Timeout: 30 * time.Second}
	r := do(t, client, "put", "/doc", "blind", "Content-Type: text/plain")
	if r.status != http.StatusPreconditionRequired {
		t.Errorf("blind put: %d, want 428", r.status)
	}
	if got := mustBody(t, store, "/doc"); got != "v1" {
		t.Errorf("a blind put reached the backend unchecked: it holds %q", got)
	}
}

// TestExpectContinueAnsweredOnce sends guarded writes with Expect:
// 100-continue and waits for the 100 before sending the body, as curl
// does for large uploads. The guard reads the body before it takes the
// lock, which makes Caddy answer 100 Continue; the upstream, a net/http
// server, answers 100 Continue too when it reads a body it was told to
// expect. The client asked once and must see one 100, then the write's
// answer.
func TestExpectContinueAnsweredOnce(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	startCaddy(t, fmtSite(`
	write_guard {
		max_body_memory 1KiB
	}
	reverse_proxy %s`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}

	for _, c := range []struct {
		name string
		body string
		// chunked sends the body without Content-Length.
		chunked bool
	}{
		{name: "in memory", body: "v2"},
		{name: "spooled to a file", body: strings.Repeat("v3", 4<<10)},
		{name: "chunked", body: "v4", chunked: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
			conn := dialCaddy(t)
			framing := "Content-Length: " + strconv.Itoa(len(c.body))
			body := c.body
			if c.chunked {
				framing = "Transfer-Encoding: chunked"
				body = strconv.FormatInt(int64(len(c.body)), 16) + "\r\n" + c.body + "\r\n0\r\n\r\n"
			}
			conn.send("PUT /doc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIf-Match: " + tag +
				"\r\nExpect: 100-continue\r\n" + framing + "\r\n\r\n")
			if r := conn.readResponse(false); r.status != http.StatusContinue {
				t.Fatalf("answer before the body: %v, want 100 Continue", r)
			}
			conn.send(body)
			continues := 1
			var final rawResponse
			for range 10 {
				if final = conn.readResponse(false); final.status != http.StatusContinue {
					break
				}
				continues++
			}
			if final.status != http.StatusOK {
				t.Fatalf("the write's answer: %v", final)
			}
			if continues != 1 {
				t.Errorf("%d interim 100 Continue answers to one Expect: 100-continue, want 1", continues)
			}
			if got := mustBody(t, store, "/doc"); got != c.body {
				t.Errorf("backend holds %d bytes, not the %d sent", len(got), len(c.body))
			}
		})
	}
}

// TestHandleErrorsExample runs examples/Caddyfile.handle-errors against a
// backend: the refusals get the example's pages, and a busy refusal keeps
// its Retry-After.
func TestHandleErrorsExample(t *testing.T) {
	raw, err := os.ReadFile("../examples/Caddyfile.handle-errors")
	if err != nil {
		t.Fatal(err)
	}
	store := newStore(map[string]string{"/doc": "v1"})
	store.WriteDelay = 300 * time.Millisecond
	// The site block's body, pointed at the test backend.
	example := string(raw)
	body := example[strings.Index(example, "app.example.com {")+len("app.example.com {") : strings.LastIndex(example, "}")]
	body = strings.Replace(body, "127.0.0.1:8085", startBackend(t, store), 1)
	body = strings.Replace(body, "refusals handle_errors", "refusals handle_errors\n\t\tlock_timeout 100ms", 1)
	startCaddy(t, body)
	client := &http.Client{Timeout: 30 * time.Second}

	blind := do(t, client, "PUT", "/doc", "x")
	if blind.status != 428 || !strings.Contains(blind.header.Get("Content-Type"), "text/html") || !strings.Contains(blind.body, "<h1>Precondition required</h1>") {
		t.Errorf("blind write: %d %q %q", blind.status, blind.header.Get("Content-Type"), blind.body)
	}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	stale := do(t, client, "PUT", "/doc", "x", `If-Match: "old"`)
	if stale.status != 412 || !strings.Contains(stale.body, "<h1>Precondition failed</h1>") {
		t.Errorf("stale write: %d %q", stale.status, stale.body)
	}
	// While one write holds the resource, another times out waiting: 409,
	// answered by the catch-all route with the problem itself.
	slow := make(chan response, 1)
	go func() { slow <- do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag) }()
	time.Sleep(100 * time.Millisecond)
	busy := do(t, client, "PUT", "/doc", "v3", "If-Match: "+tag)
	if first := <-slow; first.status != 200 {
		t.Fatalf("first write: %d %s", first.status, first.body)
	}
	if busy.status != http.StatusConflict || busy.header.Get("Retry-After") == "" {
		t.Fatalf("busy write: %d Retry-After %q", busy.status, busy.header.Get("Retry-After"))
	}
	if p := problemOf(t, busy); !strings.HasSuffix(p.Type, "#resource-busy") || p.Instance != "/doc" {
		t.Errorf("busy problem: %+v", p)
	}
}
