package integration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
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

// TestStopDuringWrites stops the server (by loading a config without it)
// while writers are busy: in-flight writes finish within the grace period,
// and none of the acknowledged ones is lost.
func TestStopDuringWrites(t *testing.T) {
	resources := []string{"/stop/a", "/stop/b"}
	store := hotStore(resources)
	store.WriteDelay = 20 * time.Millisecond
	addr := startBackend(t, store)
	tester := startCaddy(t, fmtSite("write_guard\n\treverse_proxy %s", addr))
	tester.InitServer(strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1)+
		fmtSite(":9080 {\n\twrite_guard\n\treverse_proxy %s\n}\n", addr), "caddyfile")

	wl := &workload{
		base: caddyBase, resources: resources,
		clients: 6, perClient: 1000, think: time.Millisecond,
		deadline: time.Now().Add(2 * time.Second),
	}
	var done sync.WaitGroup
	done.Go(func() { wl.run(t) })
	time.Sleep(500 * time.Millisecond)
	tester.InitServer(strings.Replace(globalOptions, "grace_period 1ns", "grace_period 10s", 1)+":9081 {\n\trespond 404\n}\n", "caddyfile")
	done.Wait()

	lost, acked := wl.lost(t, store)
	t.Logf("%d writes acknowledged before and during the stop, %d lost, %d refused, %d failed", acked, lost, wl.refused.Load(), wl.errors.Load())
	if lost != 0 {
		t.Errorf("%d acknowledged writes lost", lost)
	}
	if acked == 0 {
		t.Error("no write was acknowledged before the stop")
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes overlapped at the backend", n)
	}
}
