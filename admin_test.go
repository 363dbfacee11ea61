package writeguard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

func TestLookupKeys(t *testing.T) {
	for _, c := range []struct {
		given, canonical string
		// also: spellings that must be among those tried, in this order.
		also []string
	}{
		{given: "example.com/items/1", canonical: "example.com/items/1", also: []string{"example.com/items/1", "/items/1"}},
		{given: "Example.COM.:443/items//./1/", canonical: "example.com/items/1", also: []string{"example.com/items/1/", "example.com/items/1"}},
		{given: "example.com:80/Items/%31", canonical: "example.com/Items/1", also: []string{"example.com/Items/1", "example.com/items/1", "/Items/1"}},
		{given: "example.com:8080/items/1", canonical: "example.com:8080/items/1", also: []string{"example.com:8080/items/1", "example.com/items/1", "/items/1"}},
		{given: ":8080/items/1/", canonical: ":8080/items/1", also: []string{":8080/items/1/", ":8080/items/1", "/items/1"}},
		{given: "/items//1", canonical: "/items/1", also: []string{"/items/1"}},
		{given: "example.com/edit.php?id=%34%32", canonical: "example.com/edit.php?id=42"},
		{given: "example.com/doc?", canonical: "example.com/doc"},
		{given: "EXAMPLE.com", canonical: "example.com/"},
	} {
		canonical, keys := lookupKeys(c.given)
		if canonical != c.canonical {
			t.Errorf("%q: canonical %q, want %q", c.given, canonical, c.canonical)
		}
		if keys[0] != c.given || !slices.Contains(keys, canonical) {
			t.Errorf("%q: tries %q, which must start with the key as given and contain %q", c.given, keys, canonical)
		}
		at := 0
		for _, k := range c.also {
			i := slices.Index(keys, k)
			if i < at {
				t.Errorf("%q: tries %q, want %q in it after %q", c.given, keys, k, c.also[:max(0, slices.Index(c.also, k))])
				break
			}
			at = i
		}
		if n := len(slices.Compact(slices.Clone(keys))); n != len(keys) {
			t.Errorf("%q: tries a spelling twice: %q", c.given, keys)
		}
	}
}

