package writeguard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func TestBodyIsReadBeforeTheLock(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{Blind: "allow"})

	pr, pw := io.Pipe()
	slow := newRequest("PUT", "/doc", pr)
	slowDone := make(chan int)
	go func() {
		w := httptest.NewRecorder()
		serveTo(w, slow, h, storeHandler(store))
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
	req := newRequest("PUT", "/doc", strings.NewReader("second")).WithContext(ctx)
	errc := make(chan error)
	go func() { errc <- serveTo(httptest.NewRecorder(), req, h, storeHandler(store)) }()
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

// A write beyond max_waiters is refused at once instead of queueing.
func TestMaxWaiters(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	tag := store.ETagOf([]byte("v1"))
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	slow := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPut {
			entered <- struct{}{}
			<-release
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{MaxWaiters: 1})
	serve(t, h, slow, "HEAD", "/doc", "")
	h.cache.Wait()

	var wg sync.WaitGroup
	wg.Go(func() { serve(t, h, slow, "PUT", "/doc", "a", "If-Match: "+tag) })
	<-entered // the first write holds the lock
	wg.Go(func() { serve(t, h, slow, "PUT", "/doc", "b", "If-Match: "+tag) })
	for h.locks.Waiting() < 1 {
		time.Sleep(time.Millisecond)
	}
	w := serve(t, h, slow, "PUT", "/doc", "c", "If-Match: "+tag)
	close(release)
	wg.Wait()
	if w.Code != http.StatusConflict || w.Header().Get("Retry-After") == "" || problemType(t, w.Body.Bytes()) != problemResourceBusy {
		t.Fatalf("third write: %d Retry-After %q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if !strings.Contains(w.Body.String(), "already waiting") {
		t.Errorf("detail does not say why: %s", w.Body)
	}
}

// An upstream that never answers holds the lock only until write_timeout.
func TestWriteTimeout(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	tag := store.ETagOf([]byte("v1"))
	hang := true
	var mu sync.Mutex
	upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		hanging := hang && r.Method == http.MethodPut
		mu.Unlock()
		if hanging {
			<-r.Context().Done() // as reverse_proxy does when its request is cancelled
			return caddyhttp.Error(http.StatusBadGateway, r.Context().Err())
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{WriteTimeout: caddy.Duration(50 * time.Millisecond)})
	serve(t, h, upstream, "HEAD", "/doc", "")
	h.cache.Wait()

	w := serve(t, h, upstream, "PUT", "/doc", "v2", "If-Match: "+tag)
	if w.Code != http.StatusGatewayTimeout || problemType(t, w.Body.Bytes()) != problemUpstreamFailed {
		t.Fatalf("hung write: %d %s", w.Code, w.Body)
	}
	if n := h.locks.Len(); n != 0 {
		t.Errorf("%d locks still held", n)
	}
	if _, ok := h.cache.Get("example.com/doc"); ok {
		t.Error("the version of a write that may have been applied is still cached")
	}
	mu.Lock()
	hang = false
	mu.Unlock()
	if w := serve(t, h, upstream, "PUT", "/doc", "v2", "If-Match: "+tag); w.Code != 200 {
		t.Errorf("next write: %d %s", w.Code, w.Body)
	}
}

// Writers that all read one version race to replace it; every loser names
// the version the winner replaced. Those are refused from what the guard
// saw, without a version check at the upstream and without queueing for
// the lock: a hot resource must not become a convoy of checks.
func TestWriteNamingReplacedVersionIsRefusedAtOnce(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{LockTimeout: caddy.Duration(time.Millisecond)})
	next, probes := countProbes(storeHandler(store))
	serve(t, h, next, "GET", "/doc", "")
	h.cache.Wait()
	writeVersions(t, h, next, store, "v1", "v2")
	*probes = 0

	// Another write holds the lock: a write that had to wait for it would
	// be answered 409 after lock_timeout.
	if err := h.locks.Lock(context.Background(), "example.com/doc", 0); err != nil {
		t.Fatal(err)
	}
	w := serve(t, h, next, "PUT", "/doc", "lost", "If-Match: "+store.ETagOf([]byte("v1")))
	h.locks.Unlock("example.com/doc")
	if w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write naming the replaced version: %d %s", w.Code, w.Body)
	}
	if *probes != 0 {
		t.Errorf("%d version checks at the upstream, want none", *probes)
	}
	if got, _ := store.Get("/doc"); string(got) != "v2" {
		t.Fatalf("backend holds %q", got)
	}

	// Under the lock too (the version may change while a write waits).
	w = serve(t, h, next, "PUT", "/doc", "lost", "If-Match: "+store.ETagOf([]byte("v1")))
	if w.Code != http.StatusPreconditionFailed || *probes != 0 {
		t.Fatalf("write naming the replaced version: %d with %d checks", w.Code, *probes)
	}
}

