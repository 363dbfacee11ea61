package integration

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// upstreamTrailerTag is the entity-tag the upstream sends in its trailers;
// with `etags hash` it names no version the guard vouches for.
const upstreamTrailerTag = `"upstream-trailer"`

// trailerUpstream streams its answers in chunks and sends an ETag trailer
// field with them, declared in Trailer as net/http wants it, or undeclared.
func trailerUpstream() http.Handler {
	var mu sync.Mutex
	doc := "part one, part two"
	stream := func(w http.ResponseWriter, status int, body string, trailers string) {
		w.Header().Set("Content-Type", "text/plain")
		if trailers != "" {
			w.Header().Set("Trailer", trailers)
		}
		w.WriteHeader(status)
		half := len(body) / 2
		io.WriteString(w, body[:half])
		w.(http.Flusher).Flush()
		io.WriteString(w, body[half:])
		if trailers == "" {
			w.Header().Set(http.TrailerPrefix+"Etag", upstreamTrailerTag)
			return
		}
		w.Header().Set("Etag", upstreamTrailerTag)
		if strings.Contains(trailers, "X-Checksum") {
			w.Header().Set("X-Checksum", "sum-of-"+body)
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		current := doc
		mu.Unlock()
		switch {
		case r.Method == http.MethodHead:
			w.Header().Set("Content-Type", "text/plain")
		case r.Method == http.MethodPut && r.URL.Path == "/doc":
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			doc = string(b)
			mu.Unlock()
			stream(w, http.StatusOK, "saved", "Etag")
		case r.URL.Path == "/doc":
			stream(w, http.StatusOK, current, "Etag")
		case r.URL.Path == "/checksummed":
			stream(w, http.StatusOK, current, "Etag, X-Checksum")
		case r.URL.Path == "/undeclared":
			stream(w, http.StatusOK, current, "")
		case r.URL.Path == "/large":
			stream(w, http.StatusOK, strings.Repeat("large ", 1000), "Etag")
		default:
			stream(w, http.StatusNotFound, "not here", "Etag")
		}
	})
}

// rawGet sends one GET on a new connection and reads its answer off the
// wire.
func rawGet(t *testing.T, path string) rawResponse {
	t.Helper()
	c := dialCaddy(t)
	c.send("GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	return c.readResponse(false)
}

// allETags lists every ETag field of an answer, in its header and its
// trailers.
func allETags(r rawResponse) []string {
	return append(r.header.Values("Etag"), r.trailer.Values("Etag")...)
}

// TestHashedUpstreamETagTrailer puts `etags hash` in front of an upstream
// that sends an ETag of its own as a trailer field. ETag is a singleton
// field: the client gets exactly one, the guard's, announced once in
// Trailer when it follows the body; the upstream's names no version the
// guard trusts and never reaches the client.
func TestHashedUpstreamETagTrailer(t *testing.T) {
	startCaddy(t, fmtSite(`
	write_guard {
		etags hash
		hash_max_body 1KiB
	}
	reverse_proxy %s`, startBackend(t, trailerUpstream())))

	for _, c := range []struct {
		name, path string
		status     int
		// tagged: the answer carries the guard's tag of its body.
		tagged bool
		// otherTrailers the upstream declared, which must go on.
		otherTrailers []string
	}{
		{name: "declared", path: "/doc", status: 200, tagged: true},
		{name: "declared with others", path: "/checksummed", status: 200, tagged: true, otherTrailers: []string{"X-Checksum"}},
		{name: "undeclared", path: "/undeclared", status: 200, tagged: true},
		{name: "too large to tag", path: "/large", status: 200},
		{name: "not found", path: "/missing", status: 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := rawGet(t, c.path)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %v", r.status, c.status, r)
			}
			tags := allETags(r)
			if c.tagged {
				if want := guardTag([]byte(r.body)); len(tags) != 1 || tags[0] != want {
					t.Errorf("ETag fields %q, want exactly one, the guard's %s: %v", tags, want, r)
				}
			} else if len(tags) != 0 {
				t.Errorf("ETag fields %q on an answer the guard does not tag: %v", tags, r)
			}
			announced := fieldTokens(r.header, "Trailer")
			if n := countFold(announced, "Etag"); n > 1 || n == 1 && r.trailer.Get("Etag") == "" && c.tagged {
				t.Errorf("Trailer announces ETag %d times (%q), trailer ETag %q", n, r.header.Values("Trailer"), r.trailer.Values("Etag"))
			}
			for _, f := range c.otherTrailers {
				if countFold(announced, f) != 1 || r.trailer.Get(f) == "" {
					t.Errorf("the upstream's %s trailer was lost: Trailer %q, trailers %v", f, r.header.Values("Trailer"), r.trailer)
				}
			}
		})
	}

	// A write's answer, held until the guard has asked for the new version,
	// carries that version's tag, and no other.
	t.Run("write", func(t *testing.T) {
		tag := rawGet(t, "/doc").trailer.Get("Etag")
		if tag == "" {
			t.Fatal("GET /doc: no trailer ETag")
		}
		const body = "part three"
		c := dialCaddy(t)
		c.send("PUT /doc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIf-Match: " + tag +
			"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
		r := c.readResponse(false)
		if r.status != 200 {
			t.Fatalf("PUT: %v", r)
		}
		if tags, want := allETags(r), guardTag([]byte(body)); len(tags) != 1 || tags[0] != want {
			t.Errorf("PUT answer's ETag fields %q, want exactly one, the guard's %s: %v", tags, want, r)
		}
		if n := countFold(fieldTokens(r.header, "Trailer"), "Etag"); n != 0 && r.trailer.Get("Etag") == "" || n > 1 {
			t.Errorf("PUT answer announces ETag as a trailer %d times (%q) and sends %q", n, r.header.Values("Trailer"), r.trailer.Values("Etag"))
		}
	})
}
