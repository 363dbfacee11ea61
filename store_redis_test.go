package writeguard

import (
	"context"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/writeguard/caddy-writeguard/examples/backend"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
	"github.com/writeguard/caddy-writeguard/redisstore"
)

// A write whose lock vanished under it (flushed; or evicted, with the copy
// of its holder) is logged as such, not as failed renewals, and leaves its resource untrusted in Redis
// for untrustedFor, however short cache_ttl is.
func TestLockLostIsNamedAndDistrusted(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Handler
		want time.Duration
	}{
		{"defaults", Handler{}, DefaultCacheTTL},
		{"short cache_ttl", Handler{CacheTTL: caddy.Duration(time.Second), WriteTimeout: caddy.Duration(5 * time.Second)}, 5*time.Second + redisstore.DefaultLockTTL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			h, logs := redisHandler(t, srv, &tc.h)
			if got := h.store.(*redisStore).untrustedFor(); got != tc.want {
				t.Fatalf("untrustedFor() = %v, want %v", got, tc.want)
			}
			store := backend.New()
			store.Put("/doc", []byte("v1"))
			tag := serve(t, h, storeHandler(store), "GET", "/doc", "").Header().Get("ETag")
			next, entered, release := hangingWrites(store)
			done := make(chan int)
			go func() { done <- serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag).Code }()
			<-entered
			ctx := context.Background()
			if err := srv.Client().FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			close(release)
			if code := <-done; code != 200 {
				t.Fatalf("PUT: %d", code)
			}

			left, err := h.store.shared().Untrusted(ctx, "example.com/doc")
			if err != nil || left <= tc.want*3/4 || left > tc.want {
				t.Fatalf("untrusted for %v (%v), want about %v", left, err, tc.want)
			}
			if _, known, _, _, _ := h.store.shared().Peek(ctx, "example.com/doc"); known {
				t.Fatal("the write whose lock vanished recorded its version")
			}
			lost := logs.FilterLevelExact(zapcore.ErrorLevel).FilterMessageSnippet("vanished").All()
			if len(lost) != 1 || lost[0].ContextMap()["key"] != "example.com/doc" {
				t.Fatalf("logged %v", logs.All())
			}
			for _, want := range []string{"noeviction", "FLUSHALL"} {
				if !strings.Contains(lost[0].Message, want) {
					t.Errorf("the log does not mention %s: %q", want, lost[0].Message)
				}
			}
			if n := logs.FilterMessageSnippet("renew").Len(); n != 0 {
				t.Errorf("%d logs blame renewals", n)
			}
			if d := h.store.shared().Deployment(); d.LocksVanished != 1 {
				t.Errorf("counted %d vanished locks", d.LocksVanished)
			}
		})
	}
}

// A lock key evicted alone is put back: the write goes on, its version is
// kept, and the log says that Redis dropped a key.
func TestLockKeyPutBackIsLogged(t *testing.T) {
	srv := redistest.Start(t)
	h, logs := redisHandler(t, srv, &Handler{})
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	tag := serve(t, h, storeHandler(store), "GET", "/doc", "").Header().Get("ETag")
	next, entered, release := hangingWrites(store)
	done := make(chan int)
	go func() { done <- serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag).Code }()
	<-entered
	ctx := context.Background()
	if err := srv.Client().Del(ctx, "write_guard:lock:{example.com/doc}").Err(); err != nil {
		t.Fatal(err)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Fatalf("PUT: %d", code)
	}
	if v, known, _, _, _ := h.store.shared().Peek(ctx, "example.com/doc"); !known || v.ETag != store.ETagOf([]byte("v2")) {
		t.Fatalf("version %+v known %v", v, known)
	}
	if left, _ := h.store.shared().Untrusted(ctx, "example.com/doc"); left != 0 {
		t.Fatal("untrusted although nothing was lost")
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("put back").Len(); n != 1 || logs.FilterLevelExact(zapcore.ErrorLevel).Len() != 0 {
		t.Fatalf("logged %v", logs.All())
	}
}

