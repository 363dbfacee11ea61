package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// jsonServer is json-server (npm), a REST app that creates a record on
// every POST and knows nothing of Idempotency-Key, on loopback.
type jsonServer struct {
	addr string
	cmd  *exec.Cmd
}

// startJSONServer runs the json-server that test.sh installs in
// jsonserver/node_modules, serving one collection, orders, with every
// answer delayed by delay. Without it the test is skipped, unless CI is
// set: CI installs it, and a test that did not run must not pass there.
func startJSONServer(t *testing.T, delay time.Duration) *jsonServer {
	t.Helper()
	bin, err := filepath.Abs("jsonserver/node_modules/.bin/json-server")
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		msg := "json-server is not installed (./test.sh installs it: npm ci --prefix integration/jsonserver)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	db := filepath.Join(t.TempDir(), "db.json")
	if err := os.WriteFile(db, []byte(`{"orders": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	js := &jsonServer{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	js.cmd = exec.Command(bin, "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--quiet",
		"--delay", fmt.Sprint(delay.Milliseconds()), db)
	logs := &strings.Builder{}
	js.cmd.Stdout, js.cmd.Stderr = &lockedWriter{w: logs}, &lockedWriter{w: logs}
	if err := js.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		js.cmd.Process.Kill()
		js.cmd.Wait()
		if t.Failed() {
			t.Logf("json-server logged:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + js.addr + "/orders"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return js
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("json-server did not start:\n%s", logs.String())
		}
	}
}

// orders returns the records json-server holds.
func (js *jsonServer) orders(t *testing.T) []map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + js.addr + "/orders")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	return list
}

// postAtOnce sends n identical POSTs at the same moment.
func postAtOnce(t *testing.T, n int, body string, headers ...string) []response {
	t.Helper()
	answers := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	client := &http.Client{Timeout: 30 * time.Second}
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			answers[i] = do(t, client, http.MethodPost, "/orders", body, headers...)
		}()
	}
	close(start)
	wg.Wait()
	return answers
}

// Eight identical POSTs with one key, at once, in front of json-server,
// create exactly one record; without the idempotency block they create
// eight.
func TestIdempotentCreateInFrontOfJSONServer(t *testing.T) {
	js := startJSONServer(t, 200*time.Millisecond)
	const order = `{"item":"tea","qty":2}`
	headers := []string{`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`, "Content-Type: application/json"}

	// The control run: a retry of a create creates again.
	startCaddy(t, fmtSite("\twrite_guard\n\treverse_proxy %s\n", js.addr))
	postAtOnce(t, 8, order, headers...)
	if n := len(js.orders(t)); n <= 1 {
		t.Fatalf("without idempotency, 8 POSTs created %d records: the control run shows nothing", n)
	}
	before := len(js.orders(t))

	startCaddy(t, fmtSite("\twrite_guard {\n\t\tidempotency\n\t}\n\treverse_proxy %s\n", js.addr))
	answers := postAtOnce(t, 8, order, headers...)
	var created []response
	for _, a := range answers {
		switch a.status {
		case http.StatusCreated:
			created = append(created, a)
		case http.StatusConflict:
			if p := problemOf(t, a); !strings.HasSuffix(p.Type, "#idempotency-in-flight") || a.header.Get("Retry-After") == "" {
				t.Errorf("409: %+v", p)
			}
		default:
			t.Errorf("answer %d %s", a.status, a.body)
		}
	}
	if n := len(js.orders(t)) - before; n != 1 {
		t.Fatalf("8 POSTs with one key created %d records", n)
	}
	if len(created) == 0 {
		t.Fatal("no POST got the 201")
	}
	first := created[0]
	for _, a := range created[1:] {
		if a.body != first.body || a.header.Get("Location") != first.header.Get("Location") || a.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("a 201 differs from the first: %q %v", a.body, a.header)
		}
	}
	// A later retry replays the 201, body and Location included.
	again := do(t, http.DefaultClient, http.MethodPost, "/orders", order, headers...)
	if again.status != http.StatusCreated || again.body != first.body || again.header.Get("Location") == "" ||
		again.header.Get("Location") != first.header.Get("Location") || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("later retry: %d %v %q (first %v %q)", again.status, again.header, again.body, first.header, first.body)
	}
	if n := len(js.orders(t)) - before; n != 1 {
		t.Fatalf("after the retry, %d records", n)
	}
	t.Logf("8 POSTs at once: %d got 201, %d got 409 in flight; the control run created %d records", len(created), 8-len(created), before)
}

// holdingBackend applies the first PUT at once but answers it only when
// released (or its request is cancelled): an answer that a client may not
// wait for. cut makes it drop the connection instead of answering.
type holdingBackend struct {
	store   http.Handler
	puts    atomic.Int64
	applied chan struct{}
	release chan struct{}
	cut     bool
	// cancelled is closed when the held request was cancelled by Caddy.
	cancelled chan struct{}
}

func (b *holdingBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut || b.puts.Add(1) != 1 {
		b.store.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	b.store.ServeHTTP(rec, r)
	b.applied <- struct{}{}
	if b.cut {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
		return
	}
	select {
	case <-b.release:
	case <-r.Context().Done():
		close(b.cancelled)
		return
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// A conditional PUT whose client gave up after the upstream applied it:
// the retry, with the same key and the same (now stale) If-Match, gets
// the stored 200, not a 412, and the backend saw one write.
func TestIdempotentPutAnswerLostByClient(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	b := &holdingBackend{store: store, applied: make(chan struct{}, 1), release: make(chan struct{}), cancelled: make(chan struct{})}
	addr := startBackend(t, b)
	startCaddy(t, fmtSite("\twrite_guard {\n\t\tidempotency {\n\t\t\twait 20s\n\t\t}\n\t}\n\treverse_proxy %s\n", addr))
	tag := do(t, http.DefaultClient, "GET", "/doc", "").header.Get("ETag")
	const key = `Idempotency-Key: "put-1"`

	conn, err := net.Dial("tcp", strings.TrimPrefix(caddyBase, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PUT /doc HTTP/1.1\r\nHost: localhost\r\nIf-Match: %s\r\n%s\r\nContent-Length: 2\r\n\r\nv2", tag, key)
	<-b.applied
	conn.Close() // the client gives up: its answer is lost
	// Let Caddy notice the client gone; without the idempotency step it
	// cancels the upstream request then.
	select {
	case <-b.cancelled:
		t.Fatal("Caddy cancelled the upstream request of a write with a key when its client left")
	case <-time.After(300 * time.Millisecond):
	}
	close(b.release)

	r := do(t, http.DefaultClient, "PUT", "/doc", "v2", "If-Match: "+tag, key)
	if r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "true" || r.header.Get("ETag") != store.ETagOf([]byte("v2")) {
		t.Fatalf("retry: %d %v %s", r.status, r.header, r.body)
	}
	if n := store.Writes(); n != 1 {
		t.Fatalf("the backend saw %d writes", n)
	}
	// The same stale write without a key is what it is.
	if r := do(t, http.DefaultClient, "PUT", "/doc", "v2", "If-Match: "+tag); r.status != http.StatusPreconditionFailed {
		t.Fatalf("stale write without a key: %d", r.status)
	}
}

// A conditional PUT whose answer the upstream cut after applying it may
// have been applied: the retry is refused with outcome-unknown and not
// forwarded again.
func TestIdempotentPutAnswerCutByUpstream(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	b := &holdingBackend{store: store, applied: make(chan struct{}, 1), cut: true}
	addr := startBackend(t, b)
	startCaddy(t, fmtSite("\twrite_guard {\n\t\tidempotency\n\t}\n\treverse_proxy %s\n", addr))
	tag := do(t, http.DefaultClient, "GET", "/doc", "").header.Get("ETag")
	const key = `Idempotency-Key: "put-2"`

	if r := do(t, http.DefaultClient, "PUT", "/doc", "v2", "If-Match: "+tag, key); r.status != http.StatusBadGateway {
		t.Fatalf("cut write: %d %s", r.status, r.body)
	}
	r := do(t, http.DefaultClient, "PUT", "/doc", "v2", "If-Match: "+tag, key)
	if r.status != http.StatusConflict || !strings.HasSuffix(problemOf(t, r).Type, "#idempotency-outcome-unknown") || r.header.Get("Retry-After") != "" {
		t.Fatalf("retry: %d %v %s", r.status, r.header, r.body)
	}
	if n := store.Writes(); n != 1 {
		t.Fatalf("the backend saw %d writes", n)
	}
	// What the problem says to do: read, and send it anew under a new key.
	cur := do(t, http.DefaultClient, "GET", "/doc", "")
	if cur.body != "v2" {
		t.Fatalf("the backend holds %q", cur.body)
	}
	if r := do(t, http.DefaultClient, "PUT", "/doc", "v3", "If-Match: "+cur.header.Get("ETag"), `Idempotency-Key: "put-3"`); r.status != http.StatusOK {
		t.Fatalf("the next write: %d %s", r.status, r.body)
	}
}

// failingFirst answers the first POST to /flaky with 500; everything else
// goes to store.
func failingFirst(store http.Handler) http.Handler {
	var flaky atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/flaky" && flaky.Add(1) == 1 {
			http.Error(w, "try again", http.StatusInternalServerError)
			return
		}
		store.ServeHTTP(w, r)
	})
}

// Through a real Caddy: reuse with another body is 422, another client's
// key is its own, a 5xx is not stored, and a record expires after ttl.
func TestIdempotencyRulesThroughCaddy(t *testing.T) {
	store := newStore(nil)
	addr := startBackend(t, failingFirst(store))
	startCaddy(t, fmtSite("\twrite_guard {\n\t\tidempotency {\n\t\t\tttl 1s\n\t\t}\n\t}\n\treverse_proxy %s\n", addr))
	const key = `Idempotency-Key: "rule-1"`
	c := http.DefaultClient
	post := func(path, body string, headers ...string) response {
		return do(t, c, "POST", path, body, append([]string{key, "Authorization: Bearer alice"}, headers...)...)
	}

	if r := post("/notes/1", "x"); r.status != http.StatusCreated {
		t.Fatalf("first: %d", r.status)
	}
	if r := post("/notes/1", "x"); r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d %v", r.status, r.header)
	}
	if r := post("/notes/1", "y"); r.status != http.StatusUnprocessableEntity || !strings.HasSuffix(problemOf(t, r).Type, "#idempotency-key-reused") {
		t.Fatalf("reuse with another body: %d %s", r.status, r.body)
	}
	if n := store.Writes(); n != 1 {
		t.Fatalf("%d writes after a retry and a reuse", n)
	}
	// Bob's "rule-1" is not Alice's.
	if r := do(t, c, "POST", "/notes/1", "y", key, "Authorization: Bearer bob"); r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("another client's key: %d %v", r.status, r.header)
	}
	if n := store.Writes(); n != 2 {
		t.Fatalf("%d writes after another client's", n)
	}
	// A 500 is not stored: the retry is forwarded.
	if r := post("/flaky", "x"); r.status != http.StatusInternalServerError {
		t.Fatalf("flaky: %d", r.status)
	}
	if r := post("/flaky", "x"); r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after a 500: %d %v", r.status, r.header)
	}
	// After ttl the key is forgotten, and the write applied again.
	time.Sleep(1100 * time.Millisecond)
	if r := post("/notes/1", "y"); r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("after the ttl: %d %v", r.status, r.header)
	}
	if got := mustBody(t, store, "/notes/1"); got != "y" {
		t.Fatalf("backend holds %q", got)
	}
}

// slowCreates creates a record on every POST, after delay; the POSTs
// carrying X-Hang are never answered (until the test ends).
type slowCreates struct {
	delay   time.Duration
	created atomic.Int64
	hung    chan struct{}
	release chan struct{}
}

func (s *slowCreates) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.created.Add(1)
	if r.Header.Get("X-Hang") != "" {
		s.hung <- struct{}{}
		<-s.release
		return
	}
	time.Sleep(s.delay)
	w.Header().Set("Location", fmt.Sprintf("/orders/%d", n))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":%d}`, n)
}

// Two Caddy instances with store redis: retries of one create sent at once
// through both apply it once.
func TestIdempotencyAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	backend := &slowCreates{delay: 200 * time.Millisecond}
	upstream := startBackend(t, backend)
	opts := redisOpts(srv, "\t\tidempotency")
	a, b := startInstance(t, guardSite(upstream, opts)), startInstance(t, guardSite(upstream, opts))

	answers := make([]response, 8)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range answers {
		base := []string{a.base, b.base}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			answers[i] = send(t, "POST", base+"/orders", "x", `Idempotency-Key: "across-1"`)
		}()
	}
	close(start)
	wg.Wait()
	var created []response
	for _, r := range answers {
		switch r.status {
		case http.StatusCreated:
			created = append(created, r)
		case http.StatusConflict:
		default:
			t.Errorf("answer %d %s", r.status, r.body)
		}
	}
	if n := backend.created.Load(); n != 1 {
		t.Fatalf("8 POSTs with one key through two instances created %d records", n)
	}
	for _, r := range []response{send(t, "POST", a.base+"/orders", "x", `Idempotency-Key: "across-1"`), send(t, "POST", b.base+"/orders", "x", `Idempotency-Key: "across-1"`)} {
		if r.status != http.StatusCreated || r.body != `{"id":1}` || r.header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("later retry: %d %v %q", r.status, r.header, r.body)
		}
	}
	t.Logf("%d of 8 got 201, the others 409 in flight", len(created))
}

