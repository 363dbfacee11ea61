// Package integration runs write_guard inside a real Caddy, in front of real
// backends on loopback.
package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/writeguard/caddy-writeguard"
	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
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

// startSites loads whole site blocks (with their addresses) into the
// in-process Caddy.
func startSites(t *testing.T, sites string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Skipped() {
			t.Error("Caddy could not be started for this test")
			return
		}
		unloadSites(t)
	})
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{TestRequestTimeout: 30 * time.Second})
	tester.InitServer(globalOptions+sites, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
}

// entrance is a way into a site: the base URL a request is sent to and
// the Host field it carries ("" keeps base's).
type entrance struct{ base, host string }

// at sends one request to base (scheme and authority) with the Host field
// host ("" keeps base's); headers are "Name: value" pairs.
func at(t testing.TB, base, host, method, path, body string, headers ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(name, strings.TrimSpace(value))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, base, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// activate makes the configuration serve a guarded write, so that what
// the test's reads teach the cache is not forgotten when a first write
// finds that the namings in use changed since the last test (reload.go).
func activate(t testing.TB, e entrance) {
	t.Helper()
	if r := at(t, e.base, e.host, http.MethodPut, "/warm-up", "x", "If-None-Match: *"); r.status != http.StatusCreated {
		t.Fatalf("warm-up write: %d %s", r.status, r.body)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// keyedConfig is a whole config whose one site keys resources with opts (a
// write_guard block body, "" for the defaults).
func keyedConfig(addr, opts, grace string) string {
	return strings.Replace(globalOptions, "grace_period 1ns", "grace_period "+grace, 1) +
		fmtSite(":9080 {\n\twrite_guard {\n%s\n\t}\n\treverse_proxy %s\n}\n", opts, addr)
}

const pathKey = "\t\tkey {http.request.uri.path}"

func redisOpts(srv *redistest.Server, extra string) string {
	return fmt.Sprintf("\t\tstore redis %s {\n\t\t\tlock_ttl 1s\n\t\t}\n%s", srv.Addr, extra)
}

// guardStats reads the guard's state from Caddy's admin endpoint.
type guardStats struct {
	LocksHeld int64 `json:"locks_held"`
	Waiting   int64 `json:"waiting"`
	Tracked   int   `json:"tracked"`
}

func adminStats(t *testing.T) guardStats {
	t.Helper()
	resp, err := http.Get("http://localhost:2999/write_guard/stats")
	if err != nil {
		t.Fatalf("admin stats: %v", err)
	}
	defer resp.Body.Close()
	var s guardStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin stats: %d %v", resp.StatusCode, err)
	}
	return s
}

// assertNoLocks checks that the lock manager holds no entry once the
// requests under way are done.
func assertNoLocks(t *testing.T) {
	t.Helper()
	var s guardStats
	for range 100 {
		if s = adminStats(t); s.Tracked == 0 && s.LocksHeld == 0 && s.Waiting == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("the lock manager still tracks %d resources (%d held, %d waiting)", s.Tracked, s.LocksHeld, s.Waiting)
}

// workload is many clients doing read-modify-write on a few hot resources:
// GET, append the client's own line, PUT with If-Match, and on 412 or 409
// start over. A write is acknowledged when the PUT got a 2xx.
type workload struct {
	base string // where to send requests
	// bases, when set, replace base: a client sends each request to the
	// next of them in turn, so that an edit's read and write go through
	// different servers.
	bases     []string
	resources []string
	clients   int
	perClient int           // acknowledged writes each client aims for
	think     time.Duration // between GET and PUT, as a user editing would
	deadline  time.Time

	mu    sync.Mutex
	acked map[string][]string // resource → lines whose PUT was acknowledged
	// refused counts 412/409 answers; unavailable 503s; errors transport
	// failures and other answers.
	refused, unavailable, errors atomic.Int64
	turn                         atomic.Int64
}

func (wl *workload) run(t *testing.T) {
	t.Helper()
	wl.acked = map[string][]string{}
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	for c := range wl.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < wl.perClient && time.Now().Before(wl.deadline); {
				res := wl.resources[(c+i)%len(wl.resources)]
				line := fmt.Sprintf("client %d write %d", c, i)
				switch wl.edit(client, res, line) {
				case http.StatusOK, http.StatusCreated, http.StatusNoContent:
					wl.mu.Lock()
					wl.acked[res] = append(wl.acked[res], line)
					wl.mu.Unlock()
					i++
				case http.StatusPreconditionFailed, http.StatusConflict:
					wl.refused.Add(1)
				case http.StatusServiceUnavailable:
					wl.unavailable.Add(1)
					time.Sleep(50 * time.Millisecond)
				default:
					wl.errors.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
}

// edit performs one read-modify-write and returns the status of the write,
// or 0 when the exchange failed.
func (wl *workload) edit(client *http.Client, res, line string) int {
	readBase, writeBase := wl.base, wl.base
	if len(wl.bases) > 0 {
		n := int(wl.turn.Add(1))
		readBase, writeBase = wl.bases[n%len(wl.bases)], wl.bases[(n+1)%len(wl.bases)]
	}
	resp, err := client.Get(readBase + res)
	if err != nil {
		return 0
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0
	}
	tag := resp.Header.Get("ETag")
	time.Sleep(wl.think)
	return putIfMatch(client, writeBase+res, string(body)+line+"\n", tag)
}

// putIfMatch sends a conditional PUT and returns its status, or 0 when the
// exchange failed.
func putIfMatch(client *http.Client, url, body, tag string) int {
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	req.Header.Set("If-Match", tag)
	return statusOf(client, req)
}

// statusOf sends req and returns the status of its answer, whose body it
// drains, or 0 when the exchange failed.
func statusOf(client *http.Client, req *http.Request) int {
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// requireNoneLost checks a guarded run of the workload: nothing lost,
// everything acknowledged, contention seen, no overlapping writes.
func (wl *workload) requireNoneLost(t *testing.T, store *backend.Store, setup string) {
	t.Helper()
	lost, acked := wl.lost(t, store)
	t.Logf("%s: %d of %d acknowledged writes lost; %d writes refused and retried, %d errors",
		setup, lost, acked, wl.refused.Load(), wl.errors.Load())
	if lost != 0 {
		t.Errorf("%s lost %d of %d acknowledged writes", setup, lost, acked)
	}
	if want := wl.clients * wl.perClient; acked != want {
		t.Errorf("only %d of %d writes were acknowledged before the deadline", acked, want)
	}
	if wl.refused.Load() == 0 {
		t.Errorf("no write was ever refused: the workload did not contend")
	}
	if n := store.Overlaps(); n != 0 {
		t.Errorf("%d writes to one resource overlapped at the backend", n)
	}
}

// racePair sends two PUTs naming the same version at the same moment, one
// to each path, and returns their statuses.
func racePair(client *http.Client, paths [2]string, tag string, body func(writer int) string) (int, int) {
	statuses := make(chan int, 2)
	start := make(chan struct{})
	for i, path := range paths {
		go func() {
			<-start
			statuses <- putIfMatch(client, caddyBase+path, body(i), tag)
		}()
	}
	close(start)
	return <-statuses, <-statuses
}

// lost returns the acknowledged lines that are missing from the final
// documents.
func (wl *workload) lost(t *testing.T, store *backend.Store) (lost, acked int) {
	t.Helper()
	for res, lines := range wl.acked {
		final := mustBody(t, store, res)
		for _, l := range lines {
			acked++
			if !strings.Contains(final, l+"\n") {
				lost++
			}
		}
	}
	return lost, acked
}

func hotStore(resources []string) *backend.Store {
	store := backend.New()
	for _, r := range resources {
		store.Put(r, nil)
	}
	store.WriteDelay = 2 * time.Millisecond
	return store
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// rawConn is an HTTP/1.1 connection to the in-process Caddy that shows what
// net/http's client would tidy away: every interim answer, and header and
// trailer fields repeated as they came.
type rawConn struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// rawResponse is one answer as read off the wire.
type rawResponse struct {
	status  int
	header  textproto.MIMEHeader
	body    string
	trailer textproto.MIMEHeader
}

func dialCaddy(t testing.TB) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(caddyBase, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A bound on the whole exchange, so that a broken answer fails the
	// test instead of hanging it.
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *rawConn) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatal(err)
	}
}

// readResponse reads one answer, interim or final. The body of a final
// answer is read by its framing (chunked with trailers, Content-Length, or
// to the end of the connection); a HEAD's or a 1xx/204/304 has none.
func (c *rawConn) readResponse(head bool) rawResponse {
	c.t.Helper()
	tp := textproto.NewReader(c.br)
	line, err := tp.ReadLine()
	if err != nil {
		c.t.Fatalf("reading a status line: %v", err)
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil {
		c.t.Fatalf("malformed status line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		c.t.Fatalf("reading the header of a %d: %v", status, err)
	}
	r := rawResponse{status: status, header: hdr}
	if head || status < 200 || status == 204 || status == 304 {
		return r
	}
	var body []byte
	switch {
	case strings.EqualFold(hdr.Get("Transfer-Encoding"), "chunked"):
		body, err = io.ReadAll(httputil.NewChunkedReader(c.br))
		if err == nil {
			// The chunked reader stops after the last chunk; the trailer
			// section follows it.
			r.trailer, err = tp.ReadMIMEHeader()
		}
	case hdr.Get("Content-Length") != "":
		n, _ := strconv.Atoi(hdr.Get("Content-Length"))
		body = make([]byte, n)
		_, err = io.ReadFull(c.br, body)
	default:
		body, err = io.ReadAll(c.br)
	}
	if err != nil {
		c.t.Fatalf("reading the body of a %d: %v", status, err)
	}
	r.body = string(body)
	return r
}

func (r rawResponse) String() string {
	body := r.body
	if len(body) > 80 {
		body = body[:80] + "..."
	}
	return fmt.Sprintf("%d header %v trailer %v body %q", r.status, r.header, r.trailer, body)
}
