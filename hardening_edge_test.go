package writeguard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// upperCasingBackend reads the method case-insensitively, as Django
// (environ["REQUEST_METHOD"].upper()), Werkzeug/Flask, Symfony/Laravel
// (strtoupper) and the WordPress REST API do: "put" is PUT to them, and
// Go's server and Caddy pass "put" through as a valid token.
func upperCasingBackend(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		r = r.Clone(r.Context())
		r.Method = strings.ToUpper(r.Method)
		s.ServeHTTP(w, r)
		return nil
	})
}

func TestLowerCaseMethodIsGuarded(t *testing.T) {
	for _, method := range []string{"put", "Delete", "pAtCh"} {
		t.Run(method, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{})
			w := serve(t, h, upperCasingBackend(store), method, "/doc", `{"v":2}`)
			if w.Code != http.StatusPreconditionRequired {
				t.Errorf("blind %s: %d, want 428", method, w.Code)
			}
			if store.Writes() != 0 {
				t.Errorf("a blind %s reached the backend unchecked", method)
			}
		})
	}
}

// cgiStyleOverride applies X-HTTP-Method-Override the way Rack
// (Rack::MethodOverride, in Rails' default stack) sees it: header names
// become HTTP_* variables, upper-cased with "-" turned into "_", so
// X_HTTP_METHOD_OVERRIDE and X-HTTP-Method-Override are the same variable
// on servers that keep underscored fields (WEBrick, Unicorn, Thin, and Puma
// when no hyphenated twin is present).
func cgiStyleOverride(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for name, values := range r.Header {
			env := "HTTP_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
			if env == "HTTP_X_HTTP_METHOD_OVERRIDE" && r.Method == http.MethodPost && len(values) > 0 {
				r = r.Clone(r.Context())
				r.Method = strings.ToUpper(values[0])
				break
			}
		}
		s.ServeHTTP(w, r)
		return nil
	})
}

