package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// TestRevalidate changes a resource directly at the backend, behind the
// proxy's back, after a client read it through the proxy.
func TestRevalidate(t *testing.T) {
	for _, c := range []struct {
		revalidate string
		want       int
	}{
		// The cache still holds the version the client read: the stale
		// write passes and the direct change is lost.
		{"miss", http.StatusOK},
		{"always", http.StatusPreconditionFailed},
	} {
		t.Run(c.revalidate, func(t *testing.T) {
			store := newStore(map[string]string{"/doc": "v0"})
			var heads atomic.Int32
			counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodHead {
					heads.Add(1)
				}
				store.ServeHTTP(w, r)
			})
			startCaddy(t, fmtSite(`
	write_guard {
		revalidate %s
	}
	reverse_proxy %s`, c.revalidate, startBackend(t, counting)))
			client := &http.Client{Timeout: 30 * time.Second}

			// Write through the proxy until a write is checked from the
			// cache alone (no HEAD reached the backend): from then on the
			// cache holds each write's version (ristretto applies the
			// update of a key it holds at once). With revalidate always
			// every write asks, so one write is enough.
			tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
			for i := 1; i <= 100; i++ {
				before := heads.Load()
				r := do(t, client, "PUT", "/doc", fmt.Sprintf("v%d", i), "If-Match: "+tag)
				if r.status != 200 {
					t.Fatalf("PUT v%d: %d %s", i, r.status, r.body)
				}
				tag = r.header.Get("ETag")
				if c.revalidate == "always" || heads.Load() == before {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}

			store.Put("/doc", []byte("changed by a batch job"))
			r := do(t, client, "PUT", "/doc", "stale", "If-Match: "+tag)
			if r.status != c.want {
				t.Fatalf("revalidate %s: stale PUT answered %d, want %d", c.revalidate, r.status, c.want)
			}
		})
	}
}

// cleaningBackend resolves spellings of a path to one resource, as most
// web servers and frameworks do: it decodes escapes, collapses slashes,
// resolves dot segments and ignores a trailing slash.
func cleaningBackend(store *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r2 := r.Clone(r.Context())
		r2.URL.Path = path.Clean("/" + r.URL.Path)
		r2.URL.RawPath = ""
		store.ServeHTTP(w, r2)
	})
}

// TestAliasesShareOneResource writes through every spelling of one URL that
// the backend resolves to the same document.
func TestAliasesShareOneResource(t *testing.T) {
	store := newStore(map[string]string{"/docs/a": "v0"})
	store.WriteDelay = 20 * time.Millisecond
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, cleaningBackend(store))))
	client := &http.Client{Timeout: 30 * time.Second}
	aliases := []string{
		"/docs/a", "//docs/a", "/docs//a", "/./docs/a", "/docs/./a", "/x/../docs/a",
		"/%64ocs/a", "/docs/%61", "/docs/a/", "/docs/a?", "/%2e/docs/a", "/docs/x/%2E%2E/a",
	}

	for i, alias := range aliases {
		stale := do(t, client, "GET", "/docs/a", "").header.Get("ETag")
		// Change the document through the canonical spelling...
		if r := do(t, client, "PUT", "/docs/a", fmt.Sprintf("v%d", i+1), "If-Match: "+stale); r.status != 200 {
			t.Fatalf("PUT /docs/a: %d %s", r.status, r.body)
		}
		// ...then a write through the alias with the tag from before must
		// be refused, whatever the cache holds under the alias.
		if r := do(t, client, "PUT", alias, "lost", "If-Match: "+stale); r.status != http.StatusPreconditionFailed {
			t.Errorf("stale write through %s: %d, want 412", alias, r.status)
		}
		if got := mustBody(t, store, "/docs/a"); got != fmt.Sprintf("v%d", i+1) {
			t.Fatalf("after the stale write through %s the backend holds %q", alias, got)
		}
	}

	// Two writes naming the same version through different spellings at
	// the same moment: one lock, so exactly one reaches the backend.
	for round, pair := range [][2]string{{"/docs/a", "//docs/a"}, {"/docs/%61", "/docs/a/"}, {"/./docs/a", "/docs/x/../a"}} {
		tag := do(t, client, "GET", "/docs/a", "").header.Get("ETag")
		before := store.Writes()
		a, b := racePair(client, pair, tag, func(i int) string { return fmt.Sprintf("round %d writer %d", round, i) })
		if !(a == 200 && b == 412 || a == 412 && b == 200) {
			t.Errorf("%s and %s: statuses %d and %d, want one 200 and one 412", pair[0], pair[1], a, b)
		}
		if n := store.Writes() - before; n != 1 {
			t.Errorf("%s and %s: %d writes reached the backend", pair[0], pair[1], n)
		}
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes overlapped at the backend", n)
	}
	assertNoLocks(t)
}