// DELETE on the admin API forgets a resource named in any spelling its
// requests could use, and says so: 204 when something was forgotten, 404
// with the canonical key when nothing was known.
func TestAdminForgetsAnySpelling(t *testing.T) {
	docs := map[string]string{"/items/1": "v1", "/items/2": "v1", "/dir": "file", "/dir/": "index", "/Mixed/Case": "v1"}
	for _, c := range []struct {
		name    string
		handler *Handler
		read    string // the path a read taught the guard
		key     string // the key the guard holds it under
		given   string // how the operator names it
		// canonical: the admin API's canonical spelling of given.
		canonical string
		// other: a path whose key must not be forgotten.
		other, otherKey string
	}{
		{name: "non-canonical path", handler: &Handler{}, read: "/items/1", key: "example.com/items/1", given: "example.com/items/./1/", other: "/items/2", otherKey: "example.com/items/2"},
		{name: "host in upper case with port", handler: &Handler{}, read: "/items/1", key: "example.com/items/1", given: "EXAMPLE.com:8443/items/1", canonical: "example.com:8443/items/1"},
		{name: "host form for a path-only key", handler: &Handler{Key: "{http.request.uri.path}"}, read: "/items/1", key: "/items/1", given: "example.com/items/1", canonical: "example.com/items/1"},
		{name: "trailing slash kept", handler: &Handler{KeyTrailingSlash: "keep"}, read: "/dir/", key: "example.com/dir/", given: "Example.com/dir/", canonical: "example.com/dir", other: "/dir", otherKey: "example.com/dir"},
		{name: "case-insensitive", handler: &Handler{KeyCaseInsensitive: true}, read: "/Mixed/Case", key: "example.com/mixed/case", given: "example.com/Mixed/Case", canonical: "example.com/Mixed/Case"},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, docs)
			h := newTestHandler(t, c.handler)
			serve(t, h, storeHandler(store), "GET", c.read, "")
			if c.other != "" {
				serve(t, h, storeHandler(store), "GET", c.other, "")
			}
			h.cache.Wait()
			if _, ok := h.cache.Peek(c.key); !ok {
				t.Fatalf("the read did not teach %s", c.key)
			}

			status, v := adminResource(t, http.MethodGet, c.given)
			if status != http.StatusOK || len(v.Caches) != 1 || !v.Caches[0].Known || v.Caches[0].Key != c.key {
				t.Fatalf("GET %s: %d %+v, want the version found under %s", c.given, status, v, c.key)
			}
			canonical := c.canonical
			if canonical == "" {
				canonical = c.key
			}
			if v.Key != canonical {
				t.Errorf("GET %s names the key %q, want the canonical %q", c.given, v.Key, canonical)
			}

			if status, v := adminResource(t, http.MethodDelete, c.given); status != http.StatusNoContent {
				t.Fatalf("DELETE %s: %d %+v", c.given, status, v)
			}
			if _, ok := h.cache.Peek(c.key); ok {
				t.Errorf("DELETE %s answered 204 but %s is still known", c.given, c.key)
			}
			if c.other != "" {
				if _, ok := h.cache.Peek(c.otherKey); !ok {
					t.Errorf("DELETE %s forgot %s too", c.given, c.otherKey)
				}
				// Left alone, it would be the next spelling found.
				h.cache.Forget(c.otherKey)
			}

			status, v = adminResource(t, http.MethodDelete, c.given)
			if status != http.StatusNotFound || v.Key != canonical || v.Error == "" || !slices.Contains(v.Tried, c.key) {
				t.Errorf("second DELETE %s: %d %+v, want 404 naming %s and the spellings tried", c.given, status, v, canonical)
			}
		})
	}
}

// With store redis the version that decides writes is in Redis: DELETE
// forgets it there too, and counts as having forgotten something when
// either the process or Redis knew the resource.
func TestAdminForgetsInRedis(t *testing.T) {
	srv := redistest.Start(t)
	store := newHashStore(backend.StrongETags, map[string]string{"/items/1": "v1"})
	h := newTestHandler(t, &Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{srv.Addr}}})
	tag := serve(t, h, storeHandler(store), "GET", "/items/1", "").Header().Get("Etag")
	if w := serve(t, h, storeHandler(store), "PUT", "/items/1", "v2", "If-Match: "+tag); w.Code != http.StatusOK {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	const key = "example.com/items/1"
	inRedis := func() bool {
		t.Helper()
		_, known, _, _, err := h.store.shared().Peek(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		return known
	}
	if !inRedis() {
		t.Fatal("the write left no version in Redis")
	}
	status, v := adminResource(t, http.MethodGet, "Example.com/items/1/")
	if status != http.StatusOK || len(v.Stores) != 1 || !v.Stores[0].Known || v.Stores[0].Key != key || v.Stores[0].ETag == "" {
		t.Fatalf("GET: %d %+v, want Redis's version of %s", status, v, key)
	}
	// Only Redis knows it now: that is something to forget.
	h.cache.Forget(key)
	if status, v := adminResource(t, http.MethodDelete, "Example.com/items/1/"); status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %+v", status, v)
	}
	if inRedis() {
		t.Error("DELETE answered 204 but Redis still holds the version")
	}
	if status, v := adminResource(t, http.MethodDelete, key); status != http.StatusNotFound {
		t.Errorf("second DELETE: %d %+v", status, v)
	}
}