// Caddy drops header fields with underscores before any handler runs,
// unless the server lists them in expected_underscore_headers: a site that
// lists X_HTTP_METHOD_OVERRIDE for old clients hands it to the backend, and
// the guard must read it as the backend will.
func TestUnderscoredOverrideFieldIsGuarded(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	h := newTestHandler(t, &Handler{})
	w := serve(t, h, cgiStyleOverride(store), "POST", "/doc", "v2", "X_HTTP_METHOD_OVERRIDE: PUT")
	if w.Code != http.StatusPreconditionRequired {
		t.Errorf("blind POST with X_HTTP_METHOD_OVERRIDE: PUT: %d, want 428", w.Code)
	}
	if got := mustGet(t, store, "/doc"); got != "v1" {
		t.Errorf("the backend applied the overridden write unchecked: it holds %q", got)
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

// An upstream that sends the header of a write's answer and then stalls
// in its body must not keep the resource locked past write_timeout: with
// `etags hash` the answer is held while reverse_proxy reads it, and
// reverse_proxy reads with no deadline of its own.
func TestHashedWriteAnswerStallHoldsLockPastWriteTimeout(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	stall := make(chan struct{})
	var stalledWrite sync.WaitGroup
	defer stalledWrite.Wait()
	defer close(stall)
	var once sync.Once
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPut {
			store.ServeHTTP(w, r)
			return nil
		}
		stalled := false
		once.Do(func() { stalled = true })
		if !stalled {
			store.ServeHTTP(w, r)
			return nil
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"ok":`)
		http.NewResponseController(w).Flush()
		select { // the rest of the body never comes, until the test ends
		case <-stall:
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return nil
	})
	h := newTestHandler(t, &Handler{
		ETags:        "hash",
		WriteTimeout: caddy.Duration(100 * time.Millisecond),
		LockTimeout:  caddy.Duration(700 * time.Millisecond),
	})
	stalledWrite.Go(func() { serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+hashTag("v1")) })
	deadline := time.Now().Add(2 * time.Second)
	for h.locks.Held() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // past write_timeout
	w := serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+hashTag("v1"))
	if w.Code == http.StatusConflict {
		t.Errorf("second write: 409 after lock_timeout (700ms), although write_timeout (100ms) had long passed: the stalled answer still holds the lock")
	}
}

// lateWriter records calls made on a response writer after the handler
// that owned it has returned, as net/http forbids.
type lateWriter struct {
	*httptest.ResponseRecorder
	mu       sync.Mutex
	returned bool
	late     []string
}

func (lw *lateWriter) note(call string) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.returned {
		lw.late = append(lw.late, call)
	}
}

func (lw *lateWriter) WriteHeader(status int) {
	lw.note("WriteHeader")
	lw.ResponseRecorder.WriteHeader(status)
}

func (lw *lateWriter) Write(p []byte) (int, error) {
	lw.note("Write")
	return lw.ResponseRecorder.Write(p)
}

func (lw *lateWriter) Flush() {
	lw.note("Flush")
	lw.ResponseRecorder.Flush()
}

// abortingUpstream behaves as reverse_proxy does when the upstream's body
// breaks off: header and the first bytes passed on, a flush, then
// panic(http.ErrAbortHandler) (Caddy's finalizeResponse).
var abortingUpstream = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPut {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
	w.Header().Set("Content-Length", "100")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "the first ten")
	http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
})

// After a held read breaks off, nothing may touch the client's response
// writer once the handler is gone: on net/http's HTTP/1 connection the
// buffered writer is released by then, and a write from a timer goroutine
// is a nil dereference that no handler can recover, so the process dies.
func TestHashedReadAbortLeavesNoLateWrites(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	lw := &lateWriter{ResponseRecorder: httptest.NewRecorder()}
	req := httptest.NewRequest("GET", "http://example.com/doc", nil)
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), lw, nil)
	func() {
		defer func() {
			if rec := recover(); rec != nil && rec != http.ErrAbortHandler {
				t.Errorf("unexpected panic: %v", rec)
			}
		}()
		h.ServeHTTP(lw, req, abortingUpstream)
	}()
	lw.mu.Lock()
	lw.returned = true
	lw.mu.Unlock()
	time.Sleep(3 * heldFlushDelay)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if len(lw.late) > 0 {
		t.Errorf("after the handler returned, the guard called %v on the client's response writer", lw.late)
	}
}

// With `etags hash` a write's answer is held, so when the upstream breaks
// off in its body nothing has reached the client yet and the guard can
// still say what happened, as it promises for faults: 502 upstream-failed.
func TestHashedWriteAbortIsAnsweredWithProblem(t *testing.T) {
	h := newTestHandler(t, &Handler{ETags: "hash"})
	probeOK := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			io.WriteString(w, "v1")
			return nil
		}
		return abortingUpstream(w, r)
	})
	w, panicked := serveCatching(t, h, probeOK, "PUT", "/doc", "v2", "If-Match: "+hashTag("v1"))
	if panicked != nil {
		t.Fatalf("the guard let reverse_proxy's abort through (%v): the client's connection is dropped without an answer although nothing was sent", panicked)
	}
	if w.Code != http.StatusBadGateway || problemType(t, w.Body.Bytes()) != problemUpstreamFailed {
		t.Errorf("write whose answer broke off: %d %s, want 502 upstream-failed", w.Code, w.Body)
	}
	if h.locks.Len() != 0 {
		t.Error("lock still held")
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

// phpQueryBackend honours a _method query parameter on POST as Laravel and
// Symfony (with method parameter override, Laravel's default) do after PHP
// has parsed the query: names are percent-decoded, leading spaces dropped,
// and "." and " " turned into "_". Express's methodOverride("_method")
// decodes names too.
func phpQueryBackend(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		q, _ := url.ParseQuery(r.URL.RawQuery)
		for name, values := range q {
			php := strings.NewReplacer(".", "_", " ", "_").Replace(strings.TrimLeft(name, " "))
			if php == "_method" && r.Method == http.MethodPost && len(values) > 0 {
				r = r.Clone(r.Context())
				r.Method = strings.ToUpper(values[0])
				break
			}
		}
		s.ServeHTTP(w, r)
		return nil
	})
}

// Unlike a form field, the query is read without touching the body, so a
// write renamed there is as visible to the guard as one renamed in a
// header field, whichever spelling of the name the backend decodes.
func TestMethodQueryParameterIsGuarded(t *testing.T) {
	for _, query := range []string{"?_method=PUT", "?%5Fmethod=PUT", "?%5fmethod=PUT", "?.method=PUT", "?_m%65thod=PUT"} {
		t.Run(query, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{})
			w := serve(t, h, phpQueryBackend(store), "POST", "/doc"+query, "v2")
			if w.Code != http.StatusPreconditionRequired {
				t.Errorf("blind POST /doc%s: %d, want 428", query, w.Code)
			}
			if got := mustGet(t, store, "/doc"); got != "v1" {
				t.Errorf("the backend applied the renamed write unchecked: it holds %q", got)
			}
		})
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
