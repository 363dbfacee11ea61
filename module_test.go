package writeguard

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Handler
		err  string
	}{
		{name: "defaults", h: Handler{}},
		{name: "GET is not a write", h: Handler{Methods: []string{"PUT", "get"}}, err: "GET is not a write"},
		{name: "bad blind in JSON", h: Handler{Blind: "teapot"}, err: "blind"},
		{name: "bad etag_match in JSON", h: Handler{ETagMatch: "weak"}, err: "etag_match"},
		{name: "both cache bounds", h: Handler{CacheSize: 5000, CacheBytes: 1 << 20}, err: "exclusive"},
		{name: "negative max_body", h: Handler{MaxBody: -1}, err: "max_body"},
		{name: "bad etags in JSON", h: Handler{ETags: "weak"}, err: "etags"},
		{name: "bad revalidate in JSON", h: Handler{Revalidate: "never"}, err: "revalidate"},
		{name: "hash_max_body with etags upstream", h: Handler{ETags: "upstream", HashMaxBody: 1 << 20}, err: "does not apply with etags upstream"},
		{name: "hash_max_body with etags auto", h: Handler{HashMaxBody: 1 << 20}},
		{name: "bad read_freshness in JSON", h: Handler{ReadFreshness: "max-age=60"}, err: "read_freshness"},
		{name: "etags hash", h: Handler{ETags: "hash", HashMaxBody: 1 << 20, Revalidate: "always"}},
		{name: "bad key_trailing_slash in JSON", h: Handler{KeyTrailingSlash: "strip"}, err: "key_trailing_slash"},
		{name: "method_override both listed and off", h: Handler{MethodOverride: []string{"X-M"}, MethodOverrideOff: true}, err: "method_override"},
		{name: "bad method_override in JSON", h: Handler{MethodOverride: []string{"X M"}}, err: "method_override"},
		{name: "negative max_waiters", h: Handler{MaxWaiters: -1}, err: "max_waiters"},
		{name: "store redis", h: Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{"127.0.0.1:1"}}, OnStoreError: "local"}},
		{name: "store redis without address", h: Handler{Store: &StoreConfig{Backend: "redis"}}, err: "at least one address"},
		{name: "store redis bad address", h: Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{"redis"}}}, err: "address"},
		{name: "store redis db with Cluster", h: Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{"a:1", "b:1"}, DB: 1}}, err: "db"},
		{name: "store redis tls options without tls", h: Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{"a:1"}, TLSServerName: "x"}}, err: "need tls"},
		{name: "store redis short lock_ttl", h: Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{"a:1"}, LockTTL: caddy.Duration(time.Millisecond)}}, err: "lock_ttl"},
		{name: "store redis brace in prefix", h: Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{"a:1"}, KeyPrefix: "{x}"}}, err: "brace"},
		{name: "on_store_error without redis", h: Handler{OnStoreError: "local"}, err: "only with store redis"},
		{name: "store memory with Redis options", h: Handler{Store: &StoreConfig{Backend: "memory", Addresses: []string{"a:1"}}}, err: "Redis options"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			err := h.Provision(ctx)
			if err == nil {
				err = h.Validate()
			}
			defer h.Cleanup()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// upperCasingBackend reads the method case-insensitively, as Django
// (environ["REQUEST_METHOD"].upper()), Werkzeug/Flask, Symfony/Laravel
// (strtoupper) and the WordPress REST API do: "put" is PUT to them, and
// Go's server and Caddy pass "put" through as a valid token.
func upperCasingBackend(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		r = r.Clone(r.Context())
		r.Method = strings.ToUpper(r.Method)
		s.ServeHTTP(w, r)
		return nil
	})
}

func TestLowerCaseMethodIsGuarded(t *testing.T) {
	for _, method := range []string{"put", "Delete", "pAtCh"} {
		t.Run(method, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{})
			w := serve(t, h, upperCasingBackend(store), method, "/doc", `{"v":2}`)
			if w.Code != http.StatusPreconditionRequired {
				t.Errorf("blind %s: %d, want 428", method, w.Code)
			}
			if store.Writes() != 0 {
				t.Errorf("a blind %s reached the backend unchecked", method)
			}
		})
	}
}

// A method the guard lets through can still change the resource.
func TestUnguardedWriteForgetsVersion(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	withPost := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			store.Put(r.URL.Path, body)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	serve(t, h, withPost, "GET", "/doc", "")
	h.cache.Wait()
	serve(t, h, withPost, "POST", "/doc", "posted")
	h.cache.Wait()
	if w := serve(t, h, withPost, "PUT", "/doc", "v3", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write based on the version before the POST: %d", w.Code)
	}
}

// An unguarded POST's change is visible to guarded writes as soon as its
// upstream answered.
func TestUnguardedWriteForgetsWhenUpstreamAnswers(t *testing.T) {
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	headerSent, finish := make(chan struct{}), make(chan struct{})
	slowPost := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodPost {
			store.Put(r.URL.Path, []byte("posted"))
			w.WriteHeader(http.StatusOK)
			close(headerSent)
			<-finish
			_, err := w.Write([]byte("done"))
			return err
		}
		store.ServeHTTP(w, r)
		return nil
	})
	h := newTestHandler(t, &Handler{})
	serve(t, h, slowPost, "GET", "/doc", "")
	h.cache.Wait()
	postDone := make(chan struct{})
	go func() {
		defer close(postDone)
		serve(t, h, slowPost, "POST", "/doc", "posted")
	}()
	<-headerSent
	h.cache.Wait()
	w := serve(t, h, slowPost, "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1")))
	close(finish)
	<-postDone
	if w.Code != http.StatusPreconditionFailed {
		t.Fatalf("write based on the version before the POST: %d", w.Code)
	}
}