// A lock that expired unrenewed is logged as that.
func TestLockExpiredIsNamed(t *testing.T) {
	srv := redistest.Start(t)
	h, logs := redisHandler(t, srv, &Handler{})
	h.store.(*redisStore).lockLost("example.com/doc", redisstore.ErrLockExpired)
	got := logs.FilterLevelExact(zapcore.ErrorLevel).All()
	if len(got) != 1 || !strings.Contains(got[0].Message, "not renewed within lock_ttl") || strings.Contains(got[0].Message, "vanished") {
		t.Fatalf("logged %v", logs.All())
	}
}

// distrustShared makes the next write ask the upstream although Redis knew
// the version; without Redis it does nothing; with Redis unreachable the
// version is forgotten once Redis answers.
func TestDistrustShared(t *testing.T) {
	newTestHandler(t, &Handler{}).store.distrust("example.com/doc", time.Minute)

	srv := redistest.Start(t)
	h, _ := redisHandler(t, srv, &Handler{Store: &StoreConfig{Timeout: caddy.Duration(200 * time.Millisecond)}})
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	next, probes := countProbes(storeHandler(store))
	tag := serve(t, h, next, "GET", "/doc", "").Header().Get("ETag")
	tag = serve(t, h, next, "PUT", "/doc", "v2", "If-Match: "+tag).Header().Get("ETag")
	before := *probes
	tag = serve(t, h, next, "PUT", "/doc", "v3", "If-Match: "+tag).Header().Get("ETag")
	if *probes != before {
		t.Fatal("a write whose version Redis knew asked the upstream")
	}

	h.store.distrust("example.com/doc", time.Minute)
	if left, _ := h.store.shared().Untrusted(context.Background(), "example.com/doc"); left <= 0 {
		t.Fatal("not untrusted")
	}
	before = *probes
	if w := serve(t, h, next, "PUT", "/doc", "v4", "If-Match: "+tag); w.Code != 200 || *probes != before+1 {
		t.Fatalf("write to an untrusted resource: %d, %d probes", w.Code, *probes-before)
	}

	srv.Stop()
	h.store.distrust("example.com/other", time.Minute)
	if !h.store.(*redisStore).unseen.pending() {
		t.Fatal("a resource Redis could not be told to distrust is not remembered")
	}
}

// What offers Redis the writes it did not see stops when its client is
// closed (a reload that changes the store's settings), instead of failing
// every 250 ms for ever.
func TestUnseenWritesStopWithTheirClient(t *testing.T) {
	store, key, err := attachRedis(StoreConfig{Backend: "redis", Addresses: []string{"127.0.0.1:1"}, Timeout: caddy.Duration(50 * time.Millisecond)}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	store.unseen.add(zap.NewNop(), "/doc")
	retrying := func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*unseenWrites).retry")
	}
	for deadline := time.Now().Add(5 * time.Second); !retrying(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("nothing offers the unseen write to Redis")
		}
	}
	if _, err := pool.Delete(key); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); retrying(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still offering writes to a closed client")
		}
	}
}

