package redisstore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// checks collects what a store's checks report.
func checks(cfg *Config) <-chan Deployment {
	ch := make(chan Deployment, 16)
	cfg.OnCheck = func(d Deployment) { ch <- d }
	return ch
}

func nextCheck(t *testing.T, ch <-chan Deployment) Deployment {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no check of the deployment was reported")
	}
	panic("unreachable")
}

// waitCheck waits for a reported check that satisfies ok.
func waitCheck(t *testing.T, ch <-chan Deployment, ok func(Deployment) bool) Deployment {
	t.Helper()
	for {
		if d := nextCheck(t, ch); ok(d) {
			return d
		}
	}
}

func configSet(t *testing.T, srv *redistest.Server, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		if err := srv.Client().ConfigSet(context.Background(), kv[i], kv[i+1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// The store checks at once whether Redis may evict its keys, and says so
// for every policy but noeviction once a maxmemory is set: the lock keys
// carry a TTL, so the volatile-* policies evict them too.
func TestDeploymentReportsEviction(t *testing.T) {
	srv := redistest.Start(t)
	configSet(t, srv, "maxmemory", "3mb", "maxmemory-policy", "allkeys-random")
	cfg := Config{}
	ch := checks(&cfg)
	s := newStore(t, srv, cfg)
	d := nextCheck(t, ch)
	if !d.Known || !d.Evicts || d.Policy != "allkeys-random" || d.MaxMemory != 3<<20 || d.Checked.IsZero() {
		t.Fatalf("check at start: %+v", d)
	}
	if got := s.Deployment(); got.Checked != d.Checked || !got.Evicts {
		t.Fatalf("Deployment() = %+v after the check reported %+v", got, d)
	}

	for _, tc := range []struct {
		maxMemory, policy string
		evicts            bool
	}{
		{"3mb", "volatile-lru", true},
		{"3mb", "volatile-ttl", true},
		{"3mb", "allkeys-lfu", true},
		{"3mb", "noeviction", false},
		{"0", "allkeys-random", false}, // no limit: nothing to evict for
	} {
		configSet(t, srv, "maxmemory", tc.maxMemory, "maxmemory-policy", tc.policy)
		d, err := s.CheckDeployment(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !d.Known || d.Evicts != tc.evicts || d.Policy != tc.policy {
			t.Errorf("maxmemory %s, %s: %+v, want evicts %v", tc.maxMemory, tc.policy, d, tc.evicts)
		}
		nextCheck(t, ch)
	}
}

// Managed Redis often refuses CONFIG: the policy is then unknown, which is
// an answer, not a failure.
func TestDeploymentUnknownWhenConfigRefused(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	if err := srv.Client().Do(ctx, "ACL", "SETUSER", "guard", "on", ">secret", "~*", "&*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Username: "guard", Password: "secret"}
	ch := checks(&cfg)
	s := newStore(t, srv, cfg)
	d := nextCheck(t, ch)
	if d.Known || d.Evicts || d.Policy != "" || !strings.Contains(d.Err, "NOPERM") || d.Checked.IsZero() {
		t.Fatalf("check with CONFIG refused: %+v", d)
	}
	// The store works all the same.
	lock(t, s, "/doc").Record(ctx, nil)
}

// A Redis that answers again after it could not be reached is checked
// again: it may have come back configured otherwise.
func TestDeploymentCheckedAgainAfterReconnect(t *testing.T) {
	srv := redistest.Start(t)
	cfg := Config{Timeout: 300 * time.Millisecond}
	ch := checks(&cfg)
	s := newStore(t, srv, cfg)
	if d := nextCheck(t, ch); !d.Known || d.Evicts {
		t.Fatalf("check at start: %+v", d)
	}
	ctx := context.Background()
	srv.Stop()
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping answered with Redis stopped")
	}
	srv.Restart()
	configSet(t, srv, "maxmemory", "64mb", "maxmemory-policy", "allkeys-lru")
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	d := nextCheck(t, ch)
	if !d.Evicts || d.Policy != "allkeys-lru" || d.MaxMemory != 64<<20 {
		t.Fatalf("check after Redis came back: %+v", d)
	}
	if got := s.Deployment(); !got.Evicts || got.Checked != d.Checked {
		t.Fatalf("Deployment() = %+v", got)
	}
}

// A store created while Redis is down reports no check until Redis
// answers, and checks then.
func TestDeploymentCheckedWhenRedisFirstAnswers(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	cfg := Config{Timeout: 300 * time.Millisecond}
	ch := checks(&cfg)
	s := newStore(t, srv, cfg)
	ctx := context.Background()
	// The first check fails; so does this, unless the check is still
	// trying: either way Redis is known to be unreachable.
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping answered with Redis stopped")
	}
	if d := s.Deployment(); !d.Checked.IsZero() {
		t.Fatalf("a check reported %+v with Redis down", d)
	}
	srv.Restart()
	configSet(t, srv, "maxmemory", "3mb", "maxmemory-policy", "volatile-lru")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := s.Ping(ctx); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis did not answer after its restart")
		}
	}
	// A check that ran between the restart and CONFIG SET may come first.
	waitCheck(t, ch, func(d Deployment) bool { return d.Evicts && d.Policy == "volatile-lru" })
}

// A command that times out while its caller still waits (a dial or a read
// that Redis did not answer in time) is Redis failing, and the next answer
// is checked again; one whose caller gave up says nothing of Redis.
func TestTimeoutsMarkRedisUnreachable(t *testing.T) {
	c := &checker{}
	timedOut := fmt.Errorf("dial tcp 127.0.0.1:1: i/o timeout: %w", context.DeadlineExceeded)
	c.observe(context.Background(), timedOut)
	if !c.unreachable.Load() {
		t.Error("a dial that timed out did not mark Redis unreachable")
	}
	c.unreachable.Store(false)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	c.observe(gone, context.Canceled)
	if c.unreachable.Load() {
		t.Error("a caller that gave up marked Redis unreachable")
	}
}
