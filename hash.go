package writeguard

import (
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/precondition"
)

// With `etags hash` the guard names versions itself, by a digest of the
// representation's bytes, because the upstream's own tags are missing or do
// not change with the content (mtime+size tags that repeat within a second).

// DefaultHashMaxBody is the largest representation tagged by default.
const DefaultHashMaxBody = 16 << 20

// heldBodyLimit is how much of a GET response is held back so that its tag
// can still go in the ETag header field. A response that grows beyond it is
// streamed as it arrives and its tag follows in a trailer field.
const heldBodyLimit = 64 << 10

// hashTagBytes is how much of the SHA-256 digest a tag keeps: 144 bits, far
// beyond any chance of two versions of one resource colliding, in 24
// characters of base64url.
const hashTagBytes = 18

// bodyHash computes the entity-tag of a representation from its bytes, or
// none when the representation is larger than limit.
type bodyHash struct {
	sum   hash.Hash
	n     int64
	limit int64
}

// Digest states and held bodies are recycled: hashing is the whole cost of
// a tagged read, and allocating them was a third of it for small bodies.
var (
	bodyHashPool = sync.Pool{New: func() any { return &bodyHash{sum: sha256.New()} }}
	heldPool     = sync.Pool{New: func() any { b := make([]byte, 0, heldBodyLimit); return &b }}
)

func newBodyHash(limit int64) *bodyHash {
	b := bodyHashPool.Get().(*bodyHash)
	b.sum.Reset()
	b.n, b.limit = 0, limit
	return b
}

// release returns b to the pool; b must not be used after.
func (b *bodyHash) release() { bodyHashPool.Put(b) }

func (b *bodyHash) Write(p []byte) (int, error) {
	if b.n += int64(len(p)); b.n <= b.limit {
		b.sum.Write(p)
	}
	return len(p), nil
}

// etag returns the strong entity-tag of the bytes written, or "" when there
// were more than the limit.
func (b *bodyHash) etag() string {
	if b.n > b.limit {
		return ""
	}
	var sum [sha256.Size]byte
	return `"` + base64.RawURLEncoding.EncodeToString(b.sum.Sum(sum[:0])[:hashTagBytes]) + `"`
}

// serveHashedRead passes a GET or HEAD with `etags hash`: the upstream's
// entity-tag is replaced by the digest of the body the client receives,
// which is also what the cache learns. The client's If-None-Match names the
// guard's tags, so the guard evaluates it instead of the upstream.
func (h *Handler) serveHashedRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	hw := &hashingWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		h:                     h,
		head:                  r.Method == http.MethodHead,
		learn:                 h.learnsFrom(r),
	}
	if hw.learn {
		hw.key = h.resourceKey(r)
		hw.stamp = h.cache.Stamp(hw.key)
	}
	if lines, ok := r.Header["If-None-Match"]; ok {
		if l, err := precondition.ParseList(lines); err == nil {
			hw.ifNoneMatch = &l
		}
	}
	err := next.ServeHTTP(hw, withoutValidators(r))
	return hw.finish(err)
}

// withoutValidators returns r without the validators that name the guard's
// tags, which the upstream cannot evaluate. A Range that depends on such a
// validator (If-Range) goes too: the full representation is a valid answer,
// a part of another version is not. If-Modified-Since goes with
// If-None-Match, which takes precedence over it (RFC 9110 section 13.2.2).
func withoutValidators(r *http.Request) *http.Request {
	hdr := r.Header
	_, inm := hdr["If-None-Match"]
	_, im := hdr["If-Match"]
	_, ir := hdr["If-Range"]
	if !inm && !im && !ir {
		return r
	}
	r = r.WithContext(r.Context())
	r.Header = hdr.Clone()
	r.Header.Del("If-Match")
	if inm {
		r.Header.Del("If-None-Match")
		r.Header.Del("If-Modified-Since")
	}
	if ir {
		r.Header.Del("If-Range")
		r.Header.Del("Range")
	}
	return r
}

type hashingState uint8