// While Redis is away, its going and its coming back are logged once each,
// without resource keys; the writes in between are not.
func TestRedisDownIsLoggedOnce(t *testing.T) {
	srv := redistest.Start(t)
	store := backend.New()
	store.Put("/doc", []byte("v1"))
	h := newTestHandler(t, &Handler{Store: &StoreConfig{Backend: "redis", Addresses: []string{srv.Addr}, Timeout: caddy.Duration(100 * time.Millisecond)}})
	core, logs := observer.New(zapcore.InfoLevel)
	h.logger = zap.New(core)
	srv.Stop()
	for range 3 {
		if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code != http.StatusServiceUnavailable {
			t.Fatalf("write with Redis down: %d %s", w.Code, w.Body)
		}
	}
	srv.Restart()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if w := serve(t, h, storeHandler(store), "PUT", "/doc", "v2", "If-Match: "+store.ETagOf([]byte("v1"))); w.Code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes never went through again")
		}
	}
	var down, up int
	for _, e := range logs.All() {
		if _, ok := e.ContextMap()["key"]; ok {
			t.Errorf("logged a resource key: %q %v", e.Message, e.ContextMap())
		}
		switch {
		case strings.Contains(e.Message, "Redis unavailable"):
			down++
		case strings.Contains(e.Message, "Redis reachable again; writes"):
			up++
		}
	}
	if down != 1 || up != 1 {
		t.Errorf("logged Redis going %d times and coming back %d times, want once each: %v", down, up, logs.All())
	}
}

// redisStoreReports lists every Redis store in use with what its check
// found: eviction possible, impossible, or unknown when CONFIG is refused.
func TestRedisStoreReports(t *testing.T) {
	evicting, safe, closed := redistest.Start(t), redistest.Start(t), redistest.Start(t)
	ctx := context.Background()
	evicting.Client().ConfigSet(ctx, "maxmemory", "3mb")
	evicting.Client().ConfigSet(ctx, "maxmemory-policy", "allkeys-random")
	if err := closed.Client().Do(ctx, "ACL", "SETUSER", "guard", "on", ">secret", "~*", "&*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	redisHandler(t, evicting, &Handler{})
	redisHandler(t, safe, &Handler{Store: &StoreConfig{KeyPrefix: "other:"}})
	redisHandler(t, closed, &Handler{Store: &StoreConfig{Username: "guard", Password: "secret"}})

	want := map[string]string{evicting.Addr: "possible", safe.Addr: "impossible", closed.Addr: "unknown"}
	var got map[string]redisReport
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got = map[string]redisReport{}
		for _, r := range redisStoreReports() {
			if r.Checked != nil && len(r.Addresses) == 1 {
				got[r.Addresses[0]] = r
			}
		}
		if len(got) == len(want) || time.Now().After(deadline) {
			break
		}
	}
	for addr, eviction := range want {
		r, ok := got[addr]
		if !ok || r.Eviction != eviction {
			t.Errorf("%s: %+v, want eviction %s", addr, r, eviction)
		}
	}
	if r := got[evicting.Addr]; r.MaxmemoryPolicy != "allkeys-random" || r.Maxmemory == nil || *r.Maxmemory != 3<<20 || r.KeyPrefix != "write_guard:" {
		t.Errorf("evicting: %+v", r)
	}
	if r := got[safe.Addr]; r.MaxmemoryPolicy != "noeviction" || r.Maxmemory == nil || *r.Maxmemory != 0 || r.KeyPrefix != "other:" {
		t.Errorf("safe: %+v", r)
	}
	if r := got[closed.Addr]; !strings.Contains(r.Error, "NOPERM") || r.Maxmemory != nil {
		t.Errorf("closed: %+v", r)
	}
}

// Attaching a client replaces placeholders in a copy, and the pool's key
// carries no password.
func TestAttachRedisLeavesTheConfigAlone(t *testing.T) {
	t.Setenv("WRITE_GUARD_TEST_REDIS", "127.0.0.1:1")
	cfg := StoreConfig{Backend: "redis", Addresses: []string{"{env.WRITE_GUARD_TEST_REDIS}"}, Password: "s3cret-password"}
	store, key, err := attachRedis(cfg, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Delete(key)
	if store.Config().Addrs[0] != "127.0.0.1:1" {
		t.Errorf("client dials %v", store.Config().Addrs)
	}
	if cfg.Addresses[0] != "{env.WRITE_GUARD_TEST_REDIS}" {
		t.Errorf("the configuration's address became %q", cfg.Addresses[0])
	}
	if strings.Contains(key, "s3cret-password") {
		t.Errorf("pool key %q carries the password", key)
	}
}
