package writeguard

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// BenchmarkIdempotency compares, in one run, a write carrying an
// Idempotency-Key with the same write without one, with the records in
// memory and in a Redis on loopback: a POST passed through (unguarded) and
// a conditional PUT whose version the cache knows. Every keyed write has a
// key of its own, so each one claims, forwards and records; replayed is a
// retry answered from its record.
func BenchmarkIdempotency(b *testing.B) {
	srv := redistest.Start(b)
	for _, store := range []struct {
		name string
		cfg  *StoreConfig
	}{
		{"memory", nil},
		{"redis", &StoreConfig{Backend: "redis", Addresses: []string{srv.Addr}}},
	} {
		for _, method := range []string{http.MethodPost, http.MethodPut} {
			for _, mode := range []string{"no-key", "key", "replayed"} {
				b.Run(store.name+"/"+method+"/"+mode, func(b *testing.B) {
					h := newBenchHandler(b, &Handler{Store: store.cfg, Idempotency: &IdempotencyConfig{}})
					w := &discardWriter{h: http.Header{}}
					req := func(i int) *http.Request {
						r := httptest.NewRequest(method, "http://example.com/items/"+strconv.Itoa(i%1024), strings.NewReader(`{"n":1}`))
						r.Header.Set("If-Match", `"v1"`)
						r.Header.Set("Content-Type", "application/json")
						switch mode {
						case "key":
							r.Header.Set("Idempotency-Key", `"`+b.Name()+strconv.Itoa(i)+`"`)
						case "replayed":
							r.Header.Set("Idempotency-Key", `"`+b.Name()+`"`)
						}
						return r
					}
					for i := range 1024 { // teach the cache every version
						h.ServeHTTP(w, req(i), upstreamStub)
					}
					h.cache.Wait()
					b.ReportAllocs()
					for i := 0; b.Loop(); i++ {
						w.h = http.Header{}
						h.ServeHTTP(w, req(i+1024), upstreamStub)
					}
				})
			}
		}
	}
}
