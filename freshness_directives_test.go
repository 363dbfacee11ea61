package writeguard

import (
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A Cache-Control field without a freshness directive says nothing of
// freshness: `Cache-Control: private`, which ASP.NET sends on every answer
// by default, lets a browser's cache reuse the answer for a tenth of its
// age as it would without the field (RFC 9111, 4.2.2). Such an answer to a
// read of a guarded resource must make the browser revalidate, as one
// without the field does.
func TestCacheControlWithoutFreshnessIsRevalidated(t *testing.T) {
	for _, value := range []string{"private", "public"} {
		t.Run(value, func(t *testing.T) {
			upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("Etag", `"v1"`)
				w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
				w.Header().Set("Cache-Control", value)
				w.Write([]byte("body"))
				return nil
			})
			h := newTestHandler(t, &Handler{})
			got := strings.Join(serve(t, h, upstream, "GET", "/doc", "").Header().Values("Cache-Control"), ", ")
			if !strings.Contains(got, "no-cache") && !strings.Contains(got, "max-age=0") {
				t.Errorf("Cache-Control %q: a browser may reuse the answer without asking", got)
			}
		})
	}
}
