package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// testCaddy builds Caddy with write_guard once per test run: tests of
// several instances need several processes.
var testCaddy = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "write_guard-testcaddy-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "./testcaddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building Caddy: %v\n%s", err, out)
	}
	return bin, nil
})

// instance is a Caddy process of its own.
type instance struct {
	base, admin string
	cmd         *exec.Cmd
}

// startInstance runs a Caddy process serving site (a site block's body) on
// loopback until the test ends.
func startInstance(t *testing.T, site string) *instance {
	t.Helper()
	bin, err := testCaddy()
	if err != nil {
		t.Fatal(err)
	}
	port, adminPort := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	storage file_system %s
}
http://127.0.0.1:%d {
	bind 127.0.0.1
%s
}
`, adminPort, filepath.Dir(cfg), port, site)), 0o600)
	inst := &instance{
		base:  fmt.Sprintf("http://127.0.0.1:%d", port),
		admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort),
		cmd:   exec.Command(bin, "run", "--config", cfg, "--adapter", "caddyfile"),
	}
	logs := &strings.Builder{}
	inst.cmd.Stderr = &lockedWriter{w: logs}
	if err := inst.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		inst.kill()
		if t.Failed() {
			t.Logf("Caddy on %s logged:\n%s", inst.base, inst.cmd.Stderr.(*lockedWriter).String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(inst.admin + "/config/"); err == nil {
			resp.Body.Close()
			return inst
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddy on %s did not start:\n%s", inst.base, inst.cmd.Stderr.(*lockedWriter).String())
		}
	}
}

// kill ends the process at once, as a crash would.
func (i *instance) kill() {
	if i.cmd.Process != nil && i.cmd.ProcessState == nil {
		i.cmd.Process.Kill()
		i.cmd.Wait()
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// guardSite is a site block body: write_guard with opts, in front of
// upstream.
func guardSite(upstream, opts string) string {
	return fmt.Sprintf("\twrite_guard {\n\t\tkey {http.request.uri.path}\n%s\n\t}\n\treverse_proxy %s\n", opts, upstream)
}

// cacheKnows waits until the instance's own cache holds a version of key.
func (i *instance) cacheKnows(t *testing.T, key string) {
	t.Helper()
	waitLearnedAt(t, i.admin, key)
}

func send(t *testing.T, method, url, body string, headers ...string) response {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Set(name, strings.TrimSpace(value))
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// One instance's cache does not see the other's writes: with store memory a
// write through B naming the version A just replaced is let through, with
// store redis it is refused.
func TestInstancesShareVersions(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		store string
		opts  string
	}{
		{"memory", ""},
		{"redis", redisOpts(srv, "")},
	} {
		t.Run(tc.store, func(t *testing.T) {
			store := newStore(map[string]string{"/doc": "v1"})
			upstream := startBackend(t, store)
			a, b := startInstance(t, guardSite(upstream, tc.opts)), startInstance(t, guardSite(upstream, tc.opts))

			// B knows v1 from a write of its own.
			tag0 := send(t, "GET", b.base+"/doc", "").header.Get("ETag")
			tag1 := send(t, "PUT", b.base+"/doc", "v1 by B", "If-Match: "+tag0).header.Get("ETag")
			b.cacheKnows(t, "/doc")
			// A replaces it.
			if r := send(t, "PUT", a.base+"/doc", "v2 by A", "If-Match: "+tag1); r.status != 200 {
				t.Fatalf("A's write: %d %s", r.status, r.body)
			}
			// A client that read v1 writes through B.
			r := send(t, "PUT", b.base+"/doc", "v3 over v1", "If-Match: "+tag1)
			got := mustBody(t, store, "/doc")
			if tc.store == "memory" {
				if r.status != 200 || got != "v3 over v1" {
					t.Fatalf("store memory: %d, backend holds %q; the lost update this test shows did not happen", r.status, got)
				}
				t.Logf("store memory: A's write was lost: B let through a write naming the version A had replaced")
				return
			}
			if r.status != http.StatusPreconditionFailed || got != "v2 by A" {
				t.Fatalf("store redis: %d, backend holds %q; want 412 and A's write kept", r.status, got)
			}
		})
	}
}

// The lost-update workload, with every client's reads and writes sent to
// the two instances in turn.
func TestLostUpdatesAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		store string
		opts  string
	}{
		{"memory", ""},
		{"redis", redisOpts(srv, "")},
	} {
		t.Run(tc.store, func(t *testing.T) {
			resources := []string{"/n/1", "/n/2", "/n/3"}
			docs := map[string]string{}
			for _, r := range resources {
				docs[r] = ""
			}
			store := newStore(docs)
			store.WriteDelay = 2 * time.Millisecond
			upstream := startBackend(t, store)
			a, b := startInstance(t, guardSite(upstream, tc.opts)), startInstance(t, guardSite(upstream, tc.opts))
			wl := &workload{
				bases:     []string{a.base, b.base},
				resources: resources,
				clients:   12,
				perClient: 12,
				deadline:  time.Now().Add(60 * time.Second),
			}
			wl.run(t)
			if tc.store == "redis" {
				wl.requireNoneLost(t, store, "two instances, store redis")
				return
			}
			lost, acked := wl.lost(t, store)
			t.Logf("two instances, store memory: %d of %d acknowledged writes lost, %d writes overlapped at the backend", lost, acked, store.Overlaps())
			if lost == 0 && store.Overlaps() == 0 {
				t.Errorf("store memory on two instances lost nothing and never overlapped: the workload does not show what store redis is for")
			}
		})
	}
}

// Two instances on different ports serving one site with the default key,
// through store redis: both name each resource alike, so their writes are
// serialized with each other.
func TestInstancesOnOtherPortsShareDefaultKeys(t *testing.T) {
	srv := redistest.Start(t)
	resources := []string{"/n/1", "/n/2", "/n/3"}
	docs := map[string]string{}
	for _, r := range resources {
		docs[r] = ""
	}
	store := newStore(docs)
	store.WriteDelay = 2 * time.Millisecond
	upstream := startBackend(t, store)
	site := fmt.Sprintf("\twrite_guard {\n%s\n\t}\n\treverse_proxy %s\n", redisOpts(srv, ""), upstream)
	a, b := startInstance(t, site), startInstance(t, site)
	wl := &workload{
		bases:     []string{a.base, b.base},
		resources: resources,
		clients:   12,
		perClient: 12,
		deadline:  time.Now().Add(60 * time.Second),
	}
	wl.run(t)
	wl.requireNoneLost(t, store, "two instances on two ports, default key, store redis")
}

// An instance killed while its write holds a resource's lock: the lock
// expires after lock_ttl and the resource can be written again.
func TestKilledInstanceLockExpires(t *testing.T) {
	srv := redistest.Start(t)
	store := newStore(map[string]string{"/doc": "v1"})
	entered, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	hanging := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.Header.Get("X-Hang") != "" {
			entered <- struct{}{}
			<-release // never applied
			return
		}
		store.ServeHTTP(w, r)
	})
	upstream := startBackend(t, hanging)
	opts := redisOpts(srv, "\t\tlock_timeout 300ms")
	a, b := startInstance(t, guardSite(upstream, opts)), startInstance(t, guardSite(upstream, opts))
	tag := send(t, "GET", b.base+"/doc", "").header.Get("ETag")

	go func() {
		req, _ := http.NewRequest("PUT", a.base+"/doc", strings.NewReader("never"))
		req.Header.Set("If-Match", tag)
		req.Header.Set("X-Hang", "1")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	a.kill()
	killed := time.Now()

	if r := send(t, "PUT", b.base+"/doc", "v2", "If-Match: "+tag); r.status != http.StatusConflict {
		t.Fatalf("write while the dead instance's lock lives: %d %s", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		r := send(t, "PUT", b.base+"/doc", "v2", "If-Match: "+tag)
		if r.status == 200 {
			break
		}
		if r.status != http.StatusConflict || ctx.Err() != nil {
			t.Fatalf("write after the dead instance's lock should have expired: %d %s", r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the resource was writable again %v after its holder was killed (lock_ttl 1s)", time.Since(killed).Round(10*time.Millisecond))
	if got := mustBody(t, store, "/doc"); got != "v2" {
		t.Fatalf("backend holds %q", got)
	}
}

// heldLateStore applies the PUTs carrying X-Late only once release is
// closed, long after the guard gave up on them, as a legacy backend that
// ignores a closed connection does; applied is closed once it did.
type heldLateStore struct {
	store   http.Handler
	release chan struct{}
	applied chan struct{}
	once    sync.Once
}

func (l *heldLateStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut || r.Header.Get("X-Late") == "" {
		l.store.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	<-l.release
	replay, _ := http.NewRequest(http.MethodPut, r.URL.String(), strings.NewReader(string(body)))
	l.store.ServeHTTP(discardWriter{}, replay)
	l.once.Do(func() { close(l.applied) })
}

// With store redis, a write abandoned by one instance and applied late by
// the upstream must not be overwritten through another instance by a write
// naming a version from before it landed: every instance checks that
// resource's writes with the upstream for revalidate_abandoned, as the
// abandoning one does.
func TestAbandonedWriteLandingLateIsNotOverwrittenThroughAnotherInstance(t *testing.T) {
	srv := redistest.Start(t)
	store := newStore(map[string]string{"/doc": `{"v":0}`})
	late := &heldLateStore{store: store, release: make(chan struct{}), applied: make(chan struct{})}
	upstream := startBackend(t, late)
	site := guardSite(upstream, redisOpts(srv, "\t\twrite_timeout 300ms"))
	a, b := startInstance(t, site), startInstance(t, site)

	v0 := send(t, http.MethodGet, a.base+"/doc", "").header.Get("Etag")
	if r := send(t, http.MethodPut, a.base+"/doc", `{"v":"late"}`, "If-Match: "+v0, "X-Late: 1"); r.status != http.StatusGatewayTimeout {
		t.Fatalf("abandoned write through A: %d %s, want 504", r.status, r.body)
	}
	// Before the late write lands, a write through B is checked against
	// the upstream, which still has v0.
	r := send(t, http.MethodPut, b.base+"/doc", `{"v":"b"}`, "If-Match: "+v0)
	if r.status != http.StatusOK {
		t.Fatalf("write through B before the late write landed: %d %s", r.status, r.body)
	}
	vb := r.header.Get("Etag")
	close(late.release)
	select {
	case <-late.applied:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never applied the late write")
	}
	// vb is not the current version any more.
	if r := send(t, http.MethodPut, b.base+"/doc", `{"v":"stale"}`, "If-Match: "+vb); r.status != http.StatusPreconditionFailed {
		t.Errorf("write through B naming the version the late write replaced: %d %s, want 412", r.status, r.body)
	}
	if got := mustBody(t, store, "/doc"); got != `{"v":"late"}` {
		t.Errorf("backend holds %s, want the late write", got)
	}
}

// Redis stopped in the middle of a workload: writes are refused with 503
// while it is away, reads go on, nothing is lost, and writes resume when it
// is back.
func TestRedisStoppedMidWorkload(t *testing.T) {
	srv := redistest.Start(t)
	resources := []string{"/n/1", "/n/2"}
	store := newStore(map[string]string{"/n/1": "", "/n/2": ""})
	store.WriteDelay = time.Millisecond
	upstream := startBackend(t, store)
	a := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	b := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	wl := &workload{
		bases:     []string{a.base, b.base},
		resources: resources,
		clients:   6,
		perClient: 30,
		deadline:  time.Now().Add(60 * time.Second),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wl.run(t)
	}()
	time.Sleep(300 * time.Millisecond)
	srv.Stop()

	r := send(t, "PUT", a.base+"/n/1", "x", `If-Match: "whatever"`)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !strings.Contains(r.body, "store-unavailable") {
		t.Errorf("write with Redis down: %d, Retry-After %q, %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	if r := send(t, "GET", b.base+"/n/1", ""); r.status != 200 {
		t.Errorf("read with Redis down: %d", r.status)
	}
	time.Sleep(500 * time.Millisecond)
	srv.Restart()
	<-done
	wl.requireNoneLost(t, store, "Redis stopped and restarted")
	if wl.unavailable.Load() == 0 {
		t.Error("no write of the workload was refused while Redis was down")
	}
	t.Logf("%d writes answered 503 while Redis was down", wl.unavailable.Load())
}

// With on_store_error local, an instance that cannot reach Redis guards
// writes by itself.
func TestRedisDownLocalFallback(t *testing.T) {
	srv := redistest.Start(t)
	store := newStore(map[string]string{"/doc": "v1"})
	a := startInstance(t, guardSite(startBackend(t, store), redisOpts(srv, "\t\ton_store_error local")))
	srv.Stop()
	tag := send(t, "GET", a.base+"/doc", "").header.Get("ETag")
	if r := send(t, "PUT", a.base+"/doc", "v2", "If-Match: "+tag); r.status != 200 {
		t.Fatalf("write with Redis down, on_store_error local: %d %s", r.status, r.body)
	}
	if r := send(t, "PUT", a.base+"/doc", "v3", "If-Match: "+tag); r.status != http.StatusPreconditionFailed {
		t.Fatalf("stale write with Redis down, on_store_error local: %d", r.status)
	}
}

// With on_store_error local, an instance that wrote while Redis was away
// makes Redis forget that resource's version once it is back: otherwise
// another instance would trust the version the write replaced.
func TestWritesWithoutRedisAreForgottenWhenItReturns(t *testing.T) {
	srv := redistest.StartDurable(t)
	store := newStore(map[string]string{"/doc": "v0"})
	upstream := startBackend(t, store)
	opts := fmt.Sprintf("\t\tstore redis %s {\n\t\t\tlock_ttl 1s\n\t\t\ttimeout 300ms\n\t\t}\n\t\ton_store_error local", srv.Addr)
	a, b := startInstance(t, guardSite(upstream, opts)), startInstance(t, guardSite(upstream, opts))

	tag0 := send(t, "GET", a.base+"/doc", "").header.Get("ETag")
	tag1 := send(t, "PUT", a.base+"/doc", "v1", "If-Match: "+tag0).header.Get("ETag")
	if tag1 == "" {
		t.Fatal("no tag for v1")
	}
	srv.Stop() // Redis keeps v1 as the current version
	if r := send(t, "PUT", a.base+"/doc", "v2", "If-Match: "+tag1); r.status != 200 {
		t.Fatalf("write without Redis: %d %s", r.status, r.body)
	}
	srv.Restart()

	rdb := srv.Client()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n, err := rdb.HExists(context.Background(), "write_guard:ver:{/doc}", "e").Result()
		if err == nil && !n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis still holds the version the write without it replaced")
		}
	}
	if r := send(t, "PUT", b.base+"/doc", "v3 over v1", "If-Match: "+tag1); r.status != http.StatusPreconditionFailed {
		t.Fatalf("write through the other instance naming the replaced version: %d", r.status)
	}
	if got := mustBody(t, store, "/doc"); got != "v2" {
		t.Fatalf("backend holds %q", got)
	}
}

// A lock that Redis loses while its write runs (here FLUSHALL) lets a
// second instance in at once: both writes were checked against the same
// version, and one of them is lost. Nothing in Redis is left to stop that.
// What must not follow is a second loss: the second writer's version,
// recorded after the first write landed over it, must not be trusted.
func TestRedisLockVanishedUnderWrite(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	store := newStore(map[string]string{"/doc": "v0"})
	aEntered, aGo := make(chan struct{}), make(chan struct{})
	bApplied, bGo := make(chan struct{}), make(chan struct{})
	held := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hold := r.Header.Get("X-Hold")
		if r.Method != http.MethodPut {
			hold = "" // the guard's version checks carry the write's fields
		}
		switch hold {
		case "before": // applied once aGo is closed
			close(aEntered)
			<-aGo
			store.ServeHTTP(w, r)
		case "after": // applied at once, answered once bGo is closed
			rec := httptest.NewRecorder()
			store.ServeHTTP(rec, r)
			close(bApplied)
			<-bGo
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
		default:
			store.ServeHTTP(w, r)
		}
	})
	upstream := startBackend(t, held)
	var letA, letB sync.Once
	t.Cleanup(func() { // before the backend closes, which waits for its handlers
		letA.Do(func() { close(aGo) })
		letB.Do(func() { close(bGo) })
	})
	a := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	b := startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	tag0 := send(t, "GET", a.base+"/doc", "").header.Get("ETag")

	// A's write is checked against v0 and forwarded; the upstream has not
	// applied it yet when Redis loses the lock.
	aDone := make(chan response)
	go func() { aDone <- send(t, "PUT", a.base+"/doc", "by A", "If-Match: "+tag0, "X-Hold: before") }()
	<-aEntered
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// B gets the lock at once, asks the upstream (v0: A's write is not
	// applied) and forwards its write, which is applied first.
	bDone := make(chan response)
	go func() { bDone <- send(t, "PUT", b.base+"/doc", "by B", "If-Match: "+tag0, "X-Hold: after") }()
	<-bApplied
	// A's write lands over B's and A releases; then B records its version.
	letA.Do(func() { close(aGo) })
	if r := <-aDone; r.status != 200 {
		t.Fatalf("A: %d %s", r.status, r.body)
	}
	letB.Do(func() { close(bGo) })
	rb := <-bDone
	if rb.status != 200 {
		t.Fatalf("B: %d %s", rb.status, rb.body)
	}
	if got := mustBody(t, store, "/doc"); got != "by A" {
		t.Fatalf("backend holds %q after both writes", got)
	}
	t.Logf("both writes acknowledged, B's lost: the loss a lock that vanishes under its write allows")

	// A client that has B's answer writes on top of it. The resource holds
	// A's write, so this must be refused, not trusted on Redis's word.
	r := send(t, "PUT", a.base+"/doc", "by C over B", "If-Match: "+rb.header.Get("ETag"))
	got := mustBody(t, store, "/doc")
	if r.status != http.StatusPreconditionFailed || got != "by A" {
		t.Fatalf("write naming B's version: %d, backend holds %q; want 412 and A's write kept", r.status, got)
	}
	left, err := rdb.PTTL(context.Background(), "write_guard:untrusted:{/doc}").Result()
	if err != nil || left <= 0 {
		t.Errorf("the resource is not marked untrusted in Redis (%v, %v)", left, err)
	}
	if logs := a.cmd.Stderr.(*lockedWriter).String(); !strings.Contains(logs, "vanished before its TTL ran out") || strings.Contains(logs, "renewals failed") {
		t.Errorf("A did not log that its lock vanished:\n%s", logs)
	}
}

// fillUnrelated writes unrelated keys into Redis until stop is closed, as
// another application sharing the server would (with ttl, a cache): under
// maxmemory, every batch makes Redis evict keys, the guard's among them.
func fillUnrelated(rdb *redis.Client, stop <-chan struct{}, ttl time.Duration) {
	value := strings.Repeat("x", 512)
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		pipe := rdb.Pipeline()
		for i := range 50 {
			pipe.Set(context.Background(), fmt.Sprintf("unrelated:%d:%d", n, i), value, ttl)
		}
		pipe.Exec(context.Background())
		time.Sleep(2 * time.Millisecond)
	}
}

func evictedKeys(t *testing.T, rdb *redis.Client) string {
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "evicted_keys:"); ok {
			return v
		}
	}
	return "?"
}

// logged counts the log lines of the instances that contain snippet.
func logged(snippet string, insts ...*instance) int {
	n := 0
	for _, i := range insts {
		n += strings.Count(i.cmd.Stderr.(*lockedWriter).String(), snippet)
	}
	return n
}

// redisWorkload runs the lost-update workload through two instances that
// share srv, while trouble does what it does to Redis until the workload
// ends. Each write takes the backend 10 ms, so that a lock Redis drops
// while a write runs is likely to let a second write in.
func redisWorkload(t *testing.T, srv *redistest.Server, trouble func(stop <-chan struct{})) (wl *workload, store *backend.Store, a, b *instance) {
	t.Helper()
	resources := []string{"/n/1", "/n/2", "/n/3"}
	store = newStore(map[string]string{"/n/1": "", "/n/2": "", "/n/3": ""})
	store.WriteDelay = 10 * time.Millisecond
	upstream := startBackend(t, store)
	a = startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	b = startInstance(t, guardSite(upstream, redisOpts(srv, "")))
	wl = &workload{
		bases:     []string{a.base, b.base},
		resources: resources,
		clients:   12,
		perClient: 40,
		deadline:  time.Now().Add(120 * time.Second),
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		trouble(stop)
	}()
	wl.run(t)
	close(stop)
	<-stopped
	return wl, store, a, b
}

// Log lines the tests look for.
const (
	logEvicts   = "Redis may evict write_guard's keys"
	logPutBack  = "it was put back before another instance could take the lock"
	logVanished = "its key vanished before its TTL ran out"
	logExpired  = "not renewed within lock_ttl"
	logOldStyle = "renewals failed"
)

// lossesReported checks what the guard promises whenever Redis drops its
// keys: a lost update is never silent (the holder whose lock vanished
// reports it), and lost locks are named for what happened to them, not
// blamed on renewals. It returns the losses and the locks put back.
func lossesReported(t *testing.T, wl *workload, store *backend.Store, a, b *instance, setup string) (lost, putBack int) {
	t.Helper()
	lost, acked := wl.lost(t, store)
	putBack, vanished := logged(logPutBack, a, b), logged(logVanished, a, b)
	t.Logf("%s: %d of %d acknowledged writes lost, %d overlapped at the backend; %d lock keys put back, %d locks vanished (logged); %d writes refused and retried",
		setup, lost, acked, store.Overlaps(), putBack, vanished, wl.refused.Load())
	if lost > vanished {
		t.Errorf("%d updates lost, only %d lost locks reported", lost, vanished)
	}
	if putBack+vanished == 0 {
		t.Errorf("Redis dropped no lock, or none was reported: the test shows nothing")
	}
	if n := logged(logExpired, a, b) + logged(logOldStyle, a, b); n != 0 {
		t.Errorf("%d lost locks blamed on renewals, which never failed", n)
	}
	if want := wl.clients * wl.perClient; acked != want {
		t.Errorf("only %d of %d writes were acknowledged before the deadline", acked, want)
	}
	return lost, putBack
}

// Redis under memory pressure, shared with another application, evicts the
// guard's keys. Each instance warns at start that this Redis may evict
// them. A lock key evicted alone is put back, so nothing is lost: that is
// every eviction under volatile-ttl with a cache's keys beside the guard's
// (the lock keys expire soonest, the versions with the copies of their
// holders last). Under allkeys-random a lock and its copy can both go
// during one write, which can let a second write in; whatever that loses
// is reported.
func TestRedisEvictionDuringWorkload(t *testing.T) {
	for _, tc := range []struct {
		policy  string
		fillTTL time.Duration // of the other application's keys
	}{
		{"volatile-ttl", time.Minute},
		{"allkeys-random", 0},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client()
			ctx := context.Background()
			if err := rdb.ConfigSet(ctx, "maxmemory", "3mb").Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.ConfigSet(ctx, "maxmemory-policy", tc.policy).Err(); err != nil {
				t.Fatal(err)
			}
			wl, store, a, b := redisWorkload(t, srv, func(stop <-chan struct{}) { fillUnrelated(rdb, stop, tc.fillTTL) })
			t.Logf("%s keys evicted", evictedKeys(t, rdb))
			for _, i := range []*instance{a, b} {
				if logged(logEvicts, i) == 0 {
					t.Errorf("the instance on %s did not warn that Redis may evict its keys", i.base)
				}
			}
			lost, putBack := lossesReported(t, wl, store, a, b, tc.policy)
			if tc.policy == "volatile-ttl" && (lost != 0 || putBack == 0) {
				t.Errorf("%d updates lost, %d lock keys put back: every evicted lock key should have been put back", lost, putBack)
			}
		})
	}
}

// FLUSHALL during the workload drops every lock at once, with the copies:
// writes in progress can overlap the next ones, and whatever that loses is
// reported.
func TestRedisFlushDuringWorkload(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	flushes := 0
	wl, store, a, b := redisWorkload(t, srv, func(stop <-chan struct{}) {
		for range 10 {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if err := rdb.FlushAll(context.Background()).Err(); err != nil {
				t.Error(err)
				return
			}
			flushes++
		}
	})
	t.Logf("%d flushes", flushes)
	lossesReported(t, wl, store, a, b, "FLUSHALL")
}
