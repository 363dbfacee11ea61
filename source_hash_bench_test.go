package writeguard

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash/crc32"
	"hash/maphash"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkHashedRead measures what tagging a representation adds to a GET:
// the same response passed straight to the client, through the guard
// trusting the upstream's tag, through the guard hashing the body, and
// through `etags auto` in front of an upstream with a tag (nothing to hash)
// and without one (the guard tags it).
//
// The digests alone over the same bytes are beside it: "sha256", the floor
// of the hashed path, and for the choice of digest "sha512" (faster than
// SHA-256 on 64-bit CPUs without SHA extensions), "crc32c" and "maphash"
// (fast, but not collision resistant: see hashTagBytes).
func BenchmarkHashedRead(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 100 << 10, 1 << 20, 5 << 20} {
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i)
		}
		// Written in 32 KiB pieces, as reverse_proxy copies a response.
		respond := func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")
			w.WriteHeader(http.StatusOK)
			for p := body; len(p) > 0; {
				n := min(len(p), 32<<10)
				w.Write(p[:n])
				p = p[n:]
			}
		}
		tagged := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Etag", `"v1"`)
			respond(w)
			return nil
		})
		untagged := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			respond(w)
			return nil
		})
		reqs := benchRequests(http.MethodGet, 1024)
		for _, r := range reqs {
			r.Header.Del("If-Match")
		}
		name := fmt.Sprintf("%dKiB", size>>10)
		digests := []struct {
			name string
			sum  func([]byte)
		}{
			{"sha256", func(p []byte) { sha256.Sum256(p) }},
			{"sha512", func(p []byte) { sha512.Sum512(p) }},
			{"crc32c", func(p []byte) { crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)) }},
			{"maphash", func(p []byte) { maphash.Bytes(maphash.MakeSeed(), p) }},
		}
		for _, d := range digests {
			b.Run(name+"/"+d.name, func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					d.sum(body)
				}
			})
		}
		b.Run(name+"/plain", func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				clear(w.h)
				tagged.ServeHTTP(w, reqs[i%len(reqs)])
			}
		})
		for _, c := range []struct {
			name     string
			mode     string
			upstream caddyhttp.Handler
		}{
			{"etags_upstream", "upstream", tagged},
			{"etags_hash", "hash", tagged},
			{"auto_tagged", "auto", tagged},
			{"auto_untagged", "auto", untagged},
		} {
			b.Run(name+"/"+c.name, func(b *testing.B) {
				h := newBenchHandler(b, &Handler{ETags: c.mode})
				w := &discardWriter{h: http.Header{}}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					clear(w.h)
					if err := h.ServeHTTP(w, reqs[i%len(reqs)], c.upstream); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
