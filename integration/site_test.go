package integration

import (
	"net/http"
	"testing"
)

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
