package integration

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// withWriteAnswerBody answers writes with a short body, as most APIs do: the
// connection that carried the write stays busy until reverse_proxy has
// relayed that body.
func withWriteAnswerBody(s *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			s.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		io.WriteString(w, `{"ok":true}`)
	})
}

// With one connection per upstream host, the GET that fetches the new
// version after a write must not wait for the connection the write's own
// answer still occupies.
func TestHashedWriteWithOneUpstreamConnection(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
		write_timeout 3s
	}
	reverse_proxy %s {
		transport http {
			max_conns_per_host 1
		}
	}`, startBackend(t, withWriteAnswerBody(store))))
	client := &http.Client{Timeout: 30 * time.Second}

	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	start := time.Now()
	put := do(t, client, "PUT", "/doc", "v2", "If-Match: "+tag)
	took := time.Since(start)
	if put.status != 200 {
		t.Fatalf("PUT: %d %s", put.status, put.body)
	}
	if took > 2*time.Second || put.header.Get("ETag") != guardTag([]byte("v2")) {
		t.Errorf("PUT took %s and answered ETag %q (want %q at once): the version fetch waited on the write's own connection until write_timeout",
			took.Round(100*time.Millisecond), put.header.Get("ETag"), guardTag([]byte("v2")))
	}
}

// cutOffReads answers GETs with a body that breaks off mid-way once cut
// is set, as an upstream that crashes while sending does.
func cutOffReads(s *backend.Store, cut *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !cut.Load() {
			s.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "v")
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
}

// A version check that fails must answer the write with a problem, and a
// write that was applied must be answered, whatever the GET that follows it
// runs into.
func TestHashedProbeCutOffByUpstream(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	var cut atomic.Bool
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, cutOffReads(store, &cut))))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := guardTag([]byte("v1"))

	send := func(body, ifMatch string) (int, error) {
		req, _ := http.NewRequest("PUT", caddyBase+"/doc", strings.NewReader(body))
		req.Header.Set("If-Match", ifMatch)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}

	// Cache miss: the check itself is cut off.
	cut.Store(true)
	if status, err := send("v2", tag); err != nil || status != http.StatusBadGateway {
		t.Errorf("write whose version check was cut off: status %d, error %v; want a 502 problem", status, err)
	}

	// Cache hit: the write is applied, the GET after it is cut off.
	cut.Store(false)
	do(t, client, "GET", "/doc", "")
	waitLearned(t, "*/doc")
	cut.Store(true)
	status, err := send("v2", tag)
	if err != nil || status != 200 {
		t.Errorf("write applied upstream (backend holds %q): status %d, error %v; want 200", mustBody(t, store, "/doc"), status, err)
	}
}
