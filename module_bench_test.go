package writeguard

import (
	"context"
	"net/http"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

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