// A tag the guard never saw replaced may be another representation's, or
// the resource may have changed behind the guard's back: the upstream is
// asked before the write is refused.
func TestWriteNamingUnknownVersionIsConfirmed(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	next, probes := countProbes(storeHandler(store))
	writeVersions(t, h, next, store, "v1", "v2")
	*probes = 0
	for _, ifMatch := range []string{
		store.ETagOf([]byte("elsewhere")),
		// One replaced version and one unknown: the unknown one may be current.
		store.ETagOf([]byte("v1")) + ", " + store.ETagOf([]byte("elsewhere")),
	} {
		if w := serve(t, h, next, "PUT", "/doc", "x", "If-Match: "+ifMatch); w.Code != http.StatusPreconditionFailed {
			t.Fatalf("If-Match %s: %d", ifMatch, w.Code)
		}
	}
	if *probes != 2 {
		t.Errorf("%d version checks, want one per write", *probes)
	}
}

// Content-derived tags come back when content does. A resource put back to
// an old content behind the guard's back has that old tag again: once a
// read has shown it, a write naming it goes through.
func TestReplacedVersionThatCameBackIsWritable(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	next := storeHandler(store)
	writeVersions(t, h, next, store, "v1", "v2")
	store.Put("/doc", []byte("v1")) // behind the guard's back

	serve(t, h, next, "GET", "/doc", "")
	h.cache.Wait()
	if w := serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != 200 {
		t.Fatalf("write naming the current version, seen by a read: %d %s", w.Code, w.Body)
	}
	if got, _ := store.Get("/doc"); string(got) != "v3" {
		t.Fatalf("backend holds %q", got)
	}
}

// A write that leaves the content as it was keeps its tag current, with
// etags upstream. (etags auto takes the same tag again as evidence that the
// upstream's tags do not name versions: source_auto_test.go.)
func TestWriteThatKeepsTheTagDoesNotSupersedeIt(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{ETags: "upstream"})
	next := storeHandler(store)
	writeVersions(t, h, next, store, "v1", "v1", "v2", "v1")
	// v1 is current again, v2 was replaced.
	if w := serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != 200 {
		t.Fatalf("write naming the current version: %d %s", w.Code, w.Body)
	}
}