// A site with a host matcher answers any port in Host (Caddy's host
// matcher drops it), and backends ignore it: the port must not make a
// second resource with its own lock and cached version.
func TestHostPortAliasThroughCaddy(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	addr := startBackend(t, store)
	t.Cleanup(func() {
		if t.Skipped() {
			t.Error("Caddy could not be started for this test")
		}
	})
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
	tester.InitServer(globalOptions+fmtSite("http://localhost:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n", addr), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	client := &http.Client{Timeout: 30 * time.Second}

	stale := do(t, client, "GET", "/doc", "", "Host: localhost:9080").header.Get("ETag")
	if r := do(t, client, "PUT", "/doc", "v2", "If-Match: "+stale, "Host: localhost:1"); r.status != 200 {
		t.Fatalf("write through Host localhost:1: %d %s", r.status, r.body)
	}
	if r := do(t, client, "PUT", "/doc", "v3", "If-Match: "+stale, "Host: localhost:9080"); r.status != http.StatusPreconditionFailed {
		t.Errorf("stale write through Host localhost:9080: %d, want 412; backend holds %q (v2 lost)", r.status, mustBody(t, store, "/doc"))
	}
}

// cleaningBackend, like nginx, resolves the decoded path, so an encoded
// slash is a separator to it and "%2F..%2F" climbs a segment.
func TestEncodedSlashDotSegmentAlias(t *testing.T) {
	store := newStore(map[string]string{"/docs/a": "v0"})
	startCaddy(t, fmtSite(`
	write_guard
	reverse_proxy %s`, startBackend(t, cleaningBackend(store))))
	client := &http.Client{Timeout: 30 * time.Second}

	stale := do(t, client, "GET", "/docs/a", "").header.Get("ETag")
	if r := do(t, client, "PUT", "/x%2F..%2Fdocs/a", "v1", "If-Match: "+stale); r.status != 200 {
		t.Fatalf("write through /x%%2F..%%2Fdocs/a: %d %s", r.status, r.body)
	}
	if r := do(t, client, "PUT", "/docs/a", "lost", "If-Match: "+stale); r.status != http.StatusPreconditionFailed {
		t.Errorf("stale write through /docs/a after a write through its alias: %d, want 412; backend holds %q", r.status, mustBody(t, store, "/docs/a"))
	}
}

// One site with several names is one set of resources: a write through one
// name and a stale write through another must not both pass.
func TestSiteNamesShareOneKey(t *testing.T) {
	cases := []struct {
		name, sites string
		// alice reads and writes through aliceHost, bob through bobHost.
		aliceHost, bobHost string
		key                string // the key the admin API shows
	}{
		{
			name:      "two names",
			sites:     "http://example.com:9080, http://www.example.com:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n",
			aliceHost: "example.com:9080", bobHost: "www.example.com:9080",
			key: "example.com/items/1",
		},
		{
			name:      "names in another case",
			sites:     "http://example.com:9080, http://www.example.com:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n",
			aliceHost: "WWW.Example.COM:9080", bobHost: "example.com:9080",
			key: "example.com/items/1",
		},
		{
			name:      "catch-all site",
			sites:     ":9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n",
			aliceHost: "a.test", bobHost: "invented.test:9080",
			key: "*/items/1",
		},
		{
			name:      "names inside a handle block",
			sites:     ":9080 {\n\t@app host example.com www.example.com\n\thandle @app {\n\t\twrite_guard\n\t\treverse_proxy %s\n\t}\n}\n",
			aliceHost: "www.example.com", bobHost: "example.com",
			key: "example.com/items/1",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": `{"v":1}`})
			startSites(t, fmtSite(tc.sites, startBackend(t, store)))
			client := &http.Client{}

			read := do(t, client, http.MethodGet, "/items/1", "", "Host: "+tc.aliceHost)
			if read.status != http.StatusOK || read.header.Get("Etag") == "" {
				t.Fatalf("GET: %d, ETag %q", read.status, read.header.Get("Etag"))
			}
			tag := read.header.Get("Etag")
			waitLearned(t, tc.key)

			bob := do(t, client, http.MethodPut, "/items/1", `{"v":"bob"}`, "Host: "+tc.bobHost, "If-Match: "+tag)
			if bob.status != http.StatusNoContent && bob.status != http.StatusOK {
				t.Fatalf("bob's write: %d %s", bob.status, bob.body)
			}
			alice := do(t, client, http.MethodPut, "/items/1", `{"v":"alice"}`, "Host: "+tc.aliceHost, "If-Match: "+tag)
			if alice.status != http.StatusPreconditionFailed {
				t.Fatalf("alice's stale write through another name: %d %s, want 412", alice.status, alice.body)
			}
			if got := mustBody(t, store, "/items/1"); got != `{"v":"bob"}` {
				t.Fatalf("backend holds %s: bob's change was lost", got)
			}
		})
	}
}

