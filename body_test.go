package writeguard

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// Once the guard holds a write's whole body, the request it forwards
// expects nothing: an Expect: 100-continue left in it makes the upstream
// answer 100 Continue, which reverse_proxy passes on as a second interim
// answer to a client that already had one from Caddy's server.
func TestBufferedBodyDropsExpectation(t *testing.T) {
	h := &Handler{MaxBody: 1 << 20, MaxBodyMemory: 1 << 10}
	for _, c := range []struct {
		name          string
		body          string
		contentLength int64
	}{
		{name: "in memory", body: "small", contentLength: 5},
		{name: "in memory, length unknown", body: "small", contentLength: -1},
		{name: "spooled to a file", body: strings.Repeat("x", 4<<10), contentLength: 4 << 10},
		{name: "no body"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest("PUT", "http://example.com/doc", strings.NewReader(c.body))
			req.ContentLength = c.contentLength
			if c.body == "" {
				req.Body = nil
			}
			req.Header.Set("Expect", "100-continue")
			arrived := req.Header
			discard, err := h.bufferBody(req, new(bufferedBody))
			defer discard()
			if err != nil {
				t.Fatal(err)
			}
			if v, ok := req.Header["Expect"]; ok {
				t.Errorf("the request to forward still carries Expect: %q", v)
			}
			if arrived.Get("Expect") != "100-continue" {
				t.Error("the header map the request arrived with lost its Expect field")
			}
			if req.Body != nil {
				if got, _ := io.ReadAll(req.Body); string(got) != c.body {
					t.Errorf("forwarded body of %d bytes, not the %d sent", len(got), len(c.body))
				}
			}
		})
	}
}
