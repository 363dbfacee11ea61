package writeguard

import (
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// serveRead passes a GET or HEAD through untouched and learns the version
// its response reveals. The stamp is taken before the upstream is asked, so
// a response that was overtaken by a write can never be stored as current.
func (h *Handler) serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.learnsFrom(r) {
		return next.ServeHTTP(w, r)
	}
	key := h.resourceKey(r)
	lw := &learningWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		cache:                 h.cache,
		key:                   key,
		stamp:                 h.cache.Stamp(key),
	}
	return next.ServeHTTP(lw, r)
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

// learningWriter looks at the final response header on its way out.
type learningWriter struct {
	// Embedded by value: one allocation per request fewer.
	caddyhttp.ResponseWriterWrapper
	cache       *etagcache.Cache
	key         string
	stamp       etagcache.Stamp
	wroteHeader bool
}

func (lw *learningWriter) WriteHeader(status int) {
	if !lw.wroteHeader && status >= 200 {
		lw.wroteHeader = true
		hdr := lw.Header()
		if v, ok := versionFromResponse(status, hdr.Get("Etag"), hdr.Get("Last-Modified")); ok {
			lw.cache.Learn(lw.key, lw.stamp, v)
		}
	}
	lw.ResponseWriterWrapper.WriteHeader(status)
}

func (lw *learningWriter) Write(p []byte) (int, error) {
	if !lw.wroteHeader {
		lw.WriteHeader(http.StatusOK)
	}
	return lw.ResponseWriterWrapper.Write(p)
}

// ReadFrom keeps sendfile and other fast paths of the underlying writer.
func (lw *learningWriter) ReadFrom(r io.Reader) (int64, error) {
	if !lw.wroteHeader {
		lw.WriteHeader(http.StatusOK)
	}
	return lw.ResponseWriterWrapper.ReadFrom(r)
}

// versionFromResponse tells what a read or probe response says about the
// resource's current version, if anything.
func versionFromResponse(status int, etag, lastModified string) (etagcache.Version, bool) {
	switch {
	case status == http.StatusNotFound || status == http.StatusGone:
		return etagcache.Version{}, true
	case status >= 200 && status < 300:
		v := etagcache.Version{Exists: true, ETag: etag}
		if lastModified != "" {
			v.LastModified, _ = http.ParseTime(lastModified)
		}
		if v.ETag == "" && v.LastModified.IsZero() {
			return etagcache.Version{}, false
		}
		return v, true
	}
	return etagcache.Version{}, false
}