// An instance killed while it serves a request with a key frees the key
// after claim_ttl, not after the replay ttl.
func TestIdempotencyKilledInstanceFreesKeyAfterClaimTTL(t *testing.T) {
	srv := redistest.Start(t)
	backend := &slowCreates{hung: make(chan struct{}, 1), release: make(chan struct{})}
	defer close(backend.release)
	upstream := startBackend(t, backend)
	opts := redisOpts(srv, "\t\tidempotency {\n\t\t\tclaim_ttl 1s\n\t\t\tttl 1h\n\t\t}")
	a, b := startInstance(t, guardSite(upstream, opts)), startInstance(t, guardSite(upstream, opts))
	const key = `Idempotency-Key: "killed-1"`

	go func() {
		req, _ := http.NewRequest("POST", a.base+"/orders", strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", `"killed-1"`)
		req.Header.Set("X-Hang", "1")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-backend.hung
	// A live request's claim is renewed: three claim TTLs later it holds.
	time.Sleep(3 * time.Second)
	if r := send(t, "POST", b.base+"/orders", "x", key); r.status != http.StatusConflict {
		t.Fatalf("retry while the first runs: %d %s", r.status, r.body)
	}
	a.kill()
	killed := time.Now()
	for deadline := killed.Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r := send(t, "POST", b.base+"/orders", "x", key)
		if r.status == http.StatusCreated {
			if r.header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("replayed an answer nobody got: %v", r.header)
			}
			break
		}
		if r.status != http.StatusConflict || time.Now().After(deadline) {
			t.Fatalf("retry after the instance died: %d %s", r.status, r.body)
		}
	}
	t.Logf("the key was free again %v after its instance was killed (claim_ttl 1s, ttl 1h)", time.Since(killed).Round(10*time.Millisecond))
}
