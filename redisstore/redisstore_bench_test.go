package redisstore

import (
	"context"
	"strconv"
	"testing"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// benchStore is a Store on a redis-server of the benchmark's own.
func benchStore(b *testing.B) *Store {
	srv := redistest.Start(b)
	s, err := New(Config{Addrs: []string{srv.Addr}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkLockRecord is what a guarded write asks of Redis: take the lock
// with the version, release it with the new one.
func BenchmarkLockRecord(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	v := etagcache.Version{Exists: true, ETag: `"v1"`}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l, err := s.Lock(ctx, "/items/"+strconv.Itoa(i%1024))
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Record(ctx, &v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPing is one round trip to the same Redis: the floor of each
// step.
func BenchmarkPing(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	for b.Loop() {
		if err := s.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
