package writeguard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// fastRecorder is a response writer with the fast paths of net/http's own:
// ReadFrom (sendfile for files) and Flush.
type fastRecorder struct {
	*httptest.ResponseRecorder
	readFrom bool
}

func (f *fastRecorder) ReadFrom(r io.Reader) (int64, error) {
	f.readFrom = true
	return io.Copy(f.ResponseRecorder, r)
}

// TestWrappersKeepFastPaths: the writers the guard hands to the next handler,
// on the read path and on a guarded write, still reach the underlying
// writer's ReadFrom and Flush, so files go out by sendfile and streamed
// answers are flushed as without the guard.
func TestWrappersKeepFastPaths(t *testing.T) {
	h := newTestHandler(t, &Handler{})
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		tag := `"1"`
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
			tag = `"2"`
		}
		w.Header().Set("ETag", tag)
		if r.Method == http.MethodHead {
			// The guard's own version check, whose answer goes nowhere.
			return nil
		}
		if _, ok := w.(io.ReaderFrom); !ok {
			t.Errorf("%s: the writer has no ReadFrom", r.Method)
		}
		// As http.ServeContent copies a file: the limited reader has no
		// WriteTo, so io.Copy asks the writer for ReadFrom.
		if _, err := io.Copy(w, io.LimitReader(strings.NewReader("body"), 4)); err != nil {
			t.Errorf("%s: copy: %v", r.Method, err)
		}
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("%s: flush: %v", r.Method, err)
		}
		return nil
	})
	for _, tc := range []struct {
		method string
		header string
	}{
		{http.MethodGet, ""},
		{http.MethodPut, `If-Match: "1"`},
	} {
		rec := &fastRecorder{ResponseRecorder: httptest.NewRecorder()}
		req := httptest.NewRequest(tc.method, "http://example.com/doc", strings.NewReader("x"))
		if name, value, ok := strings.Cut(tc.header, ":"); ok {
			req.Header.Set(name, strings.TrimSpace(value))
		}
		req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), rec, nil)
		if err := h.ServeHTTP(rec, req, next); err != nil {
			t.Fatalf("%s: %v", tc.method, err)
		}
		if rec.Code != http.StatusOK || rec.Body.String() != "body" {
			t.Fatalf("%s: %d %q", tc.method, rec.Code, rec.Body)
		}
		if !rec.readFrom {
			t.Errorf("%s: the body did not go through the underlying ReadFrom", tc.method)
		}
		if !rec.Flushed {
			t.Errorf("%s: the flush did not reach the underlying writer", tc.method)
		}
	}
}
