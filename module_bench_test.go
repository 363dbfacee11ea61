package writeguard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

// upstreamStub answers like a backend that versions its resources, without
// any work of its own, so the benchmarks measure the guard.
var upstreamStub = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Etag", `"v1"`)
	w.Header().Set("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
	w.WriteHeader(http.StatusOK)
	return nil
})

type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func benchRequests(method string, n int) []*http.Request {
	reqs := make([]*http.Request, n)
	for i := range reqs {
		reqs[i] = httptest.NewRequest(method, "http://example.com/items/"+strconv.Itoa(i), nil)
		reqs[i].Header.Set("If-Match", `"v1"`)
	}
	return reqs
}

// BenchmarkReadPath compares a GET through the guard with the same GET
// straight to the next handler.
func BenchmarkReadPath(b *testing.B) {
	reqs := benchRequests(http.MethodGet, 1024)
	b.Run("plain", func(b *testing.B) {
		w := &discardWriter{h: http.Header{}}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			upstreamStub.ServeHTTP(w, reqs[i%len(reqs)])
		}
	})
	b.Run("guarded", func(b *testing.B) {
		h := newBenchHandler(b, &Handler{})
		w := &discardWriter{h: http.Header{}}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			h.ServeHTTP(w, reqs[i%len(reqs)], upstreamStub)
		}
	})
}

// BenchmarkReadPathSite is the guarded GET of BenchmarkReadPath as Caddy
// serves it: the request's server leads to the guard through a site of two
// names, so the default key looks the site up.
func BenchmarkReadPathSite(b *testing.B) {
	h := newBenchHandler(b, &Handler{})
	srv := &caddyhttp.Server{Listen: []string{":443"}, Routes: caddyhttp.RouteList{{
		MatcherSets: caddyhttp.MatcherSets{{caddyhttp.MatchHost{"example.com", "www.example.com"}}},
		Handlers:    []caddyhttp.MiddlewareHandler{h},
	}}}
	reqs := benchRequests(http.MethodGet, 1024)
	for i, r := range reqs {
		reqs[i] = r.WithContext(context.WithValue(r.Context(), caddyhttp.ServerCtxKey, srv))
	}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.ServeHTTP(w, reqs[i%len(reqs)], upstreamStub)
	}
}

// BenchmarkWritePathCacheHit is a conditional PUT whose version the cache
// knows: parse, lock, look up, evaluate, forward, record.
func BenchmarkWritePathCacheHit(b *testing.B) {
	reqs := benchRequests(http.MethodPut, 1024)
	h := newBenchHandler(b, &Handler{})
	w := &discardWriter{h: http.Header{}}
	for _, r := range reqs {
		h.ServeHTTP(w, r, upstreamStub)
	}
	h.cache.Wait()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.ServeHTTP(w, reqs[i%len(reqs)], upstreamStub)
	}
}

func newBenchHandler(b *testing.B, h *Handler) *Handler {
	b.Helper()
	h.CacheSize = 100_000
	// One configuration, as a Caddy between reloads runs: the other
	// benchmarks' handlers are not a reload's overlap.
	h.reg = new(configRegistry)
	h.abandoned = new(abandonedWrites)
	ctx, cancel := newCaddyContext()
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Cleanup() })
	// Logging is not what is measured (and would interleave with results).
	h.logger = zap.NewNop()
	return h
}

// BenchmarkWritePathVersionCheck is a conditional PUT whose version is asked
// of the upstream under the lock, as on a cache miss (revalidate always
// makes every write do so).
func BenchmarkWritePathVersionCheck(b *testing.B) {
	reqs := benchRequests(http.MethodPut, 1024)
	h := newBenchHandler(b, &Handler{Revalidate: "always"})
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.ServeHTTP(w, reqs[i%len(reqs)], upstreamStub)
	}
}

// BenchmarkWritePathSuperseded is a PUT naming a version that a write
// through the guard replaced: refused from the cache, before the lock.
func BenchmarkWritePathSuperseded(b *testing.B) {
	reqs := benchRequests(http.MethodPut, 1024)
	h := newBenchHandler(b, &Handler{})
	for i := range reqs {
		h.cache.Record("example.com/items/"+strconv.Itoa(i), etagcache.Version{Exists: true, ETag: `"v2"`, Superseded: []string{`"v1"`}})
	}
	h.cache.Wait()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w := &discardWriter{h: http.Header{}}
		h.ServeHTTP(w, reqs[i%len(reqs)], upstreamStub)
	}
}

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
