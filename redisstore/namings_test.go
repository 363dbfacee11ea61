package redisstore

import (
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

func TestAdoptNamings(t *testing.T) {
	s := newStore(t, redistest.Start(t), Config{KeyPrefix: "wg:", LockTTL: time.Second, VersionTTL: time.Minute})
	ctx := t.Context()
	for _, step := range []struct {
		fingerprint string
		changed     bool
	}{{"a", true}, {"a", false}, {"b", true}, {"a", true}} {
		l, err := s.Lock(ctx, "/doc")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Record(ctx, &etagcache.Version{Exists: true, ETag: `"v"`}); err != nil {
			t.Fatal(err)
		}
		changed, forgot, err := s.AdoptNamings(ctx, step.fingerprint)
		if err != nil {
			t.Fatal(err)
		}
		if changed != step.changed || (changed && forgot != 1) || (!changed && forgot != 0) {
			t.Errorf("adopting %q: changed %v, forgot %d; want changed %v", step.fingerprint, changed, forgot, step.changed)
		}
	}
}

func TestForgetEveryVersion(t *testing.T) {
	srv := redistest.Start(t)
	// A prefix with characters that a SCAN pattern reads as a glob.
	s := newStore(t, srv, Config{KeyPrefix: "wg[1]*:", LockTTL: time.Second, VersionTTL: time.Minute})
	other := newStore(t, srv, Config{KeyPrefix: "wg1x:", LockTTL: time.Second, VersionTTL: time.Minute})
	ctx := t.Context()
	record := func(s *Store, key, tag string) {
		t.Helper()
		l, err := s.Lock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Record(ctx, &etagcache.Version{Exists: true, ETag: tag}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1200 { // more than one batch
		record(s, "/doc/"+string(rune('a'+i%26))+string(rune('a'+i/26)), `"v1"`)
	}
	record(other, "/doc/aa", `"kept"`)
	n, err := s.ForgetEveryVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1200 {
		t.Errorf("forgot %d versions, want 1200", n)
	}
	l, err := s.Lock(ctx, "/doc/aa")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := l.Found(); ok {
		t.Errorf("a version survived: %+v", v)
	}
	l.Restore(ctx, nil)
	l, err = other.Lock(ctx, "/doc/aa")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := l.Found(); !ok || v.ETag != `"kept"` {
		t.Errorf("another prefix's version: %+v %v, want kept", v, ok)
	}
	l.Restore(ctx, nil)
}
