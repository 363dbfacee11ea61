package writeguard

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
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
//     "*", never by the Host field, which its clients choose freely;
//   - a handler in a named route serves the sites that invoke it;
//   - a handler that cannot be found in its server's routes keys by the
//     request's host.

// site is what the routes leading to one handler in one server say about
// the hosts it serves.
type site struct {
	// names maps each canonical exact host name to the name of its site:
	// the site's first exact host name.
	names map[string]string
	// catchAll: a route without host matchers leads to the handler.
	catchAll bool
}

// catchAllSite names the resources of sites that match every host. It is
// the same whatever port the site listens on: one site block on two ports is
// one site, and instances sharing Redis may listen on other ports.
const catchAllSite = "*"

// siteOf returns the site identity that the default key uses for r.
func (h *Handler) siteOf(r *http.Request) string {
	host := reskey.HostName(r.Host)
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return host
	}
	s := h.sites.lookup(srv, h)
	if name, ok := s.names[host]; ok {
		return name
	}
	if s.catchAll {
		return catchAllSite
	}
	return host
}

// siteNames returns site, the site of r, then the other names it has in
// r's server: what must still find the site when a reload puts another of
// its names first.
func (h *Handler) siteNames(r *http.Request, site string) []string {
	names := []string{site}
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || site == catchAllSite {
		return names
	}
	for host, name := range h.sites.lookup(srv, h).names {
		if name == site && host != site {
			names = append(names, host)
		}
	}
	return names
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
		s = findSite(srv, h)
		if c.by == nil {
			c.by = make(map[*caddyhttp.Server]*site)
		}
		c.by[srv] = s
	}
	c.last.Store(&serverSite{srv: srv, site: s})
	return s
}

// findSite looks for h in srv's routes and returns the site they make it
// serve. A handler in a named route serves the sites that invoke it.
func findSite(srv *caddyhttp.Server, h *Handler) *site {
	s := &site{names: map[string]string{}}
	if hosts, found := hostsLeadingTo(srv.Routes, h, nil); found {
		s.add(hosts)
		return s
	}
	if srv.Errors != nil {
		if hosts, found := hostsLeadingTo(srv.Errors.Routes, h, nil); found {
			s.add(hosts)
			return s
		}
	}
	for name, route := range srv.NamedRoutes {
		if _, found := hostsLeadingTo(caddyhttp.RouteList{*route}, h, nil); found {
			for _, hosts := range invokers(srv.Routes, name, nil, nil) {
				s.add(hosts)
			}
		}
	}
	return s
}

// describe writes the site down, the same for equal sites.
func (s *site) describe() string {
	pairs := make([]string, 0, len(s.names)+1)
	for host, name := range s.names {
		pairs = append(pairs, strconv.Quote(host)+"="+strconv.Quote(name))
	}
	sort.Strings(pairs)
	if s.catchAll {
		pairs = append(pairs, catchAllSite)
	}
	return strings.Join(pairs, ",")
}

// add takes in the host names of one site leading to the handler.
func (s *site) add(hosts []string) {
	if len(hosts) == 0 {
		s.catchAll = true
		return
	}
	first := ""
	for _, host := range hosts {
		if strings.ContainsAny(host, "*{") {
			continue
		}
		if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
			host = "[" + host + "]" // an IPv6 literal, as a Host field writes it
		}
		host = reskey.HostName(host)
		if first == "" {
			first = host
		}
		if _, taken := s.names[host]; !taken {
			s.names[host] = first
		}
	}
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

// invokers returns, for every invoke of the named route in routes, the
// host names of the innermost route leading to it that matches on hosts.
func invokers(routes caddyhttp.RouteList, name string, outer []string, found [][]string) [][]string {
	for _, route := range routes {
		hosts := outer
		if own := routeHosts(route); len(own) > 0 {
			hosts = own
		}
		for _, handler := range route.Handlers {
			switch handler := handler.(type) {
			case *caddyhttp.Invoke:
				if handler.Name == name {
					found = append(found, hosts)
				}
			case *caddyhttp.Subroute:
				found = invokers(handler.Routes, name, hosts, found)
			}
		}
	}
	return found
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

// siteNameOf returns the name of the site that serves host, as the live
// configurations' guards have found it: the admin API takes any of a site's
// names for the site.
func (reg *configRegistry) siteNameOf(host string) (string, bool) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	for _, cfg := range reg.live {
		for _, h := range cfg.handlers {
			if name, ok := h.sites.nameOf(host); ok {
				return name, true
			}
		}
	}
	return "", false
}

func (c *siteCache) nameOf(host string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.by {
		if name, ok := s.names[host]; ok {
			return name, true
		}
	}
	return "", false
}

// scopeOf describes the routes of the site that leads to h in srv: their
// matchers and the modules they run, not the modules' settings. A reload
// that changes them may have let writes of the site's resources bypass the
// guard (a path no longer guarded, a route put in front of it), so it
// counts as a change in how resources are named (reload.go).
func scopeOf(srv *caddyhttp.Server, h *Handler) string {
	var b strings.Builder
	for _, route := range srv.Routes {
		if _, found := hostsLeadingTo(caddyhttp.RouteList{route}, h, nil); found {
			describeRoutes(&b, caddyhttp.RouteList{route})
			break
		}
	}
	return b.String()
}

func describeRoutes(b *strings.Builder, routes caddyhttp.RouteList) {
	for _, route := range routes {
		b.WriteString("(")
		for _, set := range route.MatcherSets {
			for _, m := range set {
				raw, err := json.Marshal(m)
				if err != nil {
					raw = nil
				}
				fmt.Fprintf(b, "%T%s;", m, raw)
			}
			b.WriteString("|")
		}
		for _, handler := range route.Handlers {
			b.WriteString(caddy.GetModuleName(handler))
			switch handler := handler.(type) {
			case *caddyhttp.Subroute:
				describeRoutes(b, handler.Routes)
			case *caddyhttp.Invoke:
				b.WriteString(strconv.Quote(handler.Name))
			}
			b.WriteString(",")
		}
		b.WriteString(")")
	}
}
