package writeguard

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// Method override fields cannot take a write past the guard.
func TestMethodOverride(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	tag := store.ETagOf([]byte("v1"))
	for _, c := range []struct {
		name    string
		cfg     Handler
		method  string
		headers []string
		status  int
		problem string
	}{
		{"POST as PUT, blind", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"POST as delete, stale", Handler{}, "POST", []string{"X-HTTP-Method: delete", `If-Match: "old"`}, http.StatusPreconditionFailed, problemPreconditionFailed},
		{"X-Method-Override", Handler{}, "POST", []string{"X-Method-Override: PATCH"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"GET as DELETE", Handler{}, "GET", []string{"X-HTTP-Method-Override: DELETE"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"PUT as GET stays guarded", Handler{}, "PUT", []string{"X-HTTP-Method-Override: GET"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"two methods", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT", "X-HTTP-Method: DELETE"}, http.StatusBadRequest, problemInvalidMethodOverride},
		{"not a method", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT, DELETE"}, http.StatusBadRequest, problemInvalidMethodOverride},
		{"valid write", Handler{}, "POST", []string{"X-HTTP-Method-Override: PUT", "If-Match: " + tag}, http.StatusOK, ""},
		{"custom field", Handler{MethodOverride: []string{"x-tunnel-method"}}, "POST", []string{"X-Tunnel-Method: PUT"}, http.StatusPreconditionRequired, problemPreconditionRequired},
		{"custom field replaces defaults", Handler{MethodOverride: []string{"X-Tunnel-Method"}}, "POST", []string{"X-HTTP-Method-Override: PUT"}, http.StatusOK, ""},
		{"off", Handler{MethodOverrideOff: true}, "POST", []string{"X-HTTP-Method-Override: PUT"}, http.StatusOK, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			store.Put("/doc", []byte("v1"))
			cfg := c.cfg
			h := newTestHandler(t, &cfg)
			w := serve(t, h, storeHandler(store), c.method, "/doc", "new", c.headers...)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			if c.problem != "" && problemType(t, w.Body.Bytes()) != c.problem {
				t.Errorf("problem %s, want %s", w.Body, c.problem)
			}
			if c.problem != "" && mustGet(t, store, "/doc") != "v1" {
				t.Error("a refused request changed the backend")
			}
		})
	}
}

// cgiStyleOverride applies X-HTTP-Method-Override the way Rack
// (Rack::MethodOverride, in Rails' default stack) sees it: header names
// become HTTP_* variables, upper-cased with "-" turned into "_", so
// X_HTTP_METHOD_OVERRIDE and X-HTTP-Method-Override are the same variable
// on servers that keep underscored fields (WEBrick, Unicorn, Thin, and Puma
// when no hyphenated twin is present).
func cgiStyleOverride(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for name, values := range r.Header {
			env := "HTTP_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
			if env == "HTTP_X_HTTP_METHOD_OVERRIDE" && r.Method == http.MethodPost && len(values) > 0 {
				r = r.Clone(r.Context())
				r.Method = strings.ToUpper(values[0])
				break
			}
		}
		s.ServeHTTP(w, r)
		return nil
	})
}

// Caddy drops header fields with underscores before any handler runs,
// unless the server lists them in expected_underscore_headers: a site that
// lists X_HTTP_METHOD_OVERRIDE for old clients hands it to the backend, and
// the guard must read it as the backend will.
func TestUnderscoredOverrideFieldIsGuarded(t *testing.T) {
	store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
	h := newTestHandler(t, &Handler{})
	w := serve(t, h, cgiStyleOverride(store), "POST", "/doc", "v2", "X_HTTP_METHOD_OVERRIDE: PUT")
	if w.Code != http.StatusPreconditionRequired {
		t.Errorf("blind POST with X_HTTP_METHOD_OVERRIDE: PUT: %d, want 428", w.Code)
	}
	if got := mustGet(t, store, "/doc"); got != "v1" {
		t.Errorf("the backend applied the overridden write unchecked: it holds %q", got)
	}
}

// phpQueryBackend honours a _method query parameter on POST as Laravel and
// Symfony (with method parameter override, Laravel's default) do after PHP
// has parsed the query: names are percent-decoded, leading spaces dropped,
// and "." and " " turned into "_". Express's methodOverride("_method")
// decodes names too.
func phpQueryBackend(s *backend.Store) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		q, _ := url.ParseQuery(r.URL.RawQuery)
		for name, values := range q {
			php := strings.NewReplacer(".", "_", " ", "_").Replace(strings.TrimLeft(name, " "))
			if php == "_method" && r.Method == http.MethodPost && len(values) > 0 {
				r = r.Clone(r.Context())
				r.Method = strings.ToUpper(values[0])
				break
			}
		}
		s.ServeHTTP(w, r)
		return nil
	})
}

// Unlike a form field, the query is read without touching the body, so a
// write renamed there is as visible to the guard as one renamed in a
// header field, whichever spelling of the name the backend decodes.
func TestMethodQueryParameterIsGuarded(t *testing.T) {
	for _, query := range []string{"?_method=PUT", "?%5Fmethod=PUT", "?%5fmethod=PUT", "?.method=PUT", "?_m%65thod=PUT"} {
		t.Run(query, func(t *testing.T) {
			store := newHashStore(backend.StrongETags, map[string]string{"/doc": "v1"})
			h := newTestHandler(t, &Handler{})
			w := serve(t, h, phpQueryBackend(store), "POST", "/doc"+query, "v2")
			if w.Code != http.StatusPreconditionRequired {
				t.Errorf("blind POST /doc%s: %d, want 428", query, w.Code)
			}
			if got := mustGet(t, store, "/doc"); got != "v1" {
				t.Errorf("the backend applied the renamed write unchecked: it holds %q", got)
			}
		})
	}
}
