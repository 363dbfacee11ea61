package integration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func init() {
	caddy.RegisterModule(panicHandler{})
	httpcaddyfile.RegisterHandlerDirective("test_panic", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		h.Next()
		return panicHandler{}, nil
	})
}

// panicHandler stands for a later handler with a bug: it panics on writes.
type panicHandler struct{}

func (panicHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.test_panic", New: func() caddy.Module { return panicHandler{} }}
}

func (panicHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method == http.MethodPut {
		panic("a later handler failed")
	}
	return next.ServeHTTP(w, r)
}

func (panicHandler) UnmarshalCaddyfile(*caddyfile.Dispenser) error { return nil }

// faultyBackend applies writes to store and then misbehaves as told by the
// X-Fault request header (which the guard passes on): "reset" drops the
// connection instead of answering, "slow" answers after a while.
func faultyBackend(store *backend.Store, slow time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fault := r.Header.Get("X-Fault")
		if r.Method != http.MethodPut || fault == "" {
			store.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		store.Put(r.URL.Path, body)
		switch fault {
		case "reset":
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		case "slow":
			select {
			case <-time.After(slow):
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusOK)
		}
	})
}

// TestFaults breaks writes in the ways upstreams and clients do. After each,
// the write may have been applied, so the version must be forgotten (a write
// with the tag from before must get 412), the client must be told, and the
// resource must be writable again at once.
func TestFaults(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v0", "/panic": "p0"})
	addr := startBackend(t, faultyBackend(store, 3*time.Second))
	startCaddy(t, fmtSite(`
	write_guard {
		lock_timeout 2s
		write_timeout 1s
	}
	route /panic {
		test_panic
	}
	@header_timeout header X-Proxy-Timeout *
	reverse_proxy @header_timeout %[1]s {
		transport http {
			response_header_timeout 300ms
		}
	}
	reverse_proxy %[1]s`, addr))
	client := &http.Client{Timeout: 30 * time.Second}

	for _, c := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"upstream resets the connection mid-write", []string{"X-Fault: reset"}, http.StatusBadGateway},
		{"upstream slower than its own timeout", []string{"X-Fault: slow", "X-Proxy-Timeout: 1"}, http.StatusGatewayTimeout},
		{"upstream slower than write_timeout", []string{"X-Fault: slow"}, http.StatusGatewayTimeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			stale := do(t, client, "GET", "/doc", "").header.Get("ETag")
			r := do(t, client, "PUT", "/doc", c.name, append([]string{"If-Match: " + stale}, c.headers...)...)
			if r.status != c.status {
				t.Fatalf("faulty write: %d, want %d (%s)", r.status, c.status, r.body)
			}
			if p := problemOf(t, r); !strings.HasSuffix(p.Type, "#upstream-failed") {
				t.Errorf("problem type %s", p.Type)
			}
			// The write was applied; the guard must not still believe the
			// version from before it.
			if r := do(t, client, "PUT", "/doc", "lost", "If-Match: "+stale); r.status != http.StatusPreconditionFailed {
				t.Errorf("write with the tag from before the fault: %d, want 412", r.status)
			}
			start := time.Now()
			current := do(t, client, "GET", "/doc", "").header.Get("ETag")
			if r := do(t, client, "PUT", "/doc", "after "+c.name, "If-Match: "+current); r.status != 200 {
				t.Errorf("next write: %d %s", r.status, r.body)
			}
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Logf("next write took %v", d) // a held lock would show as 409 after lock_timeout
			}
			assertNoLocks(t)
		})
	}

	t.Run("client gives up mid-write", func(t *testing.T) {
		current := do(t, client, "GET", "/doc", "").header.Get("ETag")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, caddyBase+"/doc", strings.NewReader("abandoned"))
		req.Header.Set("If-Match", current)
		req.Header.Set("X-Fault", "slow")
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("the write was answered %d before the client gave up", resp.StatusCode)
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("unexpected error: %v", err)
		}
		assertNoLocks(t)
		latest := do(t, client, "GET", "/doc", "").header.Get("ETag")
		if r := do(t, client, "PUT", "/doc", "after the abort", "If-Match: "+latest); r.status != 200 {
			t.Errorf("next write: %d %s", r.status, r.body)
		}
	})

	t.Run("a later handler panics", func(t *testing.T) {
		tag := do(t, client, "GET", "/panic", "").header.Get("ETag")
		for i := range 2 {
			// net/http answers a panicking handler by closing the
			// connection; a lock left held would answer 409 instead.
			req, _ := http.NewRequest(http.MethodPut, caddyBase+"/panic", strings.NewReader("x"))
			req.Header.Set("If-Match", tag)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusInternalServerError {
					t.Fatalf("write %d: %d, want the connection closed by the panic", i, resp.StatusCode)
				}
			}
		}
		assertNoLocks(t)
		if got := mustBody(t, store, "/panic"); got != "p0" {
			t.Errorf("the backend changed: %q", got)
		}
	})
}

