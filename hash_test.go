package writeguard

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// hashTag is the tag the guard gives body, computed independently.
func hashTag(body string) string {
	sum := sha256.Sum256([]byte(body))
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
}

func TestBodyHash(t *testing.T) {
	tag := func(limit int64, parts ...string) string {
		b := newBodyHash(limit)
		for _, p := range parts {
			b.Write([]byte(p))
		}
		return b.etag()
	}
	if got := tag(100, "hello ", "world"); got != hashTag("hello world") {
		t.Errorf("tag of two writes = %s, want %s", got, hashTag("hello world"))
	}
	if tag(100, "a") == tag(100, "b") {
		t.Error("different bodies got the same tag")
	}
	if got := tag(100); got != hashTag("") {
		t.Errorf("empty body: %s", got)
	}
	if got := tag(5, "12345"); got == "" {
		t.Error("a body of exactly the limit must be tagged")
	}
	if got := tag(5, "123", "456"); got != "" {
		t.Errorf("a body over the limit got tag %s", got)
	}
}

func newHashStore(etags backend.ETagStyle, docs map[string]string) *backend.Store {
	s := backend.New()
	s.ETags = etags
	for p, b := range docs {
		s.Put(p, []byte(b))
	}
	return s
}

func TestHashedGetReplacesUpstreamTag(t *testing.T) {
	for _, style := range []backend.ETagStyle{backend.NoETags, backend.StrongETags, backend.WeakETags, backend.MTimeETags} {
		store := newHashStore(style, map[string]string{"/doc": "v1"})
		h := newTestHandler(t, &Handler{ETags: "hash"})
		w := serve(t, h, storeHandler(store), "GET", "/doc", "")
		if w.Code != 200 || w.Body.String() != "v1" {
			t.Fatalf("style %d: GET = %d %q", style, w.Code, w.Body)
		}
		if got := w.Header().Get("Etag"); got != hashTag("v1") {
			t.Errorf("style %d: ETag %q, want %q", style, got, hashTag("v1"))
		}
		if w.Header().Get("Last-Modified") == "" {
			t.Errorf("style %d: Last-Modified was dropped", style)
		}
		h.cache.Wait()
		if v, ok := h.cache.Get("example.com/doc"); !ok || v.ETag != hashTag("v1") {
			t.Errorf("style %d: cache holds %+v, %v", style, v, ok)
		}
	}
}

func TestHashedConditionalGet(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	var sawConditional atomic.Bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for _, f := range []string{"If-None-Match", "If-Match", "If-Modified-Since", "If-Range", "Range"} {
			if r.Header.Get(f) != "" {
				sawConditional.Store(true)
			}
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	tag := hashTag("v1")

	for _, c := range []struct {
		name   string
		header []string
		status int
	}{
		{"matching tag", []string{"If-None-Match: " + tag}, http.StatusNotModified},
		{"weak form", []string{"If-None-Match: W/" + tag}, http.StatusNotModified},
		{"in a list", []string{`If-None-Match: "other", ` + tag}, http.StatusNotModified},
		{"star", []string{"If-None-Match: *"}, http.StatusNotModified},
		{"other tag", []string{`If-None-Match: "other"`}, http.StatusOK},
		{"with an old If-Modified-Since", []string{"If-None-Match: " + tag, "If-Modified-Since: " + httpDateOf(time.Unix(0, 0))}, http.StatusNotModified},
		{"If-Range with Range", []string{"If-Range: " + tag, "Range: bytes=0-0"}, http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			sawConditional.Store(false)
			w := serve(t, h, next, "GET", "/doc", "", c.header...)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d", w.Code, c.status)
			}
			if got := w.Header().Get("Etag"); got != tag {
				t.Errorf("ETag %q, want %q", got, tag)
			}
			if c.status == http.StatusNotModified && (w.Body.Len() != 0 || w.Header().Get("Content-Length") != "" || w.Header().Get("Content-Type") != "") {
				t.Errorf("304 with body %q and header %v", w.Body, w.Header())
			}
			if c.status == http.StatusOK && w.Body.String() != "v1" {
				t.Errorf("body %q", w.Body)
			}
			if sawConditional.Load() {
				t.Error("the upstream was sent a validator that names the guard's tags")
			}
		})
	}
}

