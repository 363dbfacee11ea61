package writeguard

import (
	"io"
	"net/http"
	"strings"
	"time"

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
			v.LastModified, _ = parseHTTPDate(lastModified)
		}
		if v.ETag == "" && v.LastModified.IsZero() {
			return etagcache.Version{}, false
		}
		return v, true
	}
	return etagcache.Version{}, false
}

// parseHTTPDate is http.ParseTime, with a fast path for the IMF-fixdate form
// ("Sun, 06 Nov 1994 08:49:37 GMT") that RFC 9110 requires senders to use:
// every read that passes the guard carries one, and time.Parse takes a fifth
// of what the guard spends on a read.
func parseHTTPDate(s string) (time.Time, error) {
	if len(s) == 29 && s[3] == ',' && s[4] == ' ' && s[7] == ' ' && s[11] == ' ' && s[16] == ' ' &&
		s[19] == ':' && s[22] == ':' && s[25:] == " GMT" && validDay(s[:3]) {
		day, ok1 := digits(s[5:7])
		year, ok2 := digits(s[12:16])
		hour, ok3 := digits(s[17:19])
		minute, ok4 := digits(s[20:22])
		sec, ok5 := digits(s[23:25])
		month := monthOf(s[8:11])
		if ok1 && ok2 && ok3 && ok4 && ok5 && month != 0 && day >= 1 && hour < 24 && minute < 60 && sec < 60 {
			t := time.Date(year, month, day, hour, minute, sec, 0, time.UTC)
			if t.Day() == day { // not 31 November
				return t, nil
			}
		}
	}
	return http.ParseTime(s)
}

func digits(s string) (int, bool) {
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func validDay(s string) bool {
	switch s {
	case "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun":
		return true
	}
	return false
}

func monthOf(s string) time.Month {
	switch s {
	case "Jan":
		return time.January
	case "Feb":
		return time.February
	case "Mar":
		return time.March
	case "Apr":
		return time.April
	case "May":
		return time.May
	case "Jun":
		return time.June
	case "Jul":
		return time.July
	case "Aug":
		return time.August
	case "Sep":
		return time.September
	case "Oct":
		return time.October
	case "Nov":
		return time.November
	case "Dec":
		return time.December
	}
	return 0
}
