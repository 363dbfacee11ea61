package writeguard

import (
	"context"
	"fmt"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func newCaddyContext() (caddy.Context, context.CancelFunc) {
	return caddy.NewContext(caddy.Context{Context: context.Background()})
}

// newTestHandler provisions a handler as Caddy would.
func newTestHandler(t *testing.T, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := newCaddyContext()
	t.Cleanup(cancel)
	if h.CacheSize == 0 && h.CacheBytes == 0 {
		h.CacheSize = 10_000
	}
	// Each test's handler is a configuration of its own: writes abandoned
	// and configurations loaded by other tests are none of its business.
	if h.reg == nil {
		h.reg = new(configRegistry)
	}
	if h.abandoned == nil {
		h.abandoned = new(abandonedWrites)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	if h.store.shared() != nil && h.config != nil {
		// Serving begins with telling Redis how resources are named, which
		// may make it forget versions: let that be over before the test's
		// writes record theirs.
		h.reg.activate(h.config)
		for deadline := time.Now().Add(10 * time.Second); h.redisUnsettled.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("Redis never adopted the handler's namings")
			}
		}
	}
	return h
}

func serve(t *testing.T, h *Handler, next caddyhttp.Handler, method, target, body string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, "http://example.com"+target, rd)
	for _, hdr := range headers {
		name, value, _ := strings.Cut(hdr, ":")
		if name == "Host" {
			req.Host = strings.TrimSpace(value)
			continue
		}
		req.Header.Add(name, strings.TrimSpace(value))
	}
	w := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil)
	if err := h.ServeHTTP(w, req, next); err != nil {
		if he, ok := err.(caddyhttp.HandlerError); ok {
			w.Code = he.StatusCode
		} else {
			// Errorf, not Fatalf: serve also runs on other goroutines.
			t.Errorf("%s %s: %v", method, target, err)
		}
	}
	return w
}

func storeHandler(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		s.ServeHTTP(w, r)
		return nil
	})
}

// A GET that was answered before a write but passes the guard after the
// write recorded its version must not put the old version back.
func TestReadOvertakenByWriteIsNotLearned(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	oldTag := store.ETagOf([]byte("v1"))

	answered, release := make(chan struct{}), make(chan struct{})
	slowRead := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		// Take the upstream's answer now, deliver it later.
		rec := httptest.NewRecorder()
		store.ServeHTTP(rec, r)
		close(answered)
		<-release
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, err := w.Write(rec.Body.Bytes())
		return err
	})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		serve(t, h, slowRead, "GET", "/doc", "")
	}()
	<-answered

	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+oldTag); w.Code != 200 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	close(release)
	<-readDone
	h.cache.Wait()

	// Were the slow read's v1 learned, this write would pass on the
	// cache's word alone and overwrite v2.
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v3", "If-Match: "+oldTag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale write after an overtaken read: %d %s", w.Code, w.Body)
	}
	if got, _ := store.Get("/doc"); string(got) != "v2" {
		t.Fatalf("backend holds %q", got)
	}
}

// countProbes wraps next and counts the HEAD/GET requests it sees.
func countProbes(next caddyhttp.Handler) (caddyhttp.Handler, *int) {
	var mu sync.Mutex
	n := new(int)
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodHead || r.Method == http.MethodGet {
			mu.Lock()
			*n++
			mu.Unlock()
		}
		return next.ServeHTTP(w, r)
	}), n
}

func TestWriteRecordsVersionAndSkipsProbe(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	next, probes := countProbes(storeHandler(store))

	serve(t, h, next, "GET", "/doc", "")
	h.cache.Wait() // ristretto applies sets of new keys asynchronously
	if w := serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != 200 {
		t.Fatalf("PUT: %d", w.Code)
	}
	h.cache.Wait()
	if w := serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+store.ETagOf([]byte("v2"))); w.Code != 200 {
		t.Fatalf("chained PUT: %d", w.Code)
	}
	if *probes != 1 {
		t.Errorf("%d upstream reads, want only the client's GET: the cache must answer for learned and written versions", *probes)
	}
}