// lateStore applies its first write long after the client (the guard) gave
// up on it, as a legacy backend that ignores a closed connection does.
// With gateway set it is a gateway in front of such a backend: it answers
// 504 at once and the backend applies the write later.
type lateStore struct {
	store   http.Handler
	delay   time.Duration
	gateway bool
	first   atomic.Bool
	applied chan struct{}
}

func (l *lateStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut || !l.first.CompareAndSwap(false, true) {
		l.store.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	apply := func() {
		time.Sleep(l.delay)
		replay, _ := http.NewRequest(http.MethodPut, r.URL.String(), strings.NewReader(string(body)))
		l.store.ServeHTTP(discardWriter{}, replay)
		close(l.applied)
	}
	if l.gateway {
		go apply()
		http.Error(w, "gateway timeout", http.StatusGatewayTimeout)
		return
	}
	apply()
}

// A write abandoned at write_timeout that the upstream applies later must
// not be overwritten by a write naming the version before it, even when a
// version check in between saw that older version.
func TestAbandonedWriteLandingLateIsNotOverwritten(t *testing.T) {
	for _, gateway := range []bool{false, true} {
		name := "abandoned at write_timeout"
		if gateway {
			name = "answered 504 by a gateway upstream"
		}
		t.Run(name, func(t *testing.T) { testLateWrite(t, gateway) })
	}
}

func testLateWrite(t *testing.T, gateway bool) {
	store := newStore(map[string]string{"/doc": `{"v":0}`})
	late := &lateStore{store: store, delay: 1500 * time.Millisecond, gateway: gateway, applied: make(chan struct{})}
	startCaddy(t, fmtSite("\twrite_guard {\n\t\twrite_timeout 300ms\n\t}\n\treverse_proxy %s\n", startBackend(t, late)))
	client := &http.Client{}

	read := do(t, client, http.MethodGet, "/doc", "")
	v0 := read.header.Get("Etag")

	// Abandoned: the client gets 504; the upstream applies it later.
	if r := do(t, client, http.MethodPut, "/doc", `{"v":"late"}`, "If-Match: "+v0); r.status != http.StatusGatewayTimeout {
		t.Fatalf("abandoned write: %d %s, want 504", r.status, r.body)
	}
	// A write with another tag is refused after a version check, which still
	// sees v0: the late write has not landed yet.
	if r := do(t, client, http.MethodPut, "/doc", `{"v":"x"}`, `If-Match: "other"`); r.status != http.StatusPreconditionFailed {
		t.Fatalf("write naming another version: %d %s, want 412", r.status, r.body)
	}
	// The version check taught the cache the version before the late write
	// (ristretto stores a new key asynchronously: wait for it).
	waitLearned(t, "*/doc")
	select {
	case <-late.applied:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never applied the late write")
	}
	// Naming v0 now would overwrite the late change.
	r := do(t, client, http.MethodPut, "/doc", `{"v":"stale"}`, "If-Match: "+v0)
	if r.status != http.StatusPreconditionFailed {
		t.Fatalf("write naming the version before the late write: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/doc"); got != `{"v":"late"}` {
		t.Fatalf("backend holds %s, want the late write", got)
	}
}

// A write abandoned under one key, and a reload that changes the key while
// the upstream still works on it: the resource must stay checked against
// the upstream under its new key, or a version learned before the late
// write lands lets a write naming it overwrite the late change.
func TestAbandonedWriteSurvivesKeyChangingReload(t *testing.T) {
	store := newStore(map[string]string{"/doc": `{"v":0}`})
	late := &lateStore{store: store, delay: 1500 * time.Millisecond, gateway: true, applied: make(chan struct{})}
	addr := startBackend(t, late)
	tester := startCaddy(t, fmtSite("\twrite_guard {\n\t\twrite_timeout 300ms\n\t}\n\treverse_proxy %s\n", addr))
	client := &http.Client{}

	v0 := do(t, client, http.MethodGet, "/doc", "").header.Get("Etag")
	if r := do(t, client, http.MethodPut, "/doc", `{"v":"late"}`, "If-Match: "+v0); r.status != http.StatusGatewayTimeout {
		t.Fatalf("abandoned write: %d %s, want 504", r.status, r.body)
	}

	// The key changes; a read under the new key sees the version before
	// the late write.
	tester.InitServer(keyedConfig(addr, "\t\twrite_timeout 300ms\n"+pathKey, "1ns"), "caddyfile")
	do(t, client, http.MethodGet, "/doc", "")
	waitLearned(t, "/doc")
	select {
	case <-late.applied:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never applied the late write")
	}
	r := do(t, client, http.MethodPut, "/doc", `{"v":"stale"}`, "If-Match: "+v0)
	if got := mustBody(t, store, "/doc"); r.status != http.StatusPreconditionFailed || got != `{"v":"late"}` {
		t.Fatalf("write naming the version before the late write, under the new key: %d, backend holds %s; want 412 and the late write kept", r.status, got)
	}
}
