package writeguard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// Two instances share Redis in front of an upstream with one tag for
// every version. Instance a found it out (a write to /r1) and tags the
// site's representations itself; instance b has not written since, and
// still hands clients the upstream's tag. A write through a made a new
// version of /r2, which Redis holds under the guard's tag: a client that
// read /r2 through b before that write, and writes now through b with the
// upstream's tag, names a version that no longer exists.
func TestAutoSwitchReachesOtherInstancesBeforeTheyLoseAnUpdate(t *testing.T) {
	route := func(string) string { return `"route"` }
	newUpstream := func() (caddyhttp.Handler, map[string]*taggedDoc) {
		docs := map[string]*taggedDoc{"/r1": newTaggedDoc("n=0", route), "/r2": newTaggedDoc("n=0", route)}
		for _, d := range docs {
			d.answerTag = true
		}
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return docs[r.URL.Path].ServeHTTP(w, r)
		}), docs
	}

	t.Run("control", func(t *testing.T) {
		next, docs := newUpstream()
		send := func(method, path, body, ifMatch string) *httptest.ResponseRecorder {
			w := httptest.NewRecorder()
			next.ServeHTTP(w, newRequest(method, path, strings.NewReader(body), "If-Match: "+ifMatch))
			return w
		}
		x := send("GET", "/r2", "", "").Header().Get("Etag")
		w := send("GET", "/r2", "", "").Header().Get("Etag")
		send("PUT", "/r2", "n=1 (w)", w)
		send("PUT", "/r2", "n=1 (x)", x)
		if got := docs["/r2"].current(); got != "n=1 (x)" {
			t.Fatalf("without the guard /r2 holds %q: the workload loses no update", got)
		}
	})

	t.Run("guard", func(t *testing.T) {
		srv := redistest.Start(t)
		// Caches of their own, as two processes have.
		a, _ := redisHandler(t, srv, &Handler{CacheSize: 10_001})
		b, _ := redisHandler(t, srv, &Handler{CacheSize: 10_002})
		next, docs := newUpstream()
		get := func(h *Handler, path string) string {
			t.Helper()
			w := serve(t, h, next, "GET", path, "")
			h.cache.Wait()
			return w.Header().Get("Etag")
		}
		put := func(h *Handler, path, body, ifMatch string) int {
			t.Helper()
			return serve(t, h, next, "PUT", path, body, "If-Match: "+ifMatch).Code
		}

		if code := put(a, "/r1", "n=1", get(a, "/r1")); code != http.StatusNoContent {
			t.Fatalf("write to /r1 through a: %d", code)
		}
		if !a.reused.untrusted("example.com") {
			t.Fatal("a did not find the constant tag out")
		}
		x := get(b, "/r2") // the upstream's tag, from b
		if code := put(a, "/r2", "n=1 (w)", get(a, "/r2")); code != http.StatusNoContent {
			t.Fatalf("W's write to /r2 through a: %d", code)
		}
		code := put(b, "/r2", "n=1 (x)", x)
		if code != http.StatusPreconditionFailed {
			t.Errorf("X's write through b naming the version W replaced: %d, want 412", code)
		}
		if got := docs["/r2"].current(); got != "n=1 (w)" {
			t.Errorf("/r2 holds %q: W's acknowledged write is lost", got)
		}
		// X does what the 412 says, through b: it reads again and gets a
		// tag it can write with, not the upstream's once more.
		again := get(b, "/r2")
		if again == x {
			t.Fatalf("b hands out the upstream's tag %s again: X can never write", x)
		}
		if code := put(b, "/r2", "n=2 (x)", again); code != http.StatusNoContent {
			t.Errorf("X's write after reading again through b: %d", code)
		}
	})
}

// An instance that starts after another switched the site (or this one,
// restarted) finds the switch in Redis before its first write there is
// decided, even for a resource whose version Redis does not hold: a client
// that read the upstream's tag before the switch must not write on it.
func TestAutoSwitchOutlivesARestartWithRedis(t *testing.T) {
	route := func(string) string { return `"route"` }
	docs := map[string]*taggedDoc{"/r1": newTaggedDoc("n=0", route), "/r2": newTaggedDoc("n=0", route)}
	for _, d := range docs {
		d.answerTag = true
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return docs[r.URL.Path].ServeHTTP(w, r)
	})
	srv := redistest.Start(t)
	a, _ := redisHandler(t, srv, &Handler{CacheSize: 10_001})
	// The client read /r2 before the switch.
	stale := serve(t, a, next, "GET", "/r2", "").Header().Get("Etag")
	a.cache.Wait()
	if code := serve(t, a, next, "PUT", "/r2", "n=1 (w)", "If-Match: "+stale).Code; code != http.StatusNoContent {
		t.Fatalf("W's write to /r2: %d", code)
	}
	if !a.reused.untrusted("example.com") {
		t.Fatal("the constant tag was not found out")
	}
	// Redis forgets /r2's version (it expired, or was evicted); a new
	// process starts with nothing in memory.
	for _, key := range []string{"example.com/r1", "example.com/r2"} {
		if err := a.store.shared().Forget(context.Background(), key); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := redisHandler(t, srv, &Handler{CacheSize: 10_002})
	if code := serve(t, b, next, "PUT", "/r2", "n=1 (stale)", "If-Match: "+stale).Code; code != http.StatusPreconditionFailed {
		t.Errorf("the stale write through the new process: %d, want 412", code)
	}
	if got := docs["/r2"].current(); got != "n=1 (w)" {
		t.Errorf("/r2 holds %q: W's acknowledged write is lost", got)
	}
	if got := b.reused.list(); len(got) != 1 || got[0].Seen != "store" || got[0].Key != "example.com/r2" {
		t.Errorf("evidence %+v, want the store's with its key", got)
	}
}