const (
	awaitingHeader hashingState = iota
	holding                     // header and body held back while the body is hashed
	streaming                   // header sent, body hashed on its way out, tag in a trailer
	passing                     // nothing to tag: everything passes as is
)

// hashingWriter tags a GET response with the digest of its body. Small
// bodies are held until complete so that the tag can go in the header (and
// a matching If-None-Match be answered 304); larger ones stream, and their
// tag follows in a trailer field.
type hashingWriter struct {
	caddyhttp.ResponseWriterWrapper
	h           *Handler
	key         string
	stamp       etagcache.Stamp
	learn       bool
	head        bool
	ifNoneMatch *precondition.List

	state   hashingState
	status  int
	hash    *bodyHash
	held    []byte
	heldBuf *[]byte // where held came from, to go back to heldPool
}

// recycle returns the digest state and the held buffer to their pools once
// nothing refers to them any more.
func (hw *hashingWriter) recycle() {
	if hw.hash != nil {
		hw.hash.release()
		hw.hash = nil
	}
	if hw.heldBuf != nil {
		heldPool.Put(hw.heldBuf)
		hw.heldBuf, hw.held = nil, nil
	}
}

func (hw *hashingWriter) WriteHeader(status int) {
	if hw.state != awaitingHeader {
		return
	}
	if status < 200 {
		hw.ResponseWriterWrapper.WriteHeader(status)
		return
	}
	hdr := hw.Header()
	// The upstream's tag is not a version the guard can check writes against.
	hdr.Del("Etag")
	hw.status = status
	hw.state = passing
	switch {
	case hw.head || status == http.StatusNotModified:
		status = hw.fromCache(status)
	case status == http.StatusPartialContent:
		// A part is not the representation.
	case status >= 200 && status < 300:
		hw.hash = newBodyHash(hw.h.HashMaxBody)
		size := contentLength(hdr)
		switch {
		case size > hw.h.HashMaxBody:
			hw.learnVersion("")
		case size > heldBodyLimit || caddyhttp.IsIncremental(hdr) || isEventStream(hdr):
			// Known to be large, or meant to reach the client bit by bit.
			hw.startStreaming()
			return
		default:
			hw.state = holding
			hw.heldBuf = heldPool.Get().(*[]byte)
			hw.held = (*hw.heldBuf)[:0]
			return
		}
	default:
		hw.learnVersion("")
	}
	hw.ResponseWriterWrapper.WriteHeader(status)
}

// fromCache labels a response that carries no representation to hash (HEAD,
// 304) with the tag the cache knows, and turns a HEAD whose If-None-Match
// names it into 304.
func (hw *hashingWriter) fromCache(status int) int {
	if status == http.StatusNotFound || status == http.StatusGone {
		hw.learnVersion("")
		return status
	}
	if !hw.learn || status < 200 || status >= 300 && status != http.StatusNotModified {
		return status
	}
	v, ok := hw.h.cache.Get(hw.key)
	if !ok || !v.Exists || v.ETag == "" {
		return status
	}
	hdr := hw.Header()
	hdr.Set("Etag", v.ETag)
	if status != http.StatusNotModified && hw.noneMatch(v.ETag) {
		notModifiedHeader(hdr)
		return http.StatusNotModified
	}
	return status
}

// learnVersion teaches the cache what the response shows, tag being the
// guard's tag of its body ("" when it has none).
func (hw *hashingWriter) learnVersion(tag string) {
	if !hw.learn {
		return
	}
	if v, ok := versionFromResponse(hw.status, tag, hw.Header().Get("Last-Modified")); ok {
		hw.h.cache.Learn(hw.key, hw.stamp, v)
	}
}

// noneMatch reports whether the client's If-None-Match names tag, by the
// weak comparison RFC 9110 prescribes for it.
func (hw *hashingWriter) noneMatch(tag string) bool {
	if hw.ifNoneMatch == nil {
		return false
	}
	if hw.ifNoneMatch.Any {
		return true
	}
	current, ok := precondition.ParseETag(tag)
	if !ok {
		return false
	}
	for _, t := range hw.ifNoneMatch.Tags {
		if precondition.Lenient.Match(t, current) {
			return true
		}
	}
	return false
}

