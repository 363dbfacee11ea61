package writeguard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func TestResourceKey(t *testing.T) {
	h := newTestHandler(t, &Handler{})
	for target, want := range map[string]string{
		"http://Example.COM/a/b":         "example.com/a/b",
		"http://example.com:80/a":        "example.com/a",
		"https://example.com:443/a":      "example.com/a",
		"http://example.com:8080/a":      "example.com/a",
		"http://example.com./a":          "example.com/a",
		"http://example.com/a?x=1":       "example.com/a",
		"http://[::1]:443/a":             "[::1]/a",
		"http://example.com/Case/Has":    "example.com/Case/Has",
		"http://example.com//a///b":      "example.com/a/b",
		"http://example.com/./a/../a/b/": "example.com/a/b",
		"http://example.com/%61/%7e%2d":  "example.com/a/~-",
		"http://example.com/a%2fb":       "example.com/a/b",
		"http://example.com/a%2Fb/..":    "example.com/a",
		"http://example.com":             "example.com/",
	} {
		r := httptest.NewRequest("GET", target, nil)
		if got := h.resourceKey(r); got != want {
			t.Errorf("key of %s = %q, want %q", target, got, want)
		}
	}

	keep := newTestHandler(t, &Handler{KeyTrailingSlash: "keep", KeyCaseInsensitive: true})
	for target, want := range map[string]string{
		"http://example.com/Docs/":  "example.com/docs/",
		"http://example.com/Docs":   "example.com/docs",
		"http://example.com/A%7e/.": "example.com/a~/",
	} {
		r := httptest.NewRequest("GET", target, nil)
		if got := keep.resourceKey(r); got != want {
			t.Errorf("key_trailing_slash keep, key_case_insensitive: key of %s = %q, want %q", target, got, want)
		}
	}

	// Templates see the canonical forms too.
	custom := newTestHandler(t, &Handler{Key: "{http.request.host}{http.request.uri}"})
	for target, want := range map[string]string{
		"http://Example.com//a?id=%37":  "example.com/a?id=7",
		"http://example.com/a/?":        "example.com/a",
		"http://example.com/./a?id=7&x": "example.com/a?id=7&x",
	} {
		r := httptest.NewRequest("GET", target, nil)
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
		if got := custom.resourceKey(r); got != want {
			t.Errorf("custom key of %s = %q, want %q", target, got, want)
		}
	}
}

// The port in Host is the client's choice and routes nowhere else: a
// second spelling of the host must not get a lock and a cached version of
// its own, or a write through it leaves the first spelling's version
// behind for a stale write to pass on.
func TestHostPortDoesNotSplitResource(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	h := newTestHandler(t, &Handler{})
	next := storeHandler(store)
	tag := serve(t, h, next, "GET", "/doc", "", "Host: example.com:8080").Header().Get("Etag")
	h.cache.Wait()
	if w := serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag, "Host: example.com:9999"); w.Code != 200 {
		t.Fatalf("write through the other port: %d %s", w.Code, w.Body)
	}
	w := serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+tag, "Host: example.com:8080")
	if w.Code != http.StatusPreconditionFailed {
		t.Errorf("stale write through the first port: %d, want 412; backend holds %q (v2 lost)", w.Code, mustGet(t, store, "/doc"))
	}
}

// versionedBackend keeps "/items/a%2Fb" (one item whose id is "a/b") and
// "/items/a/b" apart, as Go's ServeMux wildcards and Express route
// parameters do, and tags each document with its own revision counter
// ("4", "5", ...), as backends with a lock_version or @Version column do.
type versionedBackend struct {
	mu   sync.Mutex
	docs map[string]int
}

func (b *versionedBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	path := r.URL.EscapedPath()
	rev, ok := b.docs[path]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return nil
	}
	switch r.Method {
	case http.MethodPut:
		io.Copy(io.Discard, r.Body)
		rev++
		b.docs[path] = rev
	case http.MethodGet, http.MethodHead:
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
	w.Header().Set("ETag", `"`+strconv.Itoa(rev)+`"`)
	w.WriteHeader(http.StatusOK)
	return nil
}

func (b *versionedBackend) rev(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.docs[path]
}

// Giving an encoded slash and a separator one key merges two resources of
// backends that keep them apart into one cached version: a read of one
// can then vouch for a stale tag of the other.
func TestEncodedSlashDoesNotShareVersionWithOtherResource(t *testing.T) {
	be := &versionedBackend{docs: map[string]int{"/items/a%2Fb": 4, "/items/a/b": 4}}
	next := caddyhttp.HandlerFunc(be.ServeHTTP)
	h := newTestHandler(t, &Handler{})
	stale := serve(t, h, next, "GET", "/items/a%2Fb", "").Header().Get("Etag")
	h.cache.Wait()
	if w := serve(t, h, next, "PUT", "/items/a%2Fb", "by D", "If-Match: "+stale); w.Code != 200 {
		t.Fatalf("D's write: %d %s", w.Code, w.Body)
	}
	h.cache.Wait()
	serve(t, h, next, "GET", "/items/a/b", "") // another item, still at "4"
	h.cache.Wait()
	w := serve(t, h, next, "PUT", "/items/a%2Fb", "by C", "If-Match: "+stale)
	if w.Code != http.StatusPreconditionFailed {
		t.Errorf("C's write naming the stale tag %s: %d, want 412; item a/b is at revision %d, D's write lost", stale, w.Code, be.rev("/items/a%2Fb"))
	}
}

// A read whose query selects something else (an old revision here) says
// nothing about the resource the default key names.
func TestQueryReadsDoNotTeach(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	oldTag := store.ETagOf([]byte("v1"))
	store.Put("/doc", []byte("v2"))
	revisions := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Query().Get("rev") == "1" {
			w.Header().Set("Etag", oldTag)
			_, err := w.Write([]byte("v1"))
			return err
		}
		store.ServeHTTP(w, r)
		return nil
	})
	for _, key := range []string{"", "{http.request.host}{http.request.uri.path}-custom"} {
		h := newTestHandler(t, &Handler{Key: key})
		serve(t, h, revisions, "GET", "/doc?rev=1", "")
		h.cache.Wait()
		if w := serve(t, h, revisions, "PUT", "/doc", "v3", "If-Match: "+oldTag); w.Code != http.StatusPreconditionFailed {
			t.Fatalf("key %q: write based on an old revision: %d", key, w.Code)
		}
	}
	// A key that includes the query names what the query selects.
	h := newTestHandler(t, &Handler{Key: "{http.request.host}{http.request.uri}"})
	if !h.learnsFrom(httptest.NewRequest("GET", "/doc?rev=1", nil)) {
		t.Error("a key with the query must learn from reads with a query")
	}
}
