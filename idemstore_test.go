package writeguard

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
	"github.com/writeguard/caddy-writeguard/redisstore"
)

func redisIdemHandler(t *testing.T, srv *redistest.Server, onStoreError string) *Handler {
	t.Helper()
	return newTestHandler(t, &Handler{
		Store:        &StoreConfig{Backend: "redis", Addresses: []string{srv.Addr}, Timeout: caddy.Duration(200 * time.Millisecond)},
		OnStoreError: onStoreError,
		Idempotency:  &IdempotencyConfig{ClaimTTL: caddy.Duration(time.Second)},
	})
}

// With store redis, two instances (two handlers, two clients of one
// Redis) answer each other's retries.
func TestIdemRedisSharedAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	a, b := redisIdemHandler(t, srv, ""), redisIdemHandler(t, srv, "")
	// Two clients, as two processes would have.
	b.idem.store = &idemFailover{redis: redisClient(t, srv).Idempotency(time.Second), logger: b.logger}

	o := &orders{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- serve(t, a, o, "POST", "/orders", "x", key1) }()
	<-o.entered
	if w := serve(t, b, o, "POST", "/orders", "x", key1); w.Code != http.StatusConflict || problemOfRecorder(t, w) != problemIdemInFlight {
		t.Fatalf("retry through the other instance while in flight: %d %s", w.Code, w.Body)
	}
	close(o.hold)
	first := <-done
	w := serve(t, b, o, "POST", "/orders", "x", key1)
	if w.Code != http.StatusCreated || w.Body.String() != first.Body.String() || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry through the other instance: %d %v %q", w.Code, w.Header(), w.Body)
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
}

// Redis unreachable: on_store_error fail refuses keyed requests with 503
// and forwards nothing; local serves them with records in this process.
func TestIdemRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	fail, local := redisIdemHandler(t, srv, "fail"), redisIdemHandler(t, srv, "local")
	srv.Stop()
	o := &orders{}
	w := serve(t, fail, o, "POST", "/orders", "x", `Idempotency-Key: "down-fail"`)
	if w.Code != http.StatusServiceUnavailable || problemOfRecorder(t, w) != problemStoreUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("on_store_error fail: %d %s", w.Code, w.Body)
	}
	if n := o.created.Load(); n != 0 {
		t.Fatalf("forwarded without a record: %d", n)
	}
	const key = `Idempotency-Key: "down-local"`
	if w := serve(t, local, o, "POST", "/orders", "x", key); w.Code != http.StatusCreated {
		t.Fatalf("on_store_error local: %d %s", w.Code, w.Body)
	}
	if w := serve(t, local, o, "POST", "/orders", "x", key); w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("on_store_error local, retry: %d %v", w.Code, w.Header())
	}
	if n := o.created.Load(); n != 1 {
		t.Fatalf("the backend created %d records", n)
	}
}

// redisClient is a client of srv of its own, as another process has.
func redisClient(t *testing.T, srv *redistest.Server) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(redisstore.Config{Addrs: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
