package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// stallingWriteAnswer applies a PUT, sends the answer's header and first
// bytes, and then stalls until the client side gives up.
func stallingWriteAnswer(store *backend.Store, stall <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || r.Header.Get("X-Stall") == "" {
			store.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		store.Put(r.URL.Path, body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"ok":`)
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
}

// write_timeout bounds how long a write holds its resource: with `etags
// hash` the answer is held while reverse_proxy reads it, and that read has
// no deadline, so an upstream that stalls in the body keeps the lock.
func TestHashedStalledWriteAnswerKeepsLock(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	stall := make(chan struct{})
	defer close(stall)
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
		write_timeout 300ms
		lock_timeout 2s
	}
	reverse_proxy %s`, startBackend(t, stallingWriteAnswer(store, stall))))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, caddyBase+"/doc", strings.NewReader("v2"))
		req.Header.Set("If-Match", tag)
		req.Header.Set("X-Stall", "1")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	time.Sleep(700 * time.Millisecond) // the stalled write is past write_timeout
	current := guardTagOf(store, "/doc")
	r := do(t, client, "PUT", "/doc", "v3", "If-Match: "+current)
	if r.status == http.StatusConflict {
		t.Errorf("next write: 409 after lock_timeout 2s, although the stalled write passed write_timeout (300ms) long before")
	}
}

func guardTagOf(store *backend.Store, path string) string {
	b, _ := store.Get(path)
	return guardTag(b)
}

// cutOffAnswers sends the header and first bytes of every GET, and of
// PUTs after applying them, then drops the connection, as an upstream
// that crashes while sending does.
func cutOffAnswers(store *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Cut") == "" {
			store.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodPut {
			body, _ := io.ReadAll(r.Body)
			store.Put(r.URL.Path, body)
		}
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "the first bytes")
		w.(http.Flusher).Flush()
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})
}

// The crash this looks for takes the whole process with it, so the
// scenario runs in a child process and the parent reports how it ended.
// The child's Caddy has ports of its own: caddytest keeps one Caddy per
// process, and an earlier test of the parent may have left it running on
// the usual ones, where the child's config would land in the parent.
const (
	cutOffChildEnv   = "WRITE_GUARD_CUT_OFF_CHILD"
	cutOffAdminPort  = 2998
	cutOffHTTPPort   = 9082
	cutOffChildStart = `{
	skip_install_trust
	admin localhost:2998
	http_port 9082
	https_port 9444
	grace_period 1ns
}
:9082 {
	write_guard {
		etags hash
	}
	reverse_proxy %s
}
`
)

// slowReads sends the header and first bytes of a GET marked X-Slow, and
// the rest only after a pause.
func slowReads(store *backend.Store) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Slow") == "" {
			cutOffAnswers(store).ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", "20")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "first ten ")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
		io.WriteString(w, "and the rest")
	})
}

// A held GET whose body stops coming makes reverse_proxy flush and then
// panic(http.ErrAbortHandler): when the upstream breaks off, and when the
// client hangs up before the body is complete. Caddy must survive both and
// keep serving.
func TestHashedReadCutOffKeepsCaddyRunning(t *testing.T) {
	if scenario := os.Getenv(cutOffChildEnv); scenario != "" {
		store := newStore(map[string]string{"/doc": "v1"})
		addr := startBackend(t, slowReads(store))
		tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: cutOffAdminPort, TestRequestTimeout: 30 * time.Second})
		tester.InitServer(fmtSite(cutOffChildStart, addr), "caddyfile")
		if t.Failed() {
			t.FailNow()
		}
		base := fmtSite("http://localhost:%d/doc", cutOffHTTPPort)
		client := &http.Client{Timeout: 10 * time.Second}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base, nil)
		if scenario == "upstream" {
			req.Header.Set("X-Cut", "1")
		} else {
			req.Header.Set("X-Slow", "1")
		}
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		time.Sleep(700 * time.Millisecond)
		resp, err := client.Get(base)
		if err != nil {
			t.Fatalf("GET after the cut-off read: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET after the cut-off read: %d", resp.StatusCode)
		}
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, scenario := range []string{"upstream", "client"} {
		t.Run(scenario, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestHashedReadCutOffKeepsCaddyRunning$", "-test.count=1")
			cmd.Env = append(os.Environ(), cutOffChildEnv+"="+scenario)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("Caddy did not survive a held read cut off by the %s (%v):\n%s", scenario, err, crashExcerpt(out))
			}
		})
	}
}

// crashExcerpt keeps the panic and the first frames of a child's output.
func crashExcerpt(out []byte) []byte {
	if i := bytes.Index(out, []byte("panic:")); i >= 0 {
		out = out[i:]
	}
	if len(out) > 2000 {
		out = out[:2000]
	}
	return out
}

// With `etags hash` the write's answer is held, so when its body breaks
// off nothing has reached the client and it can be told: 502
// upstream-failed, as for any fault after the write may have been applied.
func TestHashedWriteAnswerCutOffGetsProblem(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	store.ETags = backend.NoETags
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
	}
	reverse_proxy %s`, startBackend(t, cutOffAnswers(store))))
	client := &http.Client{Timeout: 30 * time.Second}
	tag := do(t, client, "GET", "/doc", "").header.Get("ETag")
	req, _ := http.NewRequest(http.MethodPut, caddyBase+"/doc", strings.NewReader("v2"))
	req.Header.Set("If-Match", tag)
	req.Header.Set("X-Cut", "1")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, io.EOF) || strings.Contains(err.Error(), "EOF") {
			t.Fatalf("write whose answer was cut off: the connection was dropped without an answer (%v); want a 502 upstream-failed problem", err)
		}
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := response{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if r.status != http.StatusBadGateway {
		t.Fatalf("write whose answer was cut off: %d %s, want 502", r.status, r.body)
	}
	if p := problemOf(t, r); !strings.HasSuffix(p.Type, "#upstream-failed") {
		t.Errorf("problem type %s", p.Type)
	}
}
