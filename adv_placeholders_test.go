package writeguard

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// The guard's placeholders are strings to every consumer Caddy has: the
// replacer, log_append, and the CEL of `expression` matchers, with which a
// site's handle_errors picks its answer to a refusal.
func TestAdvPlaceholdersInExpressionMatchers(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{Refusals: "handle_errors"})

	req := httptest.NewRequest("PUT", "http://example.com/doc", strings.NewReader("v2"))
	req.Header.Set("If-Match", `"old"`)
	w := httptest.NewRecorder()
	repl := caddy.NewReplacer()
	req = caddyhttp.PrepareRequest(req, repl, w, nil)
	err := h.ServeHTTP(w, req, storeHandler(store))
	if he, ok := err.(caddyhttp.HandlerError); !ok || he.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("stale write: %v", err)
	}
	tag := store.ETagOf([]byte("v1"))

	ctx, cancel := newCaddyContext()
	defer cancel()
	for _, expr := range []string{
		`{http.write_guard.outcome} == "stale"`,
		`{http.write_guard.key} == "example.com/doc"`,
		`{http.write_guard.key}.startsWith("example.com")`,
		`{http.write_guard.etag} == '` + tag + `'`,
	} {
		m := &caddyhttp.MatchExpression{Expr: expr}
		if err := m.Provision(ctx); err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		ok, err := m.MatchWithError(req)
		if err != nil || !ok {
			t.Errorf("%s: matched %v, error %v", expr, ok, err)
		}
	}
	for name, want := range map[string]string{
		"http.write_guard.outcome": "stale",
		"http.write_guard.key":     "example.com/doc",
		"http.write_guard.etag":    tag,
	} {
		if got, _ := repl.GetString(name); got != want {
			t.Errorf("{%s} = %q, want %q", name, got, want)
		}
	}
}

// A write let through, with an Idempotency-Key, shows its outcome and its
// idempotency result to expression matchers as strings too.
func TestAdvAllowedAndIdempotencyPlaceholdersInExpressions(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := idemHandler(t, nil)
	req := httptest.NewRequest("PUT", "http://example.com/doc", strings.NewReader("v2"))
	req.Header.Set("If-Match", store.ETagOf([]byte("v1")))
	req.Header.Set("Idempotency-Key", `"k-allowed"`)
	w := httptest.NewRecorder()
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil)
	if err := h.ServeHTTP(w, req, storeHandler(store)); err != nil || w.Code != http.StatusOK {
		t.Fatalf("write: %d %v", w.Code, err)
	}
	ctx, cancel := newCaddyContext()
	defer cancel()
	for _, expr := range []string{
		`{http.write_guard.outcome} == "allowed"`,
		`{http.write_guard.idempotency} == "new"`,
	} {
		m := &caddyhttp.MatchExpression{Expr: expr}
		if err := m.Provision(ctx); err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if ok, err := m.MatchWithError(req); err != nil || !ok {
			t.Errorf("%s: matched %v, error %v", expr, ok, err)
		}
	}
}
