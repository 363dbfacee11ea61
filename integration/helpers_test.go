// Package integration runs write_guard inside a real Caddy, in front of real
// backends on loopback.
package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/writeguard/caddy-writeguard"
	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// caddyBase is where the site under test listens.
const caddyBase = "http://localhost:9080"

// globalOptions point Caddy at the ports caddytest expects.
const globalOptions = `{
	skip_install_trust
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
}
`

// startBackend serves store on loopback until the test ends. It must start
// before the Caddy config that points at it is loaded.
func startBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// startCaddy loads a Caddyfile site block (given without its address) into
// the in-process Caddy.
func startCaddy(t *testing.T, site string) *caddytest.Tester {
	t.Helper()
	// caddytest skips a test when it cannot start Caddy; an end-to-end test
	// that did not run must not pass as one that did.
	t.Cleanup(func() {
		if t.Skipped() {
			t.Error("Caddy could not be started for this test (is something else on localhost:2999 or :9080?)")
			return
		}
		unloadSites(t)
	})
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
	tester.InitServer(globalOptions+":9080 {\n"+site+"\n}\n", "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return tester
}

// waitLearned waits until the guard's cache holds a version of the resource
// at key ("*/doc" for the catch-all test site): ristretto applies the store of a new key
// asynchronously, so a write right after the read that taught it may still
// find the cache empty and ask the upstream.
func waitLearned(t *testing.T, key string) {
	t.Helper()
	waitLearnedAt(t, "http://localhost:2999", key)
}

// waitLearnedAt is waitLearned for the Caddy whose admin endpoint is admin.
func waitLearnedAt(t *testing.T, admin, key string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get(admin + "/write_guard/resource?key=" + key)
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			Caches []struct{ Known bool } `json:"caches"`
		}
		err = json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("admin resource view: %v", err)
		}
		if len(s.Caches) > 0 && s.Caches[0].Known {
			return
		}
	}
	t.Fatalf("the cache behind %s never learned %s", admin, key)
}

// unloadSites loads a config without sites, so that the guard's caches end
// with the test: what one test's writes taught them must not decide the
// next test's writes (a config with the same cache settings would share
// them, as a reload does).
func unloadSites(t *testing.T) {
	req, _ := http.NewRequest(http.MethodPost, "http://localhost:2999/load", strings.NewReader(globalOptions))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Errorf("unloading the test's config: %v", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("unloading the test's config: %d %s", resp.StatusCode, body)
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

// do sends one request to Caddy; headers are "Name: value" pairs.
func do(t testing.TB, client *http.Client, method, path, body string, headers ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, caddyBase+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		if name == "Host" {
			req.Host = strings.TrimSpace(value)
			continue
		}
		req.Header.Add(name, strings.TrimSpace(value))
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

type problemBody struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
	Header   string `json:"header"`
}

// problemOf decodes and sanity-checks an RFC 9457 body.
func problemOf(t testing.TB, r response) problemBody {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("status %d: Content-Type %q, want application/problem+json; body %q", r.status, ct, r.body)
	}
	var p problemBody
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Status != r.status || p.Type == "" || p.Title == "" || p.Detail == "" {
		t.Fatalf("incomplete problem body %q for status %d", r.body, r.status)
	}
	return p
}

func newStore(docs map[string]string) *backend.Store {
	s := backend.New()
	for path, body := range docs {
		s.Put(path, []byte(body))
	}
	return s
}

func mustBody(t testing.TB, s *backend.Store, path string) string {
	t.Helper()
	b, ok := s.Get(path)
	if !ok {
		t.Fatalf("backend has no %s", path)
	}
	return string(b)
}

func httpDate(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

func fmtSite(format string, args ...any) string { return fmt.Sprintf(format, args...) }
