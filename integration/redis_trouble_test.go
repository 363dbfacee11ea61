package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/writeguard/caddy-writeguard/examples/backend"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

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
