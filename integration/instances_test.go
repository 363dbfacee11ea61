package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
