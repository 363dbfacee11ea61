package writeguard

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// writeVersions writes bodies to /doc one after the other, each with the
// previous body's tag, and fails the test unless every write succeeds.
func writeVersions(t *testing.T, h *Handler, next caddyhttp.Handler, store *backend.Store, bodies ...string) {
	t.Helper()
	for i := 1; i < len(bodies); i++ {
		if w := serve(t, h, next, "PUT", "/doc", bodies[i], "If-Match: "+store.ETagOf([]byte(bodies[i-1]))); w.Code != 200 {
			t.Fatalf("PUT %s: %d %s", bodies[i], w.Code, w.Body)
		}
		h.cache.Wait()
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

// A write that leaves the content as it was keeps its tag current.
func TestWriteThatKeepsTheTagDoesNotSupersedeIt(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{})
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
