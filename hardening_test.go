package writeguard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func problemType(t *testing.T, body []byte) string {
	t.Helper()
	var p struct{ Type string }
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("not a problem body: %q", body)
	}
	return strings.TrimPrefix(p.Type, problemBase)
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

// newRequest is like serve's request, with a body of unknown length.
func newRequest(t *testing.T, method, target string, body io.Reader, headers ...string) *http.Request {
	t.Helper()
	req := httptest.NewRequest(method, "http://example.com"+target, body)
	req.ContentLength = -1
	for _, hdr := range headers {
		name, value, _ := strings.Cut(hdr, ":")
		req.Header.Add(name, strings.TrimSpace(value))
	}
	return req
}

func serveRequest(t *testing.T, h *Handler, next caddyhttp.Handler, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil)
	if err := h.ServeHTTP(w, req, next); err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL, err)
	}
	return w
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

// A body above max_body_memory goes to a temporary file, reaches the
// upstream whole (twice, as on a retry), and the file is removed.
func TestLargeBodySpillsToTemporaryFile(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	body := bytes.Repeat([]byte("0123456789"), 10_000) // 100 kB
	var received [][]byte
	var filesDuring int
	upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusNotFound)
			return nil
		}
		entries, _ := os.ReadDir(tmp)
		filesDuring = len(entries)
		b, _ := io.ReadAll(r.Body)
		received = append(received, b)
		again, err := r.GetBody()
		if err != nil {
			return err
		}
		b, _ = io.ReadAll(again)
		received = append(received, b)
		w.WriteHeader(http.StatusCreated)
		return nil
	})
	h := newTestHandler(t, &Handler{MaxBodyMemory: 1000})
	w := serve(t, h, upstream, "PUT", "/doc", string(body), "If-None-Match: *")
	if w.Code != http.StatusCreated {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	if filesDuring != 1 {
		t.Errorf("%d temporary files while the write was forwarded, want 1", filesDuring)
	}
	for i, b := range received {
		if !bytes.Equal(b, body) {
			t.Errorf("read %d: %d bytes, want the %d sent", i, len(b), len(body))
		}
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("temporary files left behind: %v", entries)
	}

	// Over max_body, after spilling: 413, and nothing left behind.
	h2 := newTestHandler(t, &Handler{MaxBodyMemory: 1000, MaxBody: 50_000})
	req := newRequest(t, "PUT", "/doc2", io.MultiReader(bytes.NewReader(body)), "If-None-Match: *") // length unknown
	rec := serveRequest(t, h2, upstream, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("body over max_body: %d", rec.Code)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("temporary files left behind after 413: %v", entries)
	}
}

// Method override fields cannot take a write past the guard.
func TestMethodOverride(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	tag := store.ETagOf([]byte("v1"))
	for _, c := range []struct {
		name    string
		cfg     Handler
		method  string
		headers []string
		status  int
		problem string
	}{
		{"POST as PUT, blind", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"POST as delete, stale", Handler{}, "POST", []string{"X-HTTP-Method: delete", `If-Match: "old"`}, http.StatusPreconditionFailed, problemPreconditionFailed},
		{"X-Method-Override", Handler{}, "POST", []string{"X-Method-Override: PATCH"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"GET as DELETE", Handler{}, "GET", []string{"X-HTTP-Method-Override: DELETE"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"PUT as GET stays guarded", Handler{}, "PUT", []string{"X-HTTP-Method-Override: GET"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"two methods", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT", "X-HTTP-Method: DELETE"}, http.StatusBadRequest, problemInvalidMethodOverride},
		{"not a method", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT, DELETE"}, http.StatusBadRequest, problemInvalidMethodOverride},
		{"valid write", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT", "If-Match: " + tag}, http.StatusOK, ""},
		{"custom field", Handler{MethodOverride: []string{"x-tunnel-method"}}, "POST", []string{"X-Tunnel-Method: PUT"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"custom field replaces defaults", Handler{MethodOverride: []string{"X-Tunnel-Method"}}, "POST", []string{"X-HTTP-Method-Override: PUT"}, http.StatusOK, ""},
		{"off", Handler{MethodOverrideOff: true}, "POST", []string{"X-HTTP-Method-Override: PUT"}, http.StatusOK, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			store.Put("/doc", []byte("v1"))
			cfg := c.cfg
			h := newTestHandler(t, &cfg)
			w := serve(t, h, storeHandler(store), c.method, "/doc", "new", c.headers...)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			if c.problem != "" && problemType(t, w.Body.Bytes()) != c.problem {
				t.Errorf("problem %s, want %s", w.Body, c.problem)
			}
			if c.problem != "" && mustGet(t, store, "/doc") != "v1" {
				t.Error("a refused request changed the backend")
			}
		})
	}
}

// A version check is a read: it must not carry a _method parameter that a
// backend would apply.
func TestProbeDropsMethodParameter(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	var probed []string
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodHead {
			probed = append(probed, r.URL.RawQuery)
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{Key: "{http.request.host}{http.request.uri}"})
	serve(t, h, next, "POST", "/doc?id=1&_method=DELETE&x=2", "", `If-Match: "old"`)
	if len(probed) != 1 || probed[0] != "id=1&x=2" {
		t.Errorf("version checks sent with queries %q, want [id=1&x=2]", probed)
	}
}

// reverse_proxy writes the request's variables and its transport reads them
// from a dialing goroutine that can outlive the request: a version check
// must have variables of its own, carrying what earlier handlers set.
func TestProbeHasItsOwnVariables(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	seen := map[string]map[string]any{}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
		seen[r.Method] = vars
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	req := httptest.NewRequest("PUT", "http://example.com/doc", strings.NewReader("v2"))
	req.Header.Set("If-Match", store.ETagOf([]byte("v1")))
	rec := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
	caddyhttp.SetVar(req.Context(), "upstream", "primary")
	if err := h.ServeHTTP(rec, req, next); err != nil || rec.Code != 200 {
		t.Fatalf("PUT: %d %v", rec.Code, err)
	}
	probe, write := seen[http.MethodHead], seen[http.MethodPut]
	if probe == nil || write == nil {
		t.Fatalf("variables seen: %v", seen)
	}
	if reflect.ValueOf(probe).Pointer() == reflect.ValueOf(write).Pointer() {
		t.Error("the version check shares the write's variables")
	}
	if probe["upstream"] != "primary" {
		t.Errorf("the version check lost the variables set before it: %v", probe)
	}
}
