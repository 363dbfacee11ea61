package writeguard

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// resourceKey names the resource r targets. Requests with equal keys share
// a lock and a cached version.
func (h *Handler) resourceKey(r *http.Request) string {
	if h.Key != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl != nil {
			return repl.ReplaceAll(h.Key, "")
		}
	}
	return canonicalHost(r.Host) + r.URL.Path
}

// canonicalHost lower-cases host and drops a default port, so that
// "Example.com:443" and "example.com" name the same site.
func canonicalHost(host string) string {
	host = strings.TrimSuffix(strings.TrimSuffix(host, ":443"), ":80")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}
