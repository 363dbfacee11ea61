package redisstore

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

func newStore(t *testing.T, srv *redistest.Server, cfg Config) *Store {
	t.Helper()
	cfg.Addrs = []string{srv.Addr}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func lock(t *testing.T, s *Store, key string) *Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := s.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// tryLock reports whether key can be locked within d.
func tryLock(t *testing.T, s *Store, key string, d time.Duration) *Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	l, err := s.Lock(ctx, key)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	return l
}

// Two instances (two clients) never hold one resource at once, and a
// waiter gets the lock once it is released.
func TestLockIsExclusiveAcrossClients(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newStore(t, srv, Config{}), newStore(t, srv, Config{})
	la := lock(t, a, "/doc")
	if l := tryLock(t, b, "/doc", 200*time.Millisecond); l != nil {
		t.Fatal("a second client locked a held resource")
	}
	if l := tryLock(t, b, "/other", time.Second); l == nil {
		t.Fatal("another resource was not lockable")
	} else {
		l.Restore(context.Background(), nil)
	}
	got := make(chan *Lease)
	go func() { got <- tryLock(t, b, "/doc", 10*time.Second) }()
	time.Sleep(50 * time.Millisecond)
	if err := la.Restore(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if lb := <-got; lb == nil {
		t.Fatal("the waiter did not get the released lock")
	} else {
		lb.Restore(context.Background(), nil)
	}
}

// Concurrent holders from several clients never overlap.
func TestMutualExclusion(t *testing.T) {
	srv := redistest.Start(t)
	stores := []*Store{newStore(t, srv, Config{}), newStore(t, srv, Config{}), newStore(t, srv, Config{})}
	var inside, overlaps, total atomic.Int64
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			for range 20 {
				l := lock(t, stores[i%len(stores)], "/hot")
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				total.Add(1)
				if err := l.Record(context.Background(), nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if overlaps.Load() != 0 || total.Load() != 240 {
		t.Fatalf("%d overlaps in %d holds", overlaps.Load(), total.Load())
	}
}

func TestVersionFollowsTheLock(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{})
	ctx := context.Background()

	l := lock(t, s, "/doc")
	if _, known := l.Found(); known {
		t.Fatal("a new resource has a version")
	}
	v1 := etagcache.Version{Exists: true, ETag: `"v1"`, LastModified: time.Unix(1700000000, 0).UTC(), Superseded: []string{`"v0"`, `"old"`}}
	if err := l.Record(ctx, &v1); err != nil {
		t.Fatal(err)
	}
	l = lock(t, s, "/doc")
	if got, known := l.Found(); !known || got.ETag != v1.ETag || !got.LastModified.Equal(v1.LastModified) || !got.Exists || !slices.Equal(got.Superseded, v1.Superseded) {
		t.Fatalf("found %+v, %v; want %+v", got, known, v1)
	}
	// While held, the version is out of the store: a holder that dies
	// leaves it unknown rather than stale.
	if _, known, _, locked, err := s.Peek(ctx, "/doc"); err != nil || known || !locked {
		t.Fatalf("while held: known %v, locked %v, %v", known, locked, err)
	}
	if err := l.Restore(ctx, &v1); err != nil {
		t.Fatal(err)
	}
	v, known, gen, locked, err := s.Peek(ctx, "/doc")
	if err != nil || !known || v.ETag != v1.ETag || locked || gen != 1 {
		t.Fatalf("after restore: %+v known %v gen %d locked %v %v", v, known, gen, locked, err)
	}

	// A write whose outcome nobody learned leaves the version unknown.
	l = lock(t, s, "/doc")
	if err := l.Record(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, known, gen, _, _ := s.Peek(ctx, "/doc"); known || gen != 2 {
		t.Fatalf("after an unknown outcome: known %v, gen %d", known, gen)
	}
	// Absence is a version too.
	l = lock(t, s, "/doc")
	if err := l.Record(ctx, &etagcache.Version{}); err != nil {
		t.Fatal(err)
	}
	if v, known, _, _, _ := s.Peek(ctx, "/doc"); !known || v.Exists {
		t.Fatalf("after a delete: %+v known %v", v, known)
	}
}

// A write that the guard does not serialize (a POST) makes the version
// unknown; a holder that forwarded nothing must not put the old one back.
func TestRestoreAfterForgetKeepsItUnknown(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{})
	ctx := context.Background()
	v1 := etagcache.Version{Exists: true, ETag: `"v1"`}
	l := lock(t, s, "/doc")
	l.Record(ctx, &v1)

	l = lock(t, s, "/doc")
	if err := s.Forget(ctx, "/doc"); err != nil {
		t.Fatal(err)
	}
	found, _ := l.Found()
	if err := l.Restore(ctx, &found); err != nil {
		t.Fatal(err)
	}
	if v, known, _, _, _ := s.Peek(ctx, "/doc"); known {
		t.Fatalf("restored %+v over a forget", v)
	}
}

// A holder that stops renewing (a crashed instance, one cut off from
// Redis) holds the resource for LockTTL at most, and the version it took
// out stays unknown.
func TestLockOfDeadHolderExpires(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	a, b := newStore(t, srv, Config{LockTTL: ttl}), newStore(t, srv, Config{LockTTL: ttl})
	l := lock(t, a, "/doc")
	l.Record(context.Background(), &etagcache.Version{Exists: true, ETag: `"v1"`})
	lock(t, a, "/doc")
	a.Close() // renewals fail from now on
	start := time.Now()
	lb := tryLock(t, b, "/doc", 10*time.Second)
	if lb == nil {
		t.Fatal("the dead holder's lock never expired")
	}
	if waited := time.Since(start); waited > ttl+2*time.Second {
		t.Errorf("took %v, TTL %v", waited, ttl)
	}
	if _, known := lb.Found(); known {
		t.Error("the version a dead holder took out came back")
	}
}

// Renewal keeps a lock held past its TTL for as long as the write runs.
func TestRenewalOutlastsTTL(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	a, b := newStore(t, srv, Config{LockTTL: ttl}), newStore(t, srv, Config{LockTTL: ttl})
	l := lock(t, a, "/doc")
	if lb := tryLock(t, b, "/doc", 4*ttl); lb != nil {
		t.Fatal("the lock was taken from a holder that renews it")
	}
	if l.Lost() {
		t.Fatal("lost")
	}
	if err := l.Record(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}

// A lock key that vanishes alone (as an eviction can make it) is put back:
// whoever tries to take the lock meanwhile finds the holder's copy and
// waits, and the holder's next renewal restores it.
func TestVanishedLockKeyIsPutBack(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 300 * time.Millisecond
	a, b := newStore(t, srv, Config{LockTTL: ttl}), newStore(t, srv, Config{LockTTL: ttl})
	ctx := context.Background()
	lock(t, a, "/doc").Record(ctx, &etagcache.Version{Exists: true, ETag: `"v1"`})

	// Put back by another client's attempt.
	l := lock(t, a, "/doc")
	if err := srv.Client().Del(ctx, a.keys("/doc")[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if lb := tryLock(t, b, "/doc", 3*ttl); lb != nil {
		t.Fatal("another client took a lock whose key had vanished under a live holder")
	}
	if d := b.Deployment(); d.LocksRestored == 0 {
		t.Error("the client that put the key back did not count it")
	}
	if err := l.Record(ctx, &etagcache.Version{Exists: true, ETag: `"v2"`}); err != nil || l.Lost() {
		t.Fatalf("Record: %v, lost %v", err, l.Lost())
	}

	// Put back by the holder's renewal.
	l = lock(t, a, "/doc")
	if got, _ := l.Found(); got.ETag != `"v2"` {
		t.Fatalf("found %+v", got)
	}
	if err := srv.Client().Del(ctx, a.keys("/doc")[0]).Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !l.Restored() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if !l.Restored() || l.Lost() {
		t.Fatalf("restored %v, lost %v", l.Restored(), l.Lost())
	}
	if n, _ := srv.Client().Exists(ctx, a.keys("/doc")[0]).Result(); n != 1 {
		t.Fatal("the renewal did not put the key back")
	}
	if err := l.Record(ctx, &etagcache.Version{Exists: true, ETag: `"v3"`}); err != nil {
		t.Fatal(err)
	}
	if v, known, _, locked, _ := a.Peek(ctx, "/doc"); !known || v.ETag != `"v3"` || locked {
		t.Fatalf("after release: %+v known %v locked %v", v, known, locked)
	}
	if left, _ := a.Untrusted(ctx, "/doc"); left != 0 {
		t.Fatal("a lock put back made the resource untrusted")
	}

	// Put back at release, before any renewal.
	l = lock(t, a, "/doc")
	srv.Client().Del(ctx, a.keys("/doc")[0])
	if err := l.Restore(ctx, nil); err != nil || !l.Restored() {
		t.Fatalf("Restore: %v, restored %v", err, l.Restored())
	}
	if d := a.Deployment(); d.LocksRestored != 2 || d.LocksVanished != 0 {
		t.Fatalf("counted %d restored, %d vanished", d.LocksRestored, d.LocksVanished)
	}
}

// deleteHold deletes key's lock and the copy of its holder, as a FLUSHALL
// does, or an eviction of both keys.
func deleteHold(t *testing.T, srv *redistest.Server, s *Store, key string) {
	t.Helper()
	if err := srv.Client().Del(context.Background(), s.keys(key)[:2]...).Err(); err != nil {
		t.Fatal(err)
	}
}

// A holder whose lock vanished with its copy (flushed, both keys evicted, a
// failover to a replica that had seen neither) learns so at its next
// renewal, names it as such, and makes the resource untrusted there and
// then; what it records is not trusted.
func TestVanishedLockIsNamedAtRenewal(t *testing.T) {
	srv := redistest.Start(t)
	// Renewed every 333 ms: the renewal that finds the key gone comes long
	// before its TTL could have run out, even on a busy machine.
	s := newStore(t, srv, Config{LockTTL: time.Second})
	ctx := context.Background()
	l := lock(t, s, "/doc")
	deleteHold(t, srv, s, "/doc")
	for deadline := time.Now().Add(5 * time.Second); !l.Lost() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := l.Cause(); got != LostVanished {
		t.Fatalf("cause %v, want LostVanished (%v)", got, LostVanished)
	}
	if left, err := s.Untrusted(ctx, "/doc"); err != nil || left <= 0 {
		t.Fatalf("untrusted for %v (%v) once the renewal found the lock gone", left, err)
	}
	if err := l.Record(ctx, &etagcache.Version{Exists: true, ETag: `"v2"`}); !errors.Is(err, ErrLockVanished) || !errors.Is(err, ErrLockLost) {
		t.Fatalf("Record: %v, want ErrLockVanished", err)
	}
	if _, known, _, _, _ := s.Peek(ctx, "/doc"); known {
		t.Fatal("a holder without the lock recorded a version")
	}
	if d := s.Deployment(); d.LocksVanished != 1 || d.LocksExpired != 0 {
		t.Fatalf("counted %d vanished, %d expired", d.LocksVanished, d.LocksExpired)
	}
}

// A lock that vanishes between renewals is found vanished at release, not
// expired: its TTL had not run out.
func TestVanishedLockIsNamedAtRelease(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{})
	ctx := context.Background()
	l := lock(t, s, "/doc")
	if err := srv.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.Restore(ctx, &etagcache.Version{Exists: true, ETag: `"v1"`}); !errors.Is(err, ErrLockVanished) {
		t.Fatalf("Restore: %v, want ErrLockVanished", err)
	}
	if l.Cause() != LostVanished {
		t.Fatalf("cause %v", l.Cause())
	}
	if left, _ := s.Untrusted(ctx, "/doc"); left <= 0 {
		t.Fatal("not untrusted")
	}
}

// A lock that was not renewed because Redis could not be reached expired:
// it did not vanish.
func TestUnrenewedLockIsNamedExpired(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{LockTTL: 300 * time.Millisecond, Timeout: 100 * time.Millisecond})
	l := lock(t, s, "/doc")
	srv.Stop()
	for deadline := time.Now().Add(5 * time.Second); !l.Lost() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := l.Cause(); got != LostExpired {
		t.Fatalf("cause %v, want LostExpired (%v)", got, LostExpired)
	}
	srv.Restart()
	if err := l.Record(context.Background(), nil); !errors.Is(err, ErrLockExpired) {
		t.Fatalf("Record: %v, want ErrLockExpired", err)
	}
	if d := s.Deployment(); d.LocksVanished != 0 || d.LocksExpired != 1 {
		t.Fatalf("counted %d vanished, %d expired", d.LocksVanished, d.LocksExpired)
	}
}

// The loss itself: a lock vanishes while its holder's write runs, and a
// second holder gets in at once. Neither may leave a version behind: the
// writes may have overlapped, so whichever landed last is unknown, and the
// resource stays untrusted for every instance.
func TestOverlapAfterVanishedLockLeavesNoVersion(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newStore(t, srv, Config{}), newStore(t, srv, Config{})
	ctx := context.Background()
	lock(t, a, "/doc").Record(ctx, &etagcache.Version{Exists: true, ETag: `"v1"`})

	la := lock(t, a, "/doc")
	deleteHold(t, srv, a, "/doc")
	lb := tryLock(t, b, "/doc", time.Second)
	if lb == nil {
		t.Fatal("the vanished lock could not be taken")
	}
	// a ends first: b, holding the lock rightly, must not store its version.
	if err := la.Record(ctx, &etagcache.Version{Exists: true, ETag: `"by a"`}); !errors.Is(err, ErrLockVanished) {
		t.Fatalf("a: %v", err)
	}
	if err := lb.Record(ctx, &etagcache.Version{Exists: true, ETag: `"by b"`}); err != nil {
		t.Fatalf("b: %v", err)
	}
	if v, known, _, _, _ := b.Peek(ctx, "/doc"); known {
		t.Fatalf("stored %+v after overlapping writes", v)
	}
	l := lock(t, b, "/doc")
	if _, known := l.Found(); known || !l.Untrusted() {
		t.Fatalf("the next holder found a version (untrusted %v)", l.Untrusted())
	}
	l.Restore(ctx, nil)
}

// Distrust: while the mark lasts, no version is found or stored, whichever
// way the lock is released; a longer mark is never shortened; once it
// expires, versions are kept again.
func TestDistrust(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{})
	ctx := context.Background()
	v := func(tag string) *etagcache.Version { return &etagcache.Version{Exists: true, ETag: tag} }
	lock(t, s, "/doc").Record(ctx, v(`"v1"`))

	if err := s.Distrust(ctx, "/doc", 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if left, err := s.Untrusted(ctx, "/doc"); err != nil || left <= 0 || left > 400*time.Millisecond {
		t.Fatalf("untrusted for %v, %v", left, err)
	}
	if _, known, _, _, _ := s.Peek(ctx, "/doc"); known {
		t.Fatal("the version survived Distrust")
	}
	l := lock(t, s, "/doc")
	if _, known := l.Found(); known || !l.Untrusted() {
		t.Fatal("found a version of an untrusted resource")
	}
	if err := l.Record(ctx, v(`"v2"`)); err != nil {
		t.Fatal(err)
	}
	l = lock(t, s, "/doc")
	if _, known := l.Found(); known {
		t.Fatal("Record stored a version of an untrusted resource")
	}
	if err := l.Restore(ctx, v(`"v2"`)); err != nil {
		t.Fatal(err)
	}
	if _, known, _, _, _ := s.Peek(ctx, "/doc"); known {
		t.Fatal("Restore stored a version of an untrusted resource")
	}
	if left, _ := s.Untrusted(ctx, "/other"); left != 0 {
		t.Fatalf("another resource is untrusted for %v", left)
	}
	// An instance that does not know the mark (one of an earlier release,
	// during an upgrade) may still store a version: it is not found.
	if err := srv.Client().HSet(ctx, s.keys("/doc")[1], "x", "1", "e", `"v2"`, "m", "", "s", "").Err(); err != nil {
		t.Fatal(err)
	}
	l = lock(t, s, "/doc")
	if _, known := l.Found(); known {
		t.Fatal("found a version stored during the mark")
	}
	l.Restore(ctx, nil)

	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if left, err := s.Untrusted(ctx, "/doc"); err != nil || left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mark never expired")
		}
	}
	lock(t, s, "/doc").Record(ctx, v(`"v3"`))
	l = lock(t, s, "/doc")
	got, known := l.Found()
	if !known || got.ETag != `"v3"` || l.Untrusted() {
		t.Fatalf("after the mark expired: %+v %v", got, known)
	}
	l.Restore(ctx, &got)

	s.Distrust(ctx, "/doc", time.Minute)
	s.Distrust(ctx, "/doc", time.Millisecond)
	if left, _ := s.Untrusted(ctx, "/doc"); left < 50*time.Second {
		t.Fatalf("a shorter Distrust cut the mark to %v", left)
	}
}

// The three keys of a resource share a Redis Cluster hash slot, so that
// each script touches one slot.
func TestKeysShareASlot(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{})
	for _, key := range []string{"/doc", "example.com/a}b", "/x{y}"} {
		ks := s.keys(key)
		if len(ks) != 3 {
			t.Fatalf("%d keys", len(ks))
		}
		for _, k := range ks[1:] {
			if hashTag(k) != hashTag(ks[0]) {
				t.Errorf("%q and %q hash differently", ks[0], k)
			}
		}
	}
}

