package writeguard

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestSiteOf(t *testing.T) {
	h := &Handler{sites: new(siteCache)}
	other := &Handler{sites: new(siteCache)}
	nested := func(hosts ...string) caddyhttp.RouteList {
		return caddyhttp.RouteList{{
			MatcherSets: caddyhttp.MatcherSets{{caddyhttp.MatchHost(hosts)}},
			Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
				siteRoute(other),
				siteRoute(h),
			}}},
		}}
	}
	cases := []struct {
		name   string
		srv    *caddyhttp.Server
		host   string
		handle *Handler
		want   string
	}{
		{"first name for any name", &caddyhttp.Server{Listen: []string{":443"}, Routes: nested("Example.com", "www.example.com")}, "WWW.example.com:443", h, "example.com"},
		{"first name itself", &caddyhttp.Server{Listen: []string{":443"}, Routes: nested("example.com", "www.example.com")}, "example.com", h, "example.com"},
		{"other port dropped", &caddyhttp.Server{Listen: []string{"tcp/:8443"}, Routes: nested("example.com", "www.example.com")}, "www.example.com:8443", h, "example.com"},
		{"wildcard keeps the host", &caddyhttp.Server{Listen: []string{":443"}, Routes: nested("example.com", "*.example.com")}, "tenant.example.com", h, "tenant.example.com"},
		{"exact name beside a wildcard", &caddyhttp.Server{Listen: []string{":443"}, Routes: nested("*.example.com", "example.com")}, "example.com", h, "example.com"},
		{"catch-all ignores the host", &caddyhttp.Server{Listen: []string{":8080"}, Routes: caddyhttp.RouteList{siteRoute(h)}}, "invented.test", h, "*"},
		{"IPv6 literal among the names", &caddyhttp.Server{Listen: []string{":443"}, Routes: nested("localhost", "::1")}, "[::1]:443", h, "localhost"},
		{"named route, invoked by a site", &caddyhttp.Server{Listen: []string{":443"},
			NamedRoutes: map[string]*caddyhttp.Route{"guarded": {Handlers: []caddyhttp.MiddlewareHandler{h}}},
			Routes: caddyhttp.RouteList{
				{MatcherSets: caddyhttp.MatcherSets{{caddyhttp.MatchHost{"a.test", "www.a.test"}}}, Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Invoke{Name: "guarded"}}},
				{MatcherSets: caddyhttp.MatcherSets{{caddyhttp.MatchHost{"b.test"}}}, Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Invoke{Name: "guarded"}}},
			}}, "www.a.test", h, "a.test"},
		{"named route, invoked by a catch-all site", &caddyhttp.Server{Listen: []string{":443"},
			NamedRoutes: map[string]*caddyhttp.Route{"guarded": {Handlers: []caddyhttp.MiddlewareHandler{h}}},
			Routes:      caddyhttp.RouteList{{Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Invoke{Name: "guarded"}}}}}, "invented.test", h, "*"},
		{"innermost host matcher wins", &caddyhttp.Server{Listen: []string{":443"}, Routes: caddyhttp.RouteList{{
			MatcherSets: caddyhttp.MatcherSets{{caddyhttp.MatchHost{"outer.test", "inner.test"}}},
			Handlers:    []caddyhttp.MiddlewareHandler{&caddyhttp.Subroute{Routes: caddyhttp.RouteList{siteRoute(h, "inner.test", "alias.test")}}},
		}}}, "alias.test", h, "inner.test"},
		{"not in the routes: the request's host", &caddyhttp.Server{Listen: []string{":443"}, Routes: caddyhttp.RouteList{siteRoute(other, "example.com")}}, "Example.com:443", h, "example.com"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.handle.sites = new(siteCache)
			r := httptest.NewRequest("GET", "/doc", nil)
			r.Host = tc.host
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ServerCtxKey, tc.srv))
			if got := tc.handle.siteOf(r); got != tc.want {
				t.Errorf("siteOf = %q, want %q", got, tc.want)
			}
			// Found again from the cache.
			if got := tc.handle.siteOf(r); got != tc.want {
				t.Errorf("siteOf again = %q, want %q", got, tc.want)
			}
		})
	}
}

// A handler serving two servers keeps each server's site.
func TestSiteOfPerServer(t *testing.T) {
	h := &Handler{sites: new(siteCache)}
	a := &caddyhttp.Server{Listen: []string{":443"}, Routes: caddyhttp.RouteList{siteRoute(h, "a.test", "www.a.test")}}
	b := &caddyhttp.Server{Listen: []string{":8080"}, Routes: caddyhttp.RouteList{siteRoute(h)}}
	for range 2 {
		for _, tc := range []struct {
			srv        *caddyhttp.Server
			host, want string
		}{{a, "www.a.test", "a.test"}, {b, "www.a.test", "*"}} {
			r := httptest.NewRequest("GET", "/doc", nil)
			r.Host = tc.host
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ServerCtxKey, tc.srv))
			if got := h.siteOf(r); got != tc.want {
				t.Errorf("siteOf on %v = %q, want %q", tc.srv.Listen, got, tc.want)
			}
		}
	}
}