func TestProbeIsAPlainHead(t *testing.T) {
	var seen *http.Request
	var body []byte
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodHead {
			seen = r
			body, _ = io.ReadAll(r.Body)
			w.Header().Set("ETag", `"cur"`)
			return nil
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	w := serve(t, h, next, "PUT", "/doc", "payload", `If-Match: "cur"`, "Authorization: Bearer x", "Cookie: s=1",
		"Content-Type: text/plain", "Expect: 100-continue", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT")
	if w.Code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	if seen == nil {
		t.Fatal("no probe")
	}
	for _, f := range []string{"If-Match", "If-Unmodified-Since", "Content-Type", "Expect"} {
		if seen.Header.Get(f) != "" {
			t.Errorf("probe carried %s", f)
		}
	}
	if seen.Header.Get("Authorization") == "" || seen.Header.Get("Cookie") == "" {
		t.Error("probe must carry the client's credentials")
	}
	if len(body) != 0 || seen.ContentLength != 0 {
		t.Errorf("probe carried a body: %q", body)
	}
}

func TestPanicInNextReleasesLockAndForgets(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	tag := store.ETagOf([]byte("v1"))
	serve(t, h, storeHandler(store), "GET", "/doc", "")
	h.cache.Wait()

	boom := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPut {
			store.ServeHTTP(httptest.NewRecorder(), r) // applied, then the handler dies
			panic("upstream handler crashed")
		}
		store.ServeHTTP(w, r)
		return nil
	})
	func() {
		defer func() { recover() }()
		serve(t, h, boom, "PUT", "/doc", "v2", "If-Match: "+tag)
	}()
	if n := h.locks.Len(); n != 0 {
		t.Fatalf("%d lock entries left after a panic", n)
	}
	// The write was applied but its outcome never recorded: the guard must
	// not go on believing v1 is current.
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v3", "If-Match: "+tag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write with the pre-panic tag: %d", w.Code)
	}
}

func TestBodyIsReadBeforeTheLock(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{Blind: "allow"})

	pr, pw := io.Pipe()
	slow := httptest.NewRequest("PUT", "http://example.com/doc", pr)
	slowDone := make(chan int)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, slow, storeHandler(store))
		slowDone <- w.Code
	}()
	pw.Write([]byte("partial"))

	fast := make(chan int)
	go func() { fast <- serve(t, h, storeHandler(store), "PUT", "/doc", "quick").Code }()
	select {
	case code := <-fast:
		if code != 200 {
			t.Fatalf("fast write: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write waited for another client's upload")
	}
	pw.Write([]byte(" rest"))
	pw.Close()
	if code := <-slowDone; code != 200 {
		t.Fatalf("slow write: %d", code)
	}
	if got, _ := store.Get("/doc"); string(got) != "partial rest" {
		t.Fatalf("backend holds %q", got)
	}
}

func TestClientLeavingWhileQueuedFreesItsPlace(t *testing.T) {
	store := backend.New()
	h := newTestHandler(t, &Handler{Blind: "allow"})
	entered, release := make(chan struct{}), make(chan struct{})
	holding := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		close(entered)
		<-release
		store.ServeHTTP(w, r)
		return nil
	})
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		serve(t, h, holding, "PUT", "/doc", "first")
	}()
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("PUT", "http://example.com/doc", strings.NewReader("second")).WithContext(ctx)
	errc := make(chan error)
	go func() { errc <- h.ServeHTTP(httptest.NewRecorder(), req, storeHandler(store)) }()
	deadline := time.Now().Add(10 * time.Second)
	for h.locks.Waiting() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("a client that left kept waiting")
	}
	if n := h.locks.Waiting(); n != 0 {
		t.Fatalf("%d waiters after the client left", n)
	}
	close(release)
	<-firstDone
}

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

