package writeguard

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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

// A body above max_body_memory goes to a temporary file, reaches the
// upstream whole (twice, as on a retry), and the file is removed.
func TestLargeBodySpillsToTemporaryFile(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	body := bytes.Repeat([]byte("0123456789"), 10_000) // 100 kB
	var received [][]byte
	var filesDuring int
	upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusNotFound)
			return nil
		}
		entries, _ := os.ReadDir(tmp)
		filesDuring = len(entries)
		b, _ := io.ReadAll(r.Body)
		received = append(received, b)
		again, err := r.GetBody()
		if err != nil {
			return err
		}
		b, _ = io.ReadAll(again)
		received = append(received, b)
		w.WriteHeader(http.StatusCreated)
		return nil
	})
	h := newTestHandler(t, &Handler{MaxBodyMemory: 1000})
	w := serve(t, h, upstream, "PUT", "/doc", string(body), "If-None-Match: *")
	if w.Code != http.StatusCreated {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	if filesDuring != 1 {
		t.Errorf("%d temporary files while the write was forwarded, want 1", filesDuring)
	}
	for i, b := range received {
		if !bytes.Equal(b, body) {
			t.Errorf("read %d: %d bytes, want the %d sent", i, len(b), len(body))
		}
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("temporary files left behind: %v", entries)
	}

	// Over max_body, after spilling: 413, and nothing left behind.
	h2 := newTestHandler(t, &Handler{MaxBodyMemory: 1000, MaxBody: 50_000})
	req := newRequest("PUT", "/doc2", io.MultiReader(bytes.NewReader(body)), "If-None-Match: *") // length unknown
	rec := httptest.NewRecorder()
	if err := serveTo(rec, req, h2, upstream); err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL, err)
	}
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("body over max_body: %d", rec.Code)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("temporary files left behind after 413: %v", entries)
	}
}