// Only the last few replaced versions are kept; a writer further behind is
// still refused, after a version check.
func TestOldestReplacedVersionsAreConfirmed(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	next, probes := countProbes(storeHandler(store))
	writeVersions(t, h, next, store, "v1", "v2", "v3", "v4", "v5", "v6")
	*probes = 0
	if w := serve(t, h, next, "PUT", "/doc", "x", "If-Match: "+store.ETagOf([]byte("v2"))); w.Code != http.StatusPreconditionFailed || *probes != 0 {
		t.Fatalf("write naming v2: %d with %d checks, want 412 and none", w.Code, *probes)
	}
	if w := serve(t, h, next, "PUT", "/doc", "x", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != http.StatusPreconditionFailed || *probes != 1 {
		t.Fatalf("write naming v1: %d with %d checks, want 412 and one", w.Code, *probes)
	}
}

func TestWriteNamingDeletedVersionIsRefusedAtOnce(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
	next, probes := countProbes(storeHandler(store))
	if w := serve(t, h, next, "DELETE", "/doc", "", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code/100 != 2 {
		t.Fatalf("DELETE: %d", w.Code)
	}
	h.cache.Wait()
	*probes = 0
	if w := serve(t, h, next, "PUT", "/doc", "x", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != http.StatusPreconditionFailed || *probes != 0 {
		t.Fatalf("write naming the deleted version: %d with %d checks, want 412 and none", w.Code, *probes)
	}
	if _, ok := store.Get("/doc"); ok {
		t.Fatal("the deleted resource was written")
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

// 202 Accepted: the write is queued upstream, maybe never applied. The old
// version may still be current, and the answer's tag names nothing yet.
func TestAcceptedWriteForgetsVersion(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	queued := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPut {
			w.Header().Set("Etag", `"queued"`)
			w.WriteHeader(http.StatusAccepted)
			return nil
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	v1 := store.ETagOf([]byte("v1"))
	if w := serve(t, h, queued, "PUT", "/doc", "v2", "If-Match: "+v1); w.Code != http.StatusAccepted {
		t.Fatalf("PUT: %d", w.Code)
	}
	h.cache.Wait()
	// The upstream never applied it: v1 is still current.
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+v1); w.Code != 200 {
		t.Fatalf("write naming the still current version: %d %s", w.Code, w.Body)
	}
	if w := serve(t, h, queued, "PUT", "/doc", "v3", `If-Match: "queued"`); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write naming a queued write's tag: %d", w.Code)
	}
}

// Errors of the upstream become problem bodies; errors of other handlers
// stay errors, for handle_errors.
func TestUpstreamErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		err     error
		status  int
		problem bool
	}{
		{"connection refused", caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp: connection refused")), http.StatusBadGateway, true},
		{"no upstream available", caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no upstreams available")), http.StatusServiceUnavailable, true},
		{"upstream timeout", caddyhttp.Error(http.StatusGatewayTimeout, context.DeadlineExceeded), http.StatusGatewayTimeout, true},
		{"a later handler's 403", caddyhttp.Error(http.StatusForbidden, errors.New("forbidden")), http.StatusForbidden, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			tag := store.ETagOf([]byte("v1"))
			failing := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				if r.Method == http.MethodPut {
					return c.err
				}
				store.ServeHTTP(w, r)
				return nil
			})
			h := newTestHandler(t, &Handler{})
			serve(t, h, failing, "HEAD", "/doc", "")
			h.cache.Wait()
			w := serve(t, h, failing, "PUT", "/doc", "v2", "If-Match: "+tag)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d", w.Code, c.status)
			}
			if got := w.Header().Get("Content-Type") == "application/problem+json"; got != c.problem {
				t.Fatalf("problem body: %v, want %v (%q)", got, c.problem, w.Body)
			}
			if c.problem && problemType(t, w.Body.Bytes()) != problemUpstreamFailed {
				t.Errorf("type %s", w.Body)
			}
			if h.locks.Len() != 0 {
				t.Error("lock still held")
			}
			if _, ok := h.cache.Get("example.com/doc"); ok {
				t.Error("version still cached after a write with an unknown outcome")
			}
		})
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
	serveCatching(t, h, boom, "PUT", "/doc", "v2", "If-Match: "+tag)
	if n := h.locks.Len(); n != 0 {
		t.Fatalf("%d lock entries left after a panic", n)
	}
	// The write was applied but its outcome never recorded: the guard must
	// not go on believing v1 is current.
	if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v3", "If-Match: "+tag); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write with the pre-panic tag: %d", w.Code)
	}
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
