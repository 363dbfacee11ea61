package writeguard

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Reads whose answers say nothing of freshness are marked for
// revalidation, in every etags mode; the upstream's own word stays.
func TestReadsWithoutFreshnessAreRevalidated(t *testing.T) {
	upstream := func(set map[string]string, status int) caddyhttp.Handler {
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Etag", `"v1"`)
			w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
			for k, v := range set {
				w.Header().Set(k, v)
			}
			w.WriteHeader(status)
			if r.Method == http.MethodGet {
				w.Write([]byte("body"))
			}
			return nil
		})
	}
	for _, etags := range []string{"auto", "upstream", "hash"} {
		for _, c := range []struct {
			name      string
			freshness string
			method    string
			set       map[string]string
			status    int
			want      string
		}{
			{name: "GET without freshness", method: "GET", status: 200, want: "no-cache"},
			{name: "HEAD without freshness", method: "HEAD", status: 200, want: "no-cache"},
			{name: "the upstream's Cache-Control", method: "GET", status: 200, set: map[string]string{"Cache-Control": "max-age=60"}, want: "max-age=60"},
			{name: "the upstream's Expires", method: "GET", status: 200, set: map[string]string{"Expires": "Mon, 02 Jan 2006 16:04:05 GMT"}, want: ""},
			{name: "an error", method: "GET", status: 500, want: ""},
			{name: "read_freshness upstream", freshness: "upstream", method: "GET", status: 200, want: ""},
		} {
			t.Run(etags+"/"+c.name, func(t *testing.T) {
				h := newTestHandler(t, &Handler{ETags: etags, ReadFreshness: c.freshness})
				w := serve(t, h, upstream(c.set, c.status), c.method, "/doc", "")
				if got := w.Header().Get("Cache-Control"); got != c.want {
					t.Errorf("Cache-Control %q, want %q", got, c.want)
				}
			})
		}
	}
}

// A 304 stands for the 200 it revalidates, and says the same.
func TestNotModifiedIsRevalidatedToo(t *testing.T) {
	doc := newTaggedDoc("v1", contentTag)
	for _, etags := range []string{"auto", "upstream"} {
		h := newTestHandler(t, &Handler{ETags: etags})
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			if r.Header.Get("If-None-Match") == contentTag("v1") {
				w.Header().Set("Etag", contentTag("v1"))
				w.WriteHeader(http.StatusNotModified)
				return nil
			}
			return doc.ServeHTTP(w, r)
		})
		serve(t, h, next, "GET", "/doc", "")
		h.cache.Wait()
		w := serve(t, h, next, "GET", "/doc", "", "If-None-Match: "+contentTag("v1"))
		if w.Code != http.StatusNotModified || w.Header().Get("Cache-Control") != "no-cache" {
			t.Errorf("%s: %d Cache-Control %q, want 304 no-cache", etags, w.Code, w.Header().Get("Cache-Control"))
		}
	}
	// The guard's own 304 (a tag it made).
	untagged := newTaggedDoc("v1", func(string) string { return "" })
	h := newTestHandler(t, &Handler{})
	tag := serve(t, h, untagged, "GET", "/doc", "").Header().Get("Etag")
	h.cache.Wait()
	w := serve(t, h, untagged, "GET", "/doc", "", "If-None-Match: "+tag)
	if w.Code != http.StatusNotModified || w.Header().Get("Cache-Control") != "no-cache" {
		t.Errorf("guard's 304: %d Cache-Control %q", w.Code, w.Header().Get("Cache-Control"))
	}
}
