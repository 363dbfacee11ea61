package writeguard

import (
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// constantETagBackend names every version `"1"`: the kind of upstream whose
// tags make an operator switch to `etags hash`.
type constantETagBackend struct {
	mu   sync.Mutex
	body string
}

func (b *constantETagBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("ETag", `"1"`)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		io.WriteString(w, b.get())
	case http.MethodPut:
		data, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.body = string(data)
		b.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}
	return nil
}

func (b *constantETagBackend) get() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.body
}

// During a reload from `etags upstream` to `etags hash` both configurations
// run and, with the same cache settings, share one cache. What the old one
// learned is an upstream tag; the new one must not take it for one of its
// own, which is exactly the tag the switch was meant to stop trusting.
func TestHashModeDoesNotTrustUpstreamTagsFromSharedCache(t *testing.T) {
	be := &constantETagBackend{body: "v1"}
	old := newTestHandler(t, &Handler{})
	hashed := newTestHandler(t, &Handler{ETags: "hash"})
	if old.cache == hashed.cache {
		t.Error("a guard with etags hash shares its cache with one that trusts the upstream's tags")
	}
	// Clients A and B both read v1 through the old configuration.
	tag := serve(t, old, caddyhttp.HandlerFunc(be.ServeHTTP), "GET", "/reload-doc", "").Header().Get("Etag")
	old.cache.Wait()
	// B's write goes through; the upstream names v2 `"1"` too.
	if w := serve(t, old, caddyhttp.HandlerFunc(be.ServeHTTP), "PUT", "/reload-doc", "v2 by B", "If-Match: "+tag); w.Code != 200 {
		t.Fatalf("B's write: %d %s", w.Code, w.Body)
	}
	old.cache.Wait()
	// The new configuration takes over; A writes, based on v1.
	w := serve(t, hashed, caddyhttp.HandlerFunc(be.ServeHTTP), "PUT", "/reload-doc", "v3 by A", "If-Match: "+tag)
	if w.Code != http.StatusPreconditionFailed {
		t.Errorf("write naming an upstream tag under etags hash: %d, want 412; backend now holds %q (B's v2 lost)", w.Code, be.get())
	}
}
