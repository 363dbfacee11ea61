package writeguard

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/writeguard/caddy-writeguard/reskey"
)

// keyPlaceholders are the request placeholders a key template may use whose
// values have more than one spelling for one resource. Provision rewrites
// them to the guard's own placeholders, which carry the canonical form.
var keyPlaceholders = [...]struct{ request, canonical string }{
	{"{http.request.uri.path}", "{http.write_guard.path}"},
	{"{http.request.uri.query}", "{http.write_guard.query}"},
	{"{http.request.uri}", "{http.write_guard.uri}"},
	{"{http.request.host}", "{http.write_guard.host}"},
}

// canonicalKeyTemplate rewrites a key template to use canonical placeholders.
func canonicalKeyTemplate(template string) string {
	for _, p := range keyPlaceholders {
		template = strings.ReplaceAll(template, p.request, p.canonical)
	}
	return template
}

// resourceKey names the resource r targets. Requests with equal keys share
// a lock and a cached version, so spellings of one URL that backends resolve
// to one resource (//doc, /./doc, /%64oc, www.example.com/doc for a site
// named example.com and www.example.com) give one key.
func (h *Handler) resourceKey(r *http.Request) string {
	if h.keyTemplate != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl != nil {
			path := reskey.Path(r.URL.EscapedPath(), h.keyOptions)
			query := reskey.Query(r.URL.RawQuery)
			uri := path
			if query != "" {
				uri += "?" + query
			}
			repl.Set("http.write_guard.path", path)
			repl.Set("http.write_guard.query", query)
			repl.Set("http.write_guard.uri", uri)
			repl.Set("http.write_guard.host", reskey.HostName(r.Host))
			if h.keyHasSite {
				repl.Set("http.write_guard.site", h.siteOf(r))
			}
			return repl.ReplaceAll(h.keyTemplate, "")
		}
	}
	return h.siteOf(r) + reskey.Path(r.URL.EscapedPath(), h.keyOptions)
}

// learnsFrom reports whether a response to r describes the resource r's key
// names. A query often selects another representation, another record or an
// old revision (?format=xml, ?id=6, ?rev=1): unless the key includes the
// query, such a response is no evidence of the keyed resource's version, and
// neither is the outcome of a write to such a URL.
func (h *Handler) learnsFrom(r *http.Request) bool {
	// A bare "?" is no query. And a path with an encoded slash shares its
	// key with the path that has a slash there (most servers resolve the
	// decoded path), but some servers keep the two apart: its responses
	// teach the key nothing, and writes to it only make the key forget.
	return (h.keyHasQuery || r.URL.RawQuery == "") && !hasEncodedSlash(r.URL.RawPath)
}

func hasEncodedSlash(rawPath string) bool {
	return rawPath != "" && (strings.Contains(rawPath, "%2F") || strings.Contains(rawPath, "%2f"))
}
