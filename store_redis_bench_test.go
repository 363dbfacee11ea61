package writeguard

import (
	"net/http"
	"testing"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// BenchmarkWritePathStore is a conditional PUT whose version the store
// knows, with locks and versions in the process (memory) and in a Redis on
// loopback (redis): two Redis round trips per write, to take the lock with
// the version and to release it with the new one.
func BenchmarkWritePathStore(b *testing.B) {
	srv := redistest.Start(b)
	for _, tc := range []struct {
		name  string
		store *StoreConfig
	}{
		{"memory", nil},
		{"redis", &StoreConfig{Backend: "redis", Addresses: []string{srv.Addr}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			reqs := benchRequests(http.MethodPut, 1024)
			h := newBenchHandler(b, &Handler{Store: tc.store})
			w := &discardWriter{h: http.Header{}}
			for _, r := range reqs {
				h.ServeHTTP(w, r, upstreamStub)
			}
			h.cache.Wait()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				h.ServeHTTP(w, reqs[i%len(reqs)], upstreamStub)
			}
		})
	}
}