// hashTag is the part of k that Redis Cluster hashes.
func hashTag(k string) string {
	if i := strings.IndexByte(k, '{'); i >= 0 {
		if j := strings.IndexByte(k[i+1:], '}'); j > 0 {
			return k[i+1 : i+1+j]
		}
	}
	return k
}

// A Redis that is full and evicts nothing (noeviction) refuses new keys,
// but renewals go on: a write that holds a lock keeps it.
func TestRenewalWorksOnAFullRedis(t *testing.T) {
	srv := redistest.Start(t)
	const ttl = 600 * time.Millisecond
	s := newStore(t, srv, Config{LockTTL: ttl})
	l := lock(t, s, "/doc")
	ctx := context.Background()
	rdb := srv.Client()
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "other", "x", 0).Err(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("Redis is not full: %v", err)
	}
	time.Sleep(3 * ttl) // several renewals
	if l.Lost() {
		t.Fatal("the lock was lost on a full Redis")
	}
	if n, _ := rdb.Exists(ctx, s.keys("/doc")[0]).Result(); n != 1 {
		t.Fatal("the lock expired on a full Redis")
	}
	if err := l.Restore(ctx, nil); err != nil {
		t.Fatalf("Restore on a full Redis: %v", err)
	}
}

// Redis down: Lock fails fast with Redis's error, not the caller's
// deadline, and works again once Redis is back.
func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{Timeout: 200 * time.Millisecond})
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Lock(ctx, "/doc"); err == nil || ctx.Err() != nil {
		t.Fatalf("Lock with Redis down: %v (ctx %v)", err, ctx.Err())
	}
	srv.Restart()
	lock(t, s, "/doc").Record(context.Background(), nil)
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Addrs: []string{"127.0.0.1:6379"}, KeyPrefix: "a{b}:"},
		{Addrs: []string{"127.0.0.1:6379"}, LockTTL: time.Millisecond},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// ForgetAll works on a Redis that has not loaded the store's scripts, as
