package writeguard

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkHashedRead measures what `etags hash` adds to a GET: the same
// response passed straight to the client, through the guard trusting the
// upstream's tag, and through the guard hashing the body. "sha256" is the
// digest alone, the floor of the hashed path.
func BenchmarkHashedRead(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i)
		}
		// Written in 32 KiB pieces, as reverse_proxy copies a response.
		upstream := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Etag", `"v1"`)
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			for p := body; len(p) > 0; {
				n := min(len(p), 32<<10)
				w.Write(p[:n])
				p = p[n:]
			}
			return nil
		})
		reqs := benchRequests(http.MethodGet, 1024)
		for _, r := range reqs {
			r.Header.Del("If-Match")
		}
		name := fmt.Sprintf("%dKiB", size>>10)
		b.Run(name+"/sha256", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				sha256.Sum256(body)
			}
		})
		b.Run(name+"/plain", func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				clear(w.h)
				upstream.ServeHTTP(w, reqs[i%len(reqs)])
			}
		})
		for _, mode := range []string{"upstream", "hash"} {
			b.Run(name+"/etags_"+mode, func(b *testing.B) {
				h := newBenchHandler(b, &Handler{ETags: mode})
				w := &discardWriter{h: http.Header{}}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					clear(w.h)
					if err := h.ServeHTTP(w, reqs[i%len(reqs)], upstream); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
