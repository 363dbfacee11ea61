package writeguard

import (
	"net/http"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

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