func httpDateOf(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

// A body too large to hold is streamed as it comes, and its tag follows in
// a trailer field.
func TestHashedGetStreamsLargeBodies(t *testing.T) {
	chunk := strings.Repeat("x", 48<<10)
	var rec *httptest.ResponseRecorder
	var sentBeforeEnd bool
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		for i := 0; i < 4; i++ {
			w.Write([]byte(chunk))
			http.NewResponseController(w).Flush()
		}
		// Still inside the upstream: what has the client received?
		sentBeforeEnd = rec.Body.Len() >= 2*len(chunk)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://example.com/big", nil)
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
	if err := h.ServeHTTP(rec, req, next); err != nil {
		t.Fatal(err)
	}
	if !sentBeforeEnd {
		t.Error("the body was held back instead of streamed")
	}
	res := rec.Result()
	if res.Header.Get("Etag") != "" {
		t.Errorf("a streamed response has ETag %q in its header", res.Header.Get("Etag"))
	}
	want := hashTag(strings.Repeat(chunk, 4))
	if got := res.Trailer.Get("Etag"); got != want {
		t.Errorf("trailer ETag %q, want %q", got, want)
	}
	if rec.Body.Len() != 4*len(chunk) {
		t.Errorf("body of %d bytes", rec.Body.Len())
	}
	h.cache.Wait()
	if v, ok := h.cache.Get("example.com/big"); !ok || v.ETag != want {
		t.Errorf("cache holds %+v, %v", v, ok)
	}

	// The flushes of a small body do not push its tag into a trailer.
	small := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Write([]byte("part1 "))
		http.NewResponseController(w).Flush()
		w.Write([]byte("part2"))
		http.NewResponseController(w).Flush()
		return nil
	})
	// Result's Header is the header as sent, without trailers.
	res = serve(t, h, small, "GET", "/small", "").Result()
	if got := res.Header.Get("Etag"); got != hashTag("part1 part2") || len(res.Trailer) != 0 {
		t.Errorf("small flushed body: ETag %q, trailers %v", got, res.Trailer)
	}
}

func TestHashedGetTooLargeIsUntagged(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "0123456789"})
	h := newTestHandler(t, &Handler{ETags: "hash", HashMaxBody: 5})
	w := serve(t, h, storeHandler(store), "GET", "/doc", "")
	if w.Code != 200 || w.Body.String() != "0123456789" {
		t.Fatalf("GET = %d %q", w.Code, w.Body)
	}
	if got := w.Header().Get("Etag"); got != "" {
		t.Errorf("a body over hash_max_body got ETag %q", got)
	}
	// The write cannot name a version by tag; it gets told what to use.
	pw := serve(t, h, storeHandler(store), "PUT", "/doc", "new", "If-Match: "+store.ETagOf([]byte("0123456789")))
	if pw.Code != http.StatusPreconditionFailed || !strings.Contains(pw.Body.String(), "hash_max_body") {
		t.Errorf("PUT = %d %s", pw.Code, pw.Body)
	}
	// If-Unmodified-Since still works.
	last := w.Header().Get("Last-Modified")
	if pw := serve(t, h, storeHandler(store), "PUT", "/doc", "new", "If-Unmodified-Since: "+last); pw.Code != 200 {
		t.Errorf("PUT with If-Unmodified-Since = %d %s", pw.Code, pw.Body)
	}
}

func TestHashedHeadCarriesKnownTag(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	next := storeHandler(store)
	if w := serve(t, h, next, "HEAD", "/doc", ""); w.Header().Get("Etag") != "" {
		t.Errorf("HEAD before any GET: ETag %q (the upstream's must not pass)", w.Header().Get("Etag"))
	}
	serve(t, h, next, "GET", "/doc", "")
	h.cache.Wait()
	w := serve(t, h, next, "HEAD", "/doc", "")
	if got := w.Header().Get("Etag"); got != hashTag("v1") {
		t.Errorf("HEAD after GET: ETag %q, want %q", got, hashTag("v1"))
	}
	if w := serve(t, h, next, "HEAD", "/doc", "", "If-None-Match: "+hashTag("v1")); w.Code != http.StatusNotModified {
		t.Errorf("conditional HEAD: %d", w.Code)
	}
	if w := serve(t, h, next, "HEAD", "/doc?x=1", ""); w.Header().Get("Etag") != "" {
		t.Errorf("HEAD of another URL got the keyed resource's tag %q", w.Header().Get("Etag"))
	}
}

