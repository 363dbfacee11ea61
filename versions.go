package writeguard

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// A versionSource names the versions that writes are checked against: the
// upstream's own validators (upstreamVersions, source_upstream.go), or tags
// the guard makes of the representation's bytes (hashVersions,
// source_hash.go), or each where it names versions (autoVersions,
// source_auto.go, the default). The read path, the version check under the lock and the
// write's answer all go through it, so that each tells versions the same
// way; Provision chooses it.
type versionSource interface {
	// serveRead passes a GET or HEAD to next and teaches the cache the
	// version its answer shows.
	serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error
	// probe asks the upstream, through next, for the current version of
	// r's resource; known is false when the answer names none.
	probe(r *http.Request, next caddyhttp.Handler) (resp *probeResponse, v etagcache.Version, known bool, err error)
	// forward passes a write whose preconditions held to next, and ends it
	// (write.end) with the version its answer shows.
	forward(wr *write) error
	// untagged says why a version without an entity-tag cannot be named
	// in If-Match: the text of that 412.
	untagged() string
	// trusts reports whether the version v, found in the cache or the
	// store, may decide the write wr; otherwise the upstream is asked.
	trusts(wr *write, v etagcache.Version) bool
	// staleDetail is the text of a 412 for wr's If-Match when the source
	// has more to say than that the resource changed; "" otherwise.
	staleDetail(wr *write) string
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