// startStreaming sends the header, announcing the tag as a trailer field,
// and whatever body was held.
func (hw *hashingWriter) startStreaming() error {
	hdr := hw.Header()
	// Trailers need chunked framing on HTTP/1.1, which a Content-Length
	// would rule out.
	hdr.Del("Content-Length")
	hdr.Add("Trailer", "Etag")
	hw.state = streaming
	hw.ResponseWriterWrapper.WriteHeader(hw.status)
	var err error
	if len(hw.held) > 0 {
		_, err = hw.ResponseWriterWrapper.Write(hw.held)
	}
	if hw.heldBuf != nil {
		heldPool.Put(hw.heldBuf)
		hw.heldBuf, hw.held = nil, nil
	}
	return err
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	if hw.state == awaitingHeader {
		hw.WriteHeader(http.StatusOK)
	}
	switch hw.state {
	case holding:
		hw.hash.Write(p)
		if len(hw.held)+len(p) <= heldBodyLimit {
			hw.held = append(hw.held, p...)
			return len(p), nil
		}
		if err := hw.startStreaming(); err != nil {
			return 0, err
		}
	case streaming:
		hw.hash.Write(p)
	}
	return hw.ResponseWriterWrapper.Write(p)
}

// ReadFrom keeps the underlying writer's fast paths for bodies that are not
// hashed; the others must pass through Write.
func (hw *hashingWriter) ReadFrom(r io.Reader) (int64, error) {
	if hw.state == awaitingHeader {
		hw.WriteHeader(http.StatusOK)
	}
	if hw.state == passing {
		return hw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{hw}, r)
}

// FlushError lets a streaming response reach the client as it comes. A held
// response is flushed when it is complete: reverse_proxy flushes after
// every write of a response without Content-Length, which would otherwise
// push every such response's tag into a trailer that most clients ignore.
func (hw *hashingWriter) FlushError() error {
	if hw.state == awaitingHeader {
		hw.WriteHeader(http.StatusOK)
	}
	if hw.state == holding {
		return nil
	}
	return http.NewResponseController(hw.ResponseWriterWrapper.ResponseWriter).Flush()
}

// finish completes the response once the next handler has returned.
func (hw *hashingWriter) finish(err error) error {
	defer hw.recycle()
	if hw.state == awaitingHeader {
		if err != nil {
			return err
		}
		hw.WriteHeader(http.StatusOK)
	}
	switch hw.state {
	case holding:
		if err != nil {
			// Nothing has been sent: the error can still be answered.
			return err
		}
		tag := hw.hash.etag()
		hw.learnVersion(tag)
		hdr := hw.Header()
		if tag != "" {
			hdr.Set("Etag", tag)
			if hw.noneMatch(tag) {
				notModifiedHeader(hdr)
				hw.ResponseWriterWrapper.WriteHeader(http.StatusNotModified)
				return nil
			}
		}
		hw.ResponseWriterWrapper.WriteHeader(hw.status)
		if len(hw.held) > 0 {
			_, err = hw.ResponseWriterWrapper.Write(hw.held)
		}
	case streaming:
		if err != nil {
			return err
		}
		tag := hw.hash.etag()
		if tag != "" {
			// Declared in the Trailer field: sent after the body.
			hw.Header().Set("Etag", tag)
		}
		hw.learnVersion(tag)
	}
	return err
}

// notModifiedHeader trims a 200's header to what a 304 carries.
func notModifiedHeader(hdr http.Header) {
	hdr.Del("Content-Type")
	hdr.Del("Content-Length")
	hdr.Del("Content-Encoding")
	hdr.Del("Trailer")
}

func contentLength(hdr http.Header) int64 {
	n, err := strconv.ParseInt(hdr.Get("Content-Length"), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

func isEventStream(hdr http.Header) bool {
	ct := hdr.Get("Content-Type")
	const es = "text/event-stream"
	return len(ct) >= len(es) && strings.EqualFold(ct[:len(es)], es)
}

// writerOnly hides a writer's ReadFrom, so that io.Copy does not call it
// back.
type writerOnly struct{ io.Writer }