// Under the lock, a cache miss is resolved by hashing the current
// representation; after a write the client gets the new tag and can chain.
func TestHashedWrites(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	var gets atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			gets.Add(1)
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})

	if w := serve(t, h, next, "PUT", "/doc", "x", `If-Match: "stale"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale If-Match on a cache miss: %d %s", w.Code, w.Body)
	}
	w := serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+hashTag("v1"))
	if w.Code != 200 {
		t.Fatalf("If-Match with the hash of the current body: %d %s", w.Code, w.Body)
	}
	if got := w.Header().Get("Etag"); got != hashTag("v2") {
		t.Fatalf("write response ETag %q, want the new version's %q", got, hashTag("v2"))
	}
	// Chain without reading: the recorded tag is used, no probe needed
	// (once ristretto has applied the store of a key it did not hold).
	h.cache.Wait()
	before := gets.Load()
	w = serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+hashTag("v2"))
	if w.Code != 200 || w.Header().Get("Etag") != hashTag("v3") {
		t.Fatalf("chained write: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
	if n := gets.Load() - before; n != 1 {
		t.Errorf("chained write made %d GETs upstream, want 1 (the new version's)", n)
	}
	if w := serve(t, h, next, "PUT", "/doc", "v4", "If-Match: "+hashTag("v2")); w.Code != http.StatusPreconditionFailed {
		t.Errorf("write with the previous tag: %d", w.Code)
	}
	if got := mustGet(t, store, "/doc"); got != "v3" {
		t.Errorf("backend holds %q", got)
	}
	if w := serve(t, h, next, "DELETE", "/doc", "", "If-Match: "+hashTag("v3")); w.Code != http.StatusNoContent || w.Header().Get("Etag") != "" {
		t.Errorf("DELETE: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
	if w := serve(t, h, next, "PUT", "/doc", "v1", "If-None-Match: *"); w.Code != http.StatusCreated || w.Header().Get("Etag") != hashTag("v1") {
		t.Errorf("create: %d ETag %q", w.Code, w.Header().Get("Etag"))
	}
}

func mustGet(t *testing.T, s *backend.Store, path string) string {
	t.Helper()
	b, ok := s.Get(path)
	if !ok {
		t.Fatalf("backend has no %s", path)
	}
	return string(b)
}

// A backend whose tag is mtime+size gives two same-length versions written
// within one second the same tag: trusted, it lets a stale write through.
func TestHashCatchesSameSecondRewrites(t *testing.T) {
	for _, mode := range []string{"upstream", "hash"} {
		t.Run(mode, func(t *testing.T) {
			store := newHashStore(backend.MTimeETags, map[string]string{"/doc": "aa"})
			h := newTestHandler(t, &Handler{ETags: mode})
			next := storeHandler(store)
			var tag string
			upstreamTag := func() string {
				rec := httptest.NewRecorder()
				store.ServeHTTP(rec, httptest.NewRequest("HEAD", "/doc", nil))
				return rec.Header().Get("Etag")
			}
			for {
				// The race needs the write to leave the upstream's tag as it
				// was: both versions from within one second.
				before := upstreamTag()
				tag = serve(t, h, next, "GET", "/doc", "").Header().Get("Etag")
				w := serve(t, h, next, "PUT", "/doc", "bb", "If-Match: "+tag)
				if w.Code != 200 {
					t.Fatalf("first write: %d %s", w.Code, w.Body)
				}
				if upstreamTag() == before {
					break
				}
				store.Put("/doc", []byte("aa"))
			}
			// Another client read "aa" and now writes with its tag.
			stale := serve(t, h, next, "PUT", "/doc", "cc", "If-Match: "+tag)
			lost := stale.Code == 200
			// Trusted, the upstream's tag lets it through: the case hash is for.
			if want := mode == "upstream"; lost != want {
				t.Errorf("stale write answered %d; lost update: %v, want %v", stale.Code, lost, want)
			}
		})
	}
}

func TestRevalidateAlways(t *testing.T) {
	for _, c := range []struct {
		etags, revalidate string
		want              int
	}{
		{"upstream", "miss", 200}, // the cache is trusted: the change behind its back is overwritten
		{"upstream", "always", http.StatusPreconditionFailed},
		{"hash", "miss", 200},
		{"hash", "always", http.StatusPreconditionFailed},
	} {
		t.Run(c.etags+"/"+c.revalidate, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{ETags: c.etags, Revalidate: c.revalidate})
			next := storeHandler(store)
			tag := serve(t, h, next, "GET", "/doc", "").Header().Get("Etag")
			h.cache.Wait()
			store.Put("/doc", []byte("changed directly")) // a writer that bypasses the proxy
			w := serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag)
			if w.Code != c.want {
				t.Fatalf("stale write: %d, want %d (%s)", w.Code, c.want, w.Body)
			}
		})
	}
}

// An upstream that fails before its response is complete leaves nothing
// sent, so Caddy can still answer with an error.
func TestHashedGetUpstreamError(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	failing := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		w.Write([]byte("partial"))
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream went away"))
	})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://example.com/doc", nil)
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
	err := h.ServeHTTP(rec, req, failing)
	if err == nil {
		t.Fatal("the upstream's error was swallowed")
	}
	if rec.Body.Len() != 0 || rec.Code != 200 || rec.Flushed {
		t.Errorf("something was sent: %d %q", rec.Code, rec.Body)
	}
	h.cache.Wait()
	if _, ok := h.cache.Get("example.com/doc"); ok {
		t.Error("an incomplete body was learned")
	}
}

func TestHashedPartialContentUntagged(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	partial := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Range", "bytes 0-0/2")
		w.Header().Set("Etag", `"upstream"`)
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte("v"))
		return nil
	})
	w := serve(t, h, partial, "GET", "/doc", "", "Range: bytes=0-0")
	if w.Code != http.StatusPartialContent || w.Header().Get("Etag") != "" || !bytes.Equal(w.Body.Bytes(), []byte("v")) {
		t.Errorf("206: %d ETag %q body %q", w.Code, w.Header().Get("Etag"), w.Body)
	}
	h.cache.Wait()
	if _, ok := h.cache.Get("example.com/doc"); ok {
		t.Error("a part was learned as the representation")
	}
}