// after a restart.
func TestForgetAllAfterScriptsFlushed(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, Config{})
	ctx := context.Background()
	for _, k := range []string{"/a", "/b"} {
		lock(t, s, k).Record(ctx, &etagcache.Version{Exists: true, ETag: `"v1"`})
	}
	if err := srv.Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetAll(ctx, []string{"/a", "/b"}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"/a", "/b"} {
		if _, known, _, _, _ := s.Peek(ctx, k); known {
			t.Errorf("%s still known", k)
		}
	}
	l := lock(t, s, "/a")
	if _, known := l.Found(); known {
		t.Error("found a forgotten version")
	}
	l.Distrust()
	l.Restore(ctx, nil)
}

// What etags auto and the date checks know of a version reaches every
// instance: its flags and the date of the version it replaced survive the
// trip through Redis.
func TestVersionFlagsRoundTrip(t *testing.T) {
	lm := time.Unix(1_700_000_000, 0).UTC()
	for _, v := range []etagcache.Version{
		{Exists: true, ETag: `"g"`, LastModified: lm, Guard: true, Crowded: true, TagsReused: true, Superseded: []string{`"route"`}},
		{Exists: true, ETag: `"u"`, ReplacedDate: lm, FromAnswer: true},
		{Exists: true, ETag: `"plain"`, LastModified: lm},
		{},
	} {
		f := formatVersion(&v)
		got, ok := parseVersion(f)
		if !ok || !reflect.DeepEqual(got, v) {
			t.Errorf("%+v came back as %+v (%v)", v, got, ok)
		}
	}
}

// A site marked as reusing its tags stays marked, for every client of the
// store, until unmarked.
func TestSiteMarks(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	a, b := newStore(t, srv, Config{}), newStore(t, srv, Config{})
	if _, ok, err := b.SiteMarked(ctx, "example.com"); ok || err != nil {
		t.Fatalf("unmarked site: %v %v", ok, err)
	}
	if err := a.MarkSite(ctx, "example.com", `{"key":"example.com/doc"}`); err != nil {
		t.Fatal(err)
	}
	if ev, ok, err := b.SiteMarked(ctx, "example.com"); !ok || err != nil || ev != `{"key":"example.com/doc"}` {
		t.Fatalf("marked site: %q %v %v", ev, ok, err)
	}
	if ttl := srv.Client().TTL(ctx, a.siteKey("example.com")).Val(); ttl != -1 {
		t.Errorf("the mark expires (TTL %v)", ttl)
	}
	if err := b.UnmarkSite(ctx, "example.com"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := a.SiteMarked(ctx, "example.com"); ok {
		t.Fatal("still marked")
	}
}
