package writeguard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func TestProbeIsAPlainHead(t *testing.T) {
	var seen *http.Request
	var body []byte
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodHead {
			seen = r
			body, _ = io.ReadAll(r.Body)
			w.Header().Set("ETag", `"cur"`)
			return nil
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	w := serve(t, h, next, "PUT", "/doc", "payload", `If-Match: "cur"`, "Authorization: Bearer x", "Cookie: s=1",
		"Content-Type: text/plain", "Expect: 100-continue", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT")
	if w.Code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	if seen == nil {
		t.Fatal("no probe")
	}
	for _, f := range []string{"If-Match", "If-Unmodified-Since", "Content-Type", "Expect"} {
		if seen.Header.Get(f) != "" {
			t.Errorf("probe carried %s", f)
		}
	}
	if seen.Header.Get("Authorization") == "" || seen.Header.Get("Cookie") == "" {
		t.Error("probe must carry the client's credentials")
	}
	if len(body) != 0 || seen.ContentLength != 0 {
		t.Errorf("probe carried a body: %q", body)
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

// overrideHonouring is a backend that applies the method named in
// X-HTTP-Method-Override whatever the request's own method, as the guard's
// own override handling assumes a backend may (it guards "GET as DELETE").
func overrideHonouring(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if m := r.Header.Get("X-HTTP-Method-Override"); m != "" {
			r = r.Clone(r.Context())
			r.Method = strings.ToUpper(m)
		}
		s.ServeHTTP(w, r)
		return nil
	})
}

// The version check is a read: it must not carry the fields through which
// the client asked the backend to apply a write, or the check itself
// performs the write before its precondition is evaluated.
func TestProbeDropsMethodOverrideFields(t *testing.T) {
	for _, mode := range []string{"upstream", "hash"} {
		t.Run(mode, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{ETags: mode})
			w := serve(t, h, overrideHonouring(store), "POST", "/doc", "", "X-HTTP-Method-Override: DELETE", `If-Match: "stale"`)
			if w.Code != http.StatusPreconditionFailed {
				t.Fatalf("stale overridden DELETE: %d %s", w.Code, w.Body)
			}
			if _, ok := store.Get("/doc"); !ok {
				t.Fatal("a write refused with 412 deleted the resource: the version check carried X-HTTP-Method-Override")
			}
		})
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
	req := newRequest("PUT", "/doc", strings.NewReader("v2"), "If-Match: "+store.ETagOf([]byte("v1")))
	rec := httptest.NewRecorder()
	// An earlier handler of the route (Caddy's vars) sets a variable.
	earlier := caddyhttp.VarsMiddleware{"upstream": "primary"}
	err := serveTo(rec, req, earlier, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return h.ServeHTTP(w, r, next)
	}))
	if err != nil || rec.Code != 200 {
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

// reverse_proxy panics with http.ErrAbortHandler when the upstream's body
// breaks off after the header was passed on; net/http then drops the
// client's connection without an answer.
func TestHashedProbeOfBrokenBodyAnswersTheWrite(t *testing.T) {
	store := newHashStore(backend.NoETags, map[string]string{"/doc": "v1"})
	var mu sync.Mutex
	broken := false
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		b := broken
		mu.Unlock()
		if r.Method == http.MethodGet && b {
			w.WriteHeader(200)
			w.Write([]byte("v"))
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{ETags: "hash"})
	tag := hashTag("v1")

	t.Run("before the write", func(t *testing.T) {
		mu.Lock()
		broken = true
		mu.Unlock()
		w, p := serveCatching(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag)
		if p != nil {
			t.Fatalf("the version check's failure escaped as a panic (%v): the client gets no answer instead of 502", p)
		}
		if w.Code != http.StatusBadGateway {
			t.Errorf("status %d, want 502", w.Code)
		}
	})
	t.Run("after the write", func(t *testing.T) {
		mu.Lock()
		broken = false
		mu.Unlock()
		serve(t, h, next, "GET", "/doc", "")
		h.cache.Wait()
		mu.Lock()
		broken = true
		mu.Unlock()
		w, p := serveCatching(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag)
		if p != nil {
			t.Fatalf("the write was applied (backend holds %q) but its client gets no answer: %v", mustGet(t, store, "/doc"), p)
		}
		if w.Code != 200 {
			t.Errorf("status %d, want 200", w.Code)
		}
	})
}
