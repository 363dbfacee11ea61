package writeguard

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/reskey"
)

// The default key names a resource by its site and its path. A site with
// several names (example.com, www.example.com) is one set of resources of one
// backend: keying by the name a client happened to use would give each
// resource one lock and one version per name, and two writes through two
// names would both pass. The site is found where Caddy defines it, in the
// host matchers of the routes that lead to the handler:
//
//   - a request for one of the site's exact names is keyed by the site's
//     first name, whichever name it used, without a port (as a host matcher
//     ignores the port, and as instances sharing Redis on other ports must
//     agree);
//   - a request matched only by a wildcard (*.example.com) or a placeholder
//     is keyed by its own host: subdomains of a wildcard site are most often
//     tenants whose resources must stay apart;
//   - a site without host matchers (a catch-all such as :8080) is keyed by
//     the server's listen addresses, never by the Host field, which its
//     clients choose freely; with store redis by "*", the same on every
//     instance whatever port it listens on;
//   - a handler that cannot be found in its server's routes (a named route
//     invoked from several sites) keys by the request's host.

// site is what the routes leading to one handler in one server say about
// the hosts it serves.
type site struct {
	// name identifies the site in keys: its first exact host name; the
	// listen addresses (or "*") for a catch-all site; "" when no exact name
	// is known.
	name string
	// names are the canonical exact host names that name stands for.
	names map[string]struct{}
	// catchAll: no host matcher leads to the handler.
	catchAll bool
}

// siteOf returns the site identity that the default key uses for r.
func (h *Handler) siteOf(r *http.Request) string {
	host := reskey.HostName(r.Host)
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return host
	}
	s := h.sites.lookup(srv, h)
	switch {
	case s.catchAll:
		return s.name
	case s.name != "":
		if _, ok := s.names[host]; ok {
			return s.name
		}
	}
	return host
}

// siteCache remembers each server's site of a handler: the routes do not
// change while the handler's configuration runs. A handler normally lives
// in one server, so the last one found is kept where a request reads it
// without a lock.
type siteCache struct {
	last atomic.Pointer[serverSite]
	mu   sync.Mutex
	by   map[*caddyhttp.Server]*site
}

type serverSite struct {
	srv  *caddyhttp.Server
	site *site
}

func (c *siteCache) lookup(srv *caddyhttp.Server, h *Handler) *site {
	if last := c.last.Load(); last != nil && last.srv == srv {
		return last.site
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.by[srv]
	if !ok {
		s = findSite(srv, h, h.redis != nil)
		if c.by == nil {
			c.by = make(map[*caddyhttp.Server]*site)
		}
		c.by[srv] = s
	}
	c.last.Store(&serverSite{srv: srv, site: s})
	return s
}

// findSite looks for h in srv's routes and returns the site they make it
// serve. shared: the keys are shared with other instances, whose catch-all
// sites may listen elsewhere.
func findSite(srv *caddyhttp.Server, h *Handler, shared bool) *site {
	hosts, found := hostsLeadingTo(srv.Routes, h, nil)
	if !found && srv.Errors != nil {
		hosts, found = hostsLeadingTo(srv.Errors.Routes, h, nil)
	}
	if !found {
		return &site{}
	}
	if len(hosts) == 0 {
		if shared {
			return &site{name: "*", catchAll: true}
		}
		return &site{name: strings.Join(srv.Listen, ","), catchAll: true}
	}
	s := &site{names: make(map[string]struct{}, len(hosts))}
	for _, host := range hosts {
		if strings.ContainsAny(host, "*{") {
			continue
		}
		host = reskey.HostName(host)
		if s.name == "" {
			s.name = host
		}
		s.names[host] = struct{}{}
	}
	return s
}

// hostsLeadingTo returns the host names of the innermost route on the way
// to target that matches on hosts (outer when none does), and whether
// target is in routes.
func hostsLeadingTo(routes caddyhttp.RouteList, target *Handler, outer []string) ([]string, bool) {
	for _, route := range routes {
		hosts := outer
		if own := routeHosts(route); len(own) > 0 {
			hosts = own
		}
		for _, handler := range route.Handlers {
			switch handler := handler.(type) {
			case *Handler:
				if handler == target {
					return hosts, true
				}
			case *caddyhttp.Subroute:
				if found, ok := hostsLeadingTo(handler.Routes, target, hosts); ok {
					return found, true
				}
				if handler.Errors != nil {
					if found, ok := hostsLeadingTo(handler.Errors.Routes, target, hosts); ok {
						return found, true
					}
				}
			}
		}
	}
	return nil, false
}

// routeHosts lists the host names route's matcher sets accept, in order.
func routeHosts(route caddyhttp.Route) []string {
	var hosts []string
	for _, set := range route.MatcherSets {
		for _, m := range set {
			switch m := m.(type) {
			case caddyhttp.MatchHost:
				hosts = append(hosts, m...)
			case *caddyhttp.MatchHost:
				hosts = append(hosts, *m...)
			}
		}
	}
	return hosts
}
