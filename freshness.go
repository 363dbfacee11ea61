package writeguard

import (
	"net/http"
	"strings"
)

// A browser's fetch in its default cache mode, and many HTTP client
// libraries, keep a response that carries a validator but no freshness
// information (no Cache-Control, no Expires) and serve it again without
// asking, for a tenth of the time since its Last-Modified (heuristic
// freshness, RFC 9111 section 4.2.2). A 412 does not evict it: a client
// told to read again reads the version it was refused for, writes, is
// refused, and so on, while the cache says it is fresh. So the answer to
// a read of a guarded resource that says nothing about its freshness gets
// Cache-Control: no-cache (read_freshness no-cache, the default): caches
// may keep it, but must ask before they use it again, which with a
// validator costs a 304. An upstream's own word on freshness (Expires, or
// a Cache-Control directive such as max-age or no-store) is its decision
// and stays as it is.

// noCacheValue holds the field value, one per response, so that setting it
// allocates nothing and no other response shares the slice: handlers such
// as headers replace field values in place.
type noCacheValue [1]string

// markRevalidate adds Cache-Control: no-cache to a read's answer that
// carries no freshness information, with read_freshness no-cache.
func (h *Handler) markRevalidate(hdr http.Header, status int, value *noCacheValue) {
	if !h.revalidateReads || (status < 200 || status >= 300) && status != http.StatusNotModified {
		return
	}
	if _, ok := hdr["Expires"]; ok {
		return
	}
	cc, ok := hdr["Cache-Control"]
	if !ok {
		value[0] = "no-cache"
		hdr["Cache-Control"] = value[:]
		return
	}
	if !saysFreshness(cc) {
		// Cache-Control: private (ASP.NET sends it on every answer) or
		// public says who may keep the answer, not for how long: caches
		// still reuse it heuristically.
		hdr["Cache-Control"] = append(cc[:len(cc):len(cc)], "no-cache")
	}
}

// saysFreshness reports whether Cache-Control field lines say how long an
// answer is fresh, or that it must be revalidated or not kept.
func saysFreshness(lines []string) bool {
	for _, line := range lines {
		// Scanned in place: most answers that pass carry the field.
		for rest := line; rest != ""; {
			var d string
			d, rest, _ = strings.Cut(rest, ",")
			name, _, _ := strings.Cut(d, "=")
			switch name = strings.TrimSpace(name); {
			case strings.EqualFold(name, "max-age"), strings.EqualFold(name, "s-maxage"),
				strings.EqualFold(name, "no-cache"), strings.EqualFold(name, "no-store"),
				strings.EqualFold(name, "must-revalidate"), strings.EqualFold(name, "proxy-revalidate"),
				strings.EqualFold(name, "immutable"), strings.EqualFold(name, "stale-while-revalidate"):
				return true
			}
		}
	}
	return false
}
