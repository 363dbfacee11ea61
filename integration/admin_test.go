package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// adminResourceView is the JSON the resource endpoint answers with.
type adminResourceView struct {
	Key    string   `json:"key"`
	Error  string   `json:"error"`
	Tried  []string `json:"tried"`
	Caches []struct {
		Key   string `json:"key"`
		Known bool   `json:"known"`
	} `json:"caches"`
	Stores []struct {
		Key   string `json:"key"`
		Known bool   `json:"known"`
	} `json:"stores"`
}

// adminResource calls the in-process Caddy's resource endpoint with key as
// an operator would type it.
func adminResource(t *testing.T, method, key string) (int, adminResourceView) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://localhost:2999/write_guard/resource?key="+url.QueryEscape(key), nil)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var v adminResourceView
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, key, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, v
}

// TestAdminForgetsAnySpelling makes the guard of a real Caddy forget
// resources named in spellings that its requests could use but its keys
// do not: DELETE answers 204 only when it forgot something, and 404 with
// the canonical key when nothing was known.
func TestAdminForgetsAnySpelling(t *testing.T) {
	srv := redistest.Start(t)
	for _, c := range []struct {
		name, opts string
		key        string // what the guard builds for GET /items/1 with Host localhost:9080
		given      string
		canonical  string
		redis      bool
	}{
		{
			name:  "host and path",
			opts:  "key {http.request.host}{http.request.uri.path}",
			key:   "localhost/items/1",
			given: "LOCALHOST:9080/items//1/", canonical: "localhost:9080/items/1",
		},
		{
			name:  "host form of a path-only key",
			opts:  "key {http.request.uri.path}",
			key:   "/items/1",
			given: "localhost/items/1/", canonical: "localhost/items/1",
		},
		{
			name:  "store redis",
			opts:  "key {http.request.uri.path}\n\t\tstore redis " + srv.Addr,
			key:   "/items/1",
			given: "/items/./1", canonical: "/items/1",
			redis: true,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := newStore(map[string]string{"/items/1": "v1"})
			startCaddy(t, fmtSite(`
	write_guard {
		%s
	}
	reverse_proxy %s`, c.opts, startBackend(t, store)))
			client := &http.Client{Timeout: 30 * time.Second}
			tag := do(t, client, "GET", "/items/1", "").header.Get("ETag")
			if c.redis {
				// A write leaves its version in Redis.
				if r := do(t, client, "PUT", "/items/1", "v2", "If-Match: "+tag); r.status != http.StatusOK {
					t.Fatalf("PUT: %d %s", r.status, r.body)
				}
			}
			waitLearned(t, c.key)

			status, v := adminResource(t, http.MethodGet, c.given)
			if status != http.StatusOK || v.Key != c.canonical || len(v.Caches) != 1 || !v.Caches[0].Known || v.Caches[0].Key != c.key {
				t.Fatalf("GET %s: %d %+v, want the canonical key %s and the version found under %s", c.given, status, v, c.canonical, c.key)
			}
			if c.redis && (len(v.Stores) != 1 || !v.Stores[0].Known || v.Stores[0].Key != c.key) {
				t.Fatalf("GET %s: Redis %+v, want the version found under %s", c.given, v.Stores, c.key)
			}

			if status, v := adminResource(t, http.MethodDelete, c.given); status != http.StatusNoContent {
				t.Fatalf("DELETE %s: %d %+v", c.given, status, v)
			}
			status, v = adminResource(t, http.MethodGet, c.key)
			if status != http.StatusOK || len(v.Caches) != 1 || v.Caches[0].Known || c.redis && (len(v.Stores) != 1 || v.Stores[0].Known) {
				t.Errorf("after DELETE %s: %d %+v, want %s unknown", c.given, status, v, c.key)
			}

			status, v = adminResource(t, http.MethodDelete, c.given)
			if status != http.StatusNotFound || v.Key != c.canonical || v.Error == "" || !slices.Contains(v.Tried, c.key) {
				t.Errorf("second DELETE %s: %d %+v, want 404 naming %s", c.given, status, v, c.canonical)
			}
		})
	}
}
