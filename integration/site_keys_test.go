package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

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