// DELETE /write_guard/resources forgets every version, in the caches and in
// Redis.
func TestAdminForgetsEveryResource(t *testing.T) {
	srv := redistest.Start(t)
	store := newHashStore(backend.StrongETags, map[string]string{"/items/1": "v1", "/items/2": "v1"})
	h := newTestHandler(t, &Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{srv.Addr}}})
	for _, path := range []string{"/items/1", "/items/2"} {
		tag := serve(t, h, storeHandler(store), "GET", path, "").Header().Get("Etag")
		if w := serve(t, h, storeHandler(store), "PUT", path, "v2", "If-Match: "+tag); w.Code != http.StatusOK {
			t.Fatalf("PUT %s: %d %s", path, w.Code, w.Body)
		}
	}
	h.cache.Wait()
	rec := httptest.NewRecorder()
	if err := (adminAPI{}).handleResources(rec, httptest.NewRequest(http.MethodDelete, "http://localhost:2019/write_guard/resources", nil)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.Body.String(), `"redis_versions_forgotten":2`) {
		t.Errorf("answer %q, want 2 Redis versions forgotten", rec.Body)
	}
	for _, key := range []string{"example.com/items/1", "example.com/items/2"} {
		if _, known, _, _, err := h.store.shared().Peek(context.Background(), key); err != nil || known {
			t.Errorf("Redis still knows %s (%v)", key, err)
		}
		if _, ok := h.cache.Peek(key); ok {
			t.Errorf("the cache still knows %s", key)
		}
	}
}

// Looking a resource up through the admin API is an operator's question,
// not a version lookup of a write or read: caddy_write_guard_cache_hits_total
// and _misses_total, which size the cache, must not move with it.
func TestAdminLookupDoesNotCountAsCacheTraffic(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	h := newTestHandler(t, &Handler{})
	serve(t, h, storeHandler(store), "GET", "/doc", "")
	h.cache.Wait()
	before := h.cache.Stats()
	for _, key := range []string{"example.com/doc", "example.com/unknown"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "http://localhost:2019/write_guard/resource?key="+key, nil)
		if err := (adminAPI{}).handleResource(rec, req); err != nil {
			t.Fatalf("admin lookup of %s: %v", key, err)
		}
	}
	after := h.cache.Stats()
	if after.Hits != before.Hits || after.Misses != before.Misses {
		t.Errorf("two admin lookups moved the cache counters: hits %d→%d, misses %d→%d", before.Hits, after.Hits, before.Misses, after.Misses)
	}
}

// The admin API lists the sites tagged by the guard with their evidence,
// and trusts a site's upstream tags again on DELETE.
func TestAdminETagSources(t *testing.T) {
	reused, key, err := attachReusedTags()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Delete(key) })
	h := newTestHandler(t, &Handler{reused: reused})
	doc := newTaggedDoc("v1", func(string) string { return `"route"` })
	doc.answerTag = true
	serve(t, h, doc, "PUT", "/doc", "v2", `If-Match: "route"`)

	api := adminAPI{}
	get := httptest.NewRecorder()
	if err := api.handleETagSources(get, httptest.NewRequest("GET", "/write_guard/etag_sources", nil)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(get.Body.String(), `"site":"example.com"`) || !strings.Contains(get.Body.String(), `"etag":"\"route\""`) {
		t.Fatalf("GET: %s", get.Body)
	}
	stats := httptest.NewRecorder()
	if err := api.handleStats(stats, httptest.NewRequest("GET", "/write_guard/stats", nil)); err != nil || !strings.Contains(stats.Body.String(), `"etag_sources":[{"site":"example.com"`) {
		t.Fatalf("stats: %v %s", err, stats.Body)
	}
	del := httptest.NewRecorder()
	if err := api.handleETagSources(del, httptest.NewRequest("DELETE", "/write_guard/etag_sources?site=example.com", nil)); err != nil || del.Code != http.StatusNoContent {
		t.Fatalf("DELETE: %v %d", err, del.Code)
	}
	if reused.untrusted("example.com") {
		t.Fatal("still distrusted")
	}
	if err := api.handleETagSources(httptest.NewRecorder(), httptest.NewRequest("DELETE", "/write_guard/etag_sources?site=example.com", nil)); err == nil {
		t.Fatal("DELETE of a site not listed: no error")
	}
}
