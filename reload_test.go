package writeguard

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// Two configurations that name one resource differently, both serving (a
// reload's overlap): their writes of it are serialized, and of two writes
// naming the same version one reaches the backend.
func TestOverlappingNamingsAreFenced(t *testing.T) {
	reg := new(configRegistry)
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	store.WriteDelay = 100 * time.Millisecond
	old := newTestHandler(t, &Handler{reg: reg, Key: "{http.request.uri.path}"})
	renamed := newTestHandler(t, &Handler{reg: reg})
	tag := store.ETagOf([]byte("v1"))

	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i, h := range []*Handler{old, renamed} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+tag).Code
		}()
	}
	wg.Wait()
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes overlapped at the backend", n)
	}
	if (codes[0] == 200) == (codes[1] == 200) || codes[0]+codes[1] != 200+http.StatusPreconditionFailed {
		t.Errorf("answers %v, want one 200 and one 412", codes)
	}
}

// A guard nested in another one's route, while configurations overlap,
// does not wait for the fence the outer guard holds.
func TestNestedGuardsShareTheFence(t *testing.T) {
	reg := new(configRegistry)
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	inner := newTestHandler(t, &Handler{reg: reg, Key: "{http.request.uri.path}", LockTimeout: caddy.Duration(300 * time.Millisecond)})
	outer := newTestHandler(t, &Handler{reg: reg})
	if !reg.overlap.Load() {
		t.Fatal("two live configurations, but no overlap")
	}
	through := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return inner.ServeHTTP(w, r, storeHandler(store))
	})
	if w := serve(t, outer, through, "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != 200 {
		t.Fatalf("nested guards during an overlap: %d %s", w.Code, w.Body)
	}
}

// A stopped configuration stops counting once its writes are done, and the
// namings in use then decide again whether writes trust the cache.
func TestStoppedConfigurationLeaves(t *testing.T) {
	reg := new(configRegistry)
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	ctx, cancel := newCaddyContext()
	old := &Handler{reg: reg, abandoned: new(abandonedWrites), Key: "{http.request.uri.path}", CacheSize: 1000}
	if err := old.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer old.Cleanup()
	renamed := newTestHandler(t, &Handler{reg: reg})
	serve(t, old, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1")))
	serve(t, renamed, storeHandler(store), "PUT", "/doc", "v3", "If-Match: "+store.ETagOf([]byte("v2")))
	if !renamed.unsettled.Load() || !old.unsettled.Load() {
		t.Fatal("two serving configurations name /doc differently, but their writes trust the cache")
	}
	cancel()
	for deadline := time.Now().Add(5 * time.Second); reg.overlap.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stopped configuration never left")
		}
	}
	if renamed.unsettled.Load() {
		t.Error("the one configuration left still does not trust its cache")
	}
}