// Subdomains of a wildcard site are kept apart (they are most often tenants
// of one backend), and so are two sites.
func TestWildcardSubdomainsAndOtherSitesKeepTheirOwnKeys(t *testing.T) {
	store := newStore(map[string]string{"/items/1": `{"v":1}`})
	addr := startBackend(t, store)
	startSites(t, fmtSite("http://*.example.com:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\nhttp://other.test:9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n", addr, addr))
	client := &http.Client{}
	for _, host := range []string{"a.example.com", "b.example.com", "other.test"} {
		if r := do(t, client, http.MethodGet, "/items/1", "", "Host: "+host+":9080"); r.status != http.StatusOK {
			t.Fatalf("GET via %s: %d", host, r.status)
		}
	}
	waitLearned(t, "a.example.com/items/1")
	waitLearned(t, "b.example.com/items/1")
	waitLearned(t, "other.test/items/1")
}

// waitCached waits until the in-process Caddy's version cache holds n
// resources, under whatever keys: ristretto stores a new key
// asynchronously.
func waitCached(t testing.TB, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get("http://localhost:2999/write_guard/stats")
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			Caches []struct{ Cost int64 } `json:"caches"`
		}
		err = json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Caches) == 1 && s.Caches[0].Cost >= n {
			return
		}
	}
	t.Fatalf("the version cache never held %d resources", n)
}

// staleWriteThrough has bob write through one entrance of a site naming
// the version he read, then alice write through another entrance naming
// the same, now replaced, version: she must get 412 and bob's change stay.
func staleWriteThrough(t *testing.T, store interface{ Get(string) ([]byte, bool) }, alice, bob entrance) {
	t.Helper()
	activate(t, alice)
	read := at(t, alice.base, alice.host, http.MethodGet, "/items/1", "")
	tag := read.header.Get("Etag")
	if read.status != http.StatusOK || tag == "" {
		t.Fatalf("GET through %v: %d, ETag %q", alice, read.status, tag)
	}
	waitCached(t, 1)
	if r := at(t, bob.base, bob.host, http.MethodPut, "/items/1", `{"v":"bob"}`, "If-Match: "+tag); r.status != http.StatusOK {
		t.Fatalf("bob's write through %v: %d %s", bob, r.status, r.body)
	}
	r := at(t, alice.base, alice.host, http.MethodPut, "/items/1", `{"v":"alice"}`, "If-Match: "+tag)
	if r.status != http.StatusPreconditionFailed {
		t.Errorf("alice's stale write through %v after bob's through %v: %d %s, want 412", alice, bob, r.status, r.body)
	}
	if got, _ := store.Get("/items/1"); string(got) != `{"v":"bob"}` {
		t.Errorf("backend holds %s: bob's acknowledged change was lost", got)
	}
}

// A site block whose addresses listen on several ports is one site in
// front of one backend: its resources are one set whatever port a request
// came in on.
func TestSiteOnSeveralPortsSharesOneKey(t *testing.T) {
	for _, tc := range []struct {
		name, addresses string
		host            func(port int) string
	}{
		{"one name, two ports", "http://example.com:9080, http://example.com:%d", func(port int) string { return fmt.Sprintf("example.com:%d", port) }},
		{"catch-all on two ports", ":9080, :%d", func(int) string { return "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": `{"v":1}`})
			addr := startBackend(t, store)
			port := freePort(t)
			startSites(t, fmt.Sprintf(tc.addresses, port)+fmtSite(" {\n\twrite_guard\n\treverse_proxy %s\n}\n", addr))
			alice := entrance{base: caddyBase, host: strings.Replace(tc.host(9080), "www.", "", 1)}
			bob := entrance{base: fmt.Sprintf("http://localhost:%d", port), host: tc.host(port)}
			staleWriteThrough(t, store, alice, bob)
		})
	}
}

// A guard in a named route is the site's guard wherever the route is
// invoked from: a catch-all site must not let the Host field a client
// chooses split a resource, nor a site's second name.
func TestInvokedGuardKeysBySite(t *testing.T) {
	for _, tc := range []struct {
		name, site         string
		aliceHost, bobHost string
	}{
		{"catch-all site", ":9080 {\n\tinvoke guarded\n}\n", "a.test", "b.test"},
		{"site with two names", "http://example.com:9080, http://www.example.com:9080 {\n\tinvoke guarded\n}\n", "example.com:9080", "www.example.com:9080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": `{"v":1}`})
			addr := startBackend(t, store)
			startSites(t, fmtSite("&(guarded) {\n\troute {\n\t\twrite_guard\n\t\treverse_proxy %s\n\t}\n}\n", addr)+tc.site)
			staleWriteThrough(t, store, entrance{caddyBase, tc.aliceHost}, entrance{caddyBase, tc.bobHost})
		})
	}
}

// An IPv6 literal is one of a site's names like any other.
func TestIPv6LiteralSiteNameSharesTheSiteKey(t *testing.T) {
	for _, addresses := range []string{
		"http://localhost:9080, http://[::1]:9080",
		"http://[::1]:9080, http://localhost:9080",
	} {
		t.Run(addresses, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": `{"v":1}`})
			startSites(t, addresses+fmtSite(" {\n\twrite_guard\n\treverse_proxy %s\n}\n", startBackend(t, store)))
			staleWriteThrough(t, store, entrance{caddyBase, "localhost:9080"}, entrance{caddyBase, "[::1]:9080"})
		})
	}
}