// With the default key, writes to URLs with a query (/items?id=6) share the
// path's key: their outcomes must not stand for the path's version.
func TestQueryWritesDoNotRecord(t *testing.T) {
	var mu sync.Mutex
	versions := map[string]int{"5": 1, "6": 1}
	counters := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		defer mu.Unlock()
		id := r.URL.Query().Get("id")
		if r.Method == http.MethodPut {
			versions[id]++
		}
		w.Header().Set("Etag", fmt.Sprintf(`"%d"`, versions[id]))
		w.WriteHeader(http.StatusOK)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	for _, step := range []struct{ target, ifMatch string }{
		{"/items?id=6", `"1"`}, // id 6 now at "2"
		{"/items?id=6", `"2"`}, // "3"
		{"/items?id=5", `"1"`}, // id 5 at "2"
	} {
		if w := serve(t, h, counters, "PUT", step.target, "x", "If-Match: "+step.ifMatch); w.Code != 200 {
			t.Fatalf("PUT %s: %d", step.target, w.Code)
		}
		h.cache.Wait()
	}
	if w := serve(t, h, counters, "PUT", "/items?id=6", "stale", `If-Match: "2"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale write to ?id=6 with the tag of ?id=5: %d", w.Code)
	}
}

// A 404 seen by a read (a hidden resource, a routing quirk) must not let a
// create-only write replace what exists.
func TestCachedAbsenceIsConfirmed(t *testing.T) {
	store := backend.New()
	h := newTestHandler(t, &Handler{})
	serve(t, h, storeHandler(store), "GET", "/doc", "") // 404, learned
	h.cache.Wait()
	store.Put("/doc", []byte("precious")) // created behind the guard's back
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "x", "If-None-Match: *"); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("create-only write over an existing resource: %d", w.Code)
	}
	if got, _ := store.Get("/doc"); string(got) != "precious" {
		t.Fatalf("backend holds %q", got)
	}
}

// Express tags every response body, so a write answered {"ok":true} carries
// the same weak ETag every time: it must not be taken for the new version.
func TestWeakWriteResponseTagIsNotAVersion(t *testing.T) {
	store := backend.New()
	store.ETags = backend.WeakETags
	store.Put("/doc", []byte("v1"))
	express := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPut {
			store.ServeHTTP(httptest.NewRecorder(), r)
			w.Header().Set("Etag", `W/"b-ok"`)
			_, err := w.Write([]byte(`{"ok":true}`))
			return err
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	a := serve(t, h, express, "PUT", "/doc", "by A", "If-Match: "+store.ETagOf([]byte("v1")))
	if a.Code != 200 {
		t.Fatalf("A: %d", a.Code)
	}
	h.cache.Wait()
	if b := serve(t, h, express, "PUT", "/doc", "by B", "If-Match: "+store.ETagOf([]byte("by A"))); b.Code != 200 {
		t.Fatalf("B: %d", b.Code)
	}
	h.cache.Wait()
	// A chains with the tag of its own write's response.
	if w := serve(t, h, express, "PUT", "/doc", "by A again", "If-Match: "+a.Header().Get("Etag")); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("A's chained write over B's: %d", w.Code)
	}
	if got, _ := store.Get("/doc"); string(got) != "by B" {
		t.Fatalf("backend holds %q", got)
	}
}

// A method the guard lets through can still change the resource.
func TestUnguardedWriteForgetsVersion(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	withPost := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			store.Put(r.URL.Path, body)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	serve(t, h, withPost, "GET", "/doc", "")
	h.cache.Wait()
	serve(t, h, withPost, "POST", "/doc", "posted")
	h.cache.Wait()
	if w := serve(t, h, withPost, "PUT", "/doc", "v3", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write based on the version before the POST: %d", w.Code)
	}
}

// An unguarded POST's change is visible to guarded writes as soon as its
// upstream answered.
func TestUnguardedWriteForgetsWhenUpstreamAnswers(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	headerSent, finish := make(chan struct{}), make(chan struct{})
	slowPost := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPost {
			store.Put(r.URL.Path, []byte("posted"))
			w.WriteHeader(http.StatusOK)
			close(headerSent)
			<-finish
			_, err := w.Write([]byte("done"))
			return err
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	serve(t, h, slowPost, "GET", "/doc", "")
	h.cache.Wait()
	postDone := make(chan struct{})
	go func() {
		defer close(postDone)
		serve(t, h, slowPost, "POST", "/doc", "posted")
	}()
	<-headerSent
	h.cache.Wait()
	w := serve(t, h, slowPost, "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1")))
	close(finish)
	<-postDone
	if w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write based on the version before the POST: %d", w.Code)
	}
}

// A write whose answer turns the connection into a tunnel releases its lock.
func TestUpgradedWriteReleasesLock(t *testing.T) {
	h := newTestHandler(t, &Handler{Blind: "allow", LockTimeout: caddy.Duration(5 * time.Second)})
	upgraded, closeTunnel := make(chan struct{}), make(chan struct{})
	tunnel := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Header.Get("Upgrade") == "" {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		w.WriteHeader(http.StatusSwitchingProtocols)
		close(upgraded)
		<-closeTunnel
		return nil
	})
	tunnelDone := make(chan struct{})
	go func() {
		defer close(tunnelDone)
		serve(t, h, tunnel, "PUT", "/doc", "x", "Upgrade: websocket", "Connection: Upgrade")
	}()
	<-upgraded
	second := make(chan int)
	go func() { second <- serve(t, h, tunnel, "PUT", "/doc", "y").Code }()
	select {
	case code := <-second:
		if code != http.StatusNoContent {
			t.Fatalf("second write: %d", code)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("a tunnel kept the resource locked")
	}
	close(closeTunnel)
	<-tunnelDone
}

// A nested guard with another key guards that key; with the same key it
// defers to the outer guard.
func TestNestedGuardWithOtherKeyStillGuards(t *testing.T) {
	store := backend.New()
	inner := newTestHandler(t, &Handler{Key: "{http.request.uri.path}#inner"})
	outer := newTestHandler(t, &Handler{Blind: "allow"})
	through := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return inner.ServeHTTP(w, r, storeHandler(store))
	})
	if w := serve(t, outer, through, "PUT", "/doc", "blind"); w.Code != http.StatusPreconditionRequired {
		t.Fatalf("inner guard with its own key: %d", w.Code)
	}
	if _, ok := store.Get("/doc"); ok {
		t.Fatal("a blind write passed the inner guard")
	}
}

// Once the upstream answered, the write is applied: a client that reads the
// response body slowly must not hold the resource's lock.
func TestLockReleasedWhenUpstreamAnswers(t *testing.T) {
	store := backend.New()
	h := newTestHandler(t, &Handler{Blind: "allow", LockTimeout: caddy.Duration(5 * time.Second)})
	headerSent, finishBody := make(chan struct{}), make(chan struct{})
	slowBody := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		store.ServeHTTP(httptest.NewRecorder(), r)
		w.Header().Set("Etag", `"first"`)
		w.WriteHeader(http.StatusOK)
		close(headerSent)
		<-finishBody
		_, err := w.Write([]byte("a long answer"))
		return err
	})
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		serve(t, h, slowBody, "PUT", "/doc", "first")
	}()
	<-headerSent
	second := make(chan int)
	go func() { second <- serve(t, h, storeHandler(store), "PUT", "/doc", "second").Code }()
	select {
	case code := <-second:
		if code != 200 {
			t.Fatalf("second write: %d", code)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("the second write waited for the first write's response body")
	}
	close(finishBody)
	<-firstDone
}

// A guard inside another guard's route must not wait for the outer lock.
func TestNestedGuardsDoNotDeadlock(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	inner := newTestHandler(t, &Handler{LockTimeout: caddy.Duration(200 * time.Millisecond)})
	outer := newTestHandler(t, &Handler{})
	through := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return inner.ServeHTTP(w, r, storeHandler(store))
	})
	nested := guardMetrics().requests.WithLabelValues(outcomeNested.String())
	before := testutil.ToFloat64(nested)
	if w := serve(t, outer, through, "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != 200 {
		t.Fatalf("nested guards: %d %s", w.Code, w.Body)
	}
	if got := testutil.ToFloat64(nested) - before; got != 1 {
		t.Errorf("outcome %s counted %v times, want 1", outcomeNested, got)
	}
}

// Refusals are ordinary answers: none of them is logged at Info or above.
func TestRefusalsAreNotLoggedAtInfo(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	core, logs := observer.New(zapcore.InfoLevel)
	h.logger = zap.New(core)
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2"); w.Code != http.StatusPreconditionRequired {
		t.Fatalf("blind write: %d", w.Code)
	}
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", `If-Match: "old"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale write: %d", w.Code)
	}
	for _, e := range logs.All() {
		t.Errorf("logged at %s: %q %v", e.Level, e.Message, e.ContextMap())
	}
}
