package writeguard

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/precondition"
)

// hashVersions names versions itself, by a digest of the representation's
// bytes (`etags hash`), for upstreams whose own tags are missing or do not
// change with the content (mtime+size tags that repeat within a second):
// every 2xx GET is tagged with the digest of its body, a write is checked
// against the digest of the current representation, and a successful
// write's answer carries the digest of the representation it made.
type hashVersions struct {
	h *Handler
	// limit is hash_max_body: larger representations get no tag.
	limit int64
}

func (s *hashVersions) untagged() string { return hashUntagged(s.limit)() }

func (*hashVersions) trusts(*write, etagcache.Version) bool { return true }
func (*hashVersions) staleDetail(*write) string             { return "" }

// probe asks for the representation with a GET, whose body is hashed and
// discarded.
func (s *hashVersions) probe(r *http.Request, next caddyhttp.Handler) (*probeResponse, etagcache.Version, bool, error) {
	resp, err := s.h.probe(r, http.MethodGet, next, s.limit)
	if err != nil {
		countProbeResult(resp, false, err)
		return resp, etagcache.Version{}, false, err
	}
	etag := ""
	if resp.hash != nil {
		if resp.status != http.StatusPartialContent {
			etag = resp.hash.etag()
		}
		resp.hash.release()
		resp.hash = nil
	}
	v, known := versionFromResponse(resp.status, etag, resp.header.Get("Last-Modified"))
	v.Guard = v.ETag != ""
	countProbeResult(resp, known, nil)
	return resp, v, known, nil
}

// DefaultHashMaxBody is the largest representation tagged by default.
const DefaultHashMaxBody = 16 << 20

// heldBodyLimit is how much of a GET response is held back so that its tag
// can still go in the ETag header field. A response that grows beyond it is
// streamed as it arrives and its tag follows in a trailer field.
const heldBodyLimit = 64 << 10

// smallHeldLimit is the size of the held buffers most responses fit in; a
// response that outgrows one moves to a buffer of heldBodyLimit.
const smallHeldLimit = 4 << 10

// heldFlushDelay is how long a held response may wait after the upstream
// asked for a flush. reverse_proxy flushes after every write of a response
// without Content-Length, most of which are complete microseconds later and
// keep their tag in the header; a stream (NDJSON, a watch, a log tail) that
// is still incomplete after it is streamed from then on.
const heldFlushDelay = 100 * time.Millisecond

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
	bodyHashPool  = sync.Pool{New: func() any { return &bodyHash{sum: sha256.New()} }}
	heldPool      = sync.Pool{New: func() any { b := make([]byte, 0, heldBodyLimit); return &b }}
	smallHeldPool = sync.Pool{New: func() any { b := make([]byte, 0, smallHeldLimit); return &b }}
)

// heldBuffer is a pooled buffer for a held body.
type heldBuffer struct {
	buf  *[]byte
	pool *sync.Pool
}

// getHeld returns a buffer for a body of about size bytes (-1: unknown).
func getHeld(size int64) heldBuffer {
	if size >= 0 && size <= smallHeldLimit || size < 0 {
		return heldBuffer{smallHeldPool.Get().(*[]byte), &smallHeldPool}
	}
	return heldBuffer{heldPool.Get().(*[]byte), &heldPool}
}

// append adds p, moving to a large buffer when the small one is full; it
// reports false when even that cannot take p.
func (hb *heldBuffer) append(p []byte) bool {
	b := *hb.buf
	if len(b)+len(p) > cap(b) {
		if len(b)+len(p) > heldBodyLimit {
			return false
		}
		large := heldPool.Get().(*[]byte)
		*large = append((*large)[:0], b...)
		hb.release()
		hb.buf, hb.pool = large, &heldPool
		b = *large
	}
	*hb.buf = append(b, p...)
	return true
}

func (hb *heldBuffer) bytes() []byte { return *hb.buf }

func (hb *heldBuffer) release() {
	if hb.buf != nil {
		*hb.buf = (*hb.buf)[:0]
		hb.pool.Put(hb.buf)
		hb.buf = nil
	}
}

func newBodyHash(limit int64) *bodyHash {
	guardMetrics().hashed.Inc()
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
// which is also what the cache learns. The client's If-None-Match and
// If-Match name the guard's tags, so the guard evaluates them instead of
// the upstream.
func (s *hashVersions) serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error {
	h := s.h
	hw := s.newHashingWriter(w, r, method == http.MethodHead)
	hw.ifMatch = parsedList(r.Header, "If-Match")
	if hw.ifNoneMatch != nil && !hw.head && hw.learn {
		// The client names a version it holds: unless the cache knows that
		// another one is current, check it with a GET whose body is hashed
		// and discarded, so that a body of any size the client already has
		// is answered 304 instead of being sent again.
		if v, ok := h.cache.Get(hw.key); !ok || v.Exists && v.ETag != "" && hw.noneMatch(v.ETag) {
			if done, err := s.revalidateRead(w, r, next, hw); done {
				return err
			}
		}
	}
	// A panic (reverse_proxy's abort when the upstream's body breaks off)
	// must leave no flush timer to write on a response that is gone.
	defer hw.abandon()
	if hw.learn {
		r = h.withoutAmbiguousDate(r, hw.key)
	}
	err := hw.serveNext(next, withoutValidators(r))
	return hw.finish(err)
}

// newHashingWriter returns the writer that tags the answer to the read r.
// The stamp is taken now, before the upstream is asked.
func (s *hashVersions) newHashingWriter(w http.ResponseWriter, r *http.Request, head bool) *hashingWriter {
	h := s.h
	var key string
	var stamp etagcache.Stamp
	learn := h.learnsFrom(r)
	if learn {
		key = h.resourceKey(r)
		stamp = h.cache.Stamp(key)
	}
	return s.hashingWriterFor(w, r, head, learn, key, stamp)
}

// hashingWriterFor returns the writer that tags the answer to the read r,
// which teaches the cache (learn) key's version if no write was recorded
// since stamp.
func (s *hashVersions) hashingWriterFor(w http.ResponseWriter, r *http.Request, head, learn bool, key string, stamp etagcache.Stamp) *hashingWriter {
	return &hashingWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		h:                     s.h,
		r:                     r,
		head:                  head,
		learn:                 learn,
		key:                   key,
		stamp:                 stamp,
		ifNoneMatch:           parsedList(r.Header, "If-None-Match"),
	}
}

// errAnswerAborted reports an upstream answer that broke off while it was
// held, before anything reached the client.
var errAnswerAborted = errors.New("the upstream's answer broke off")

// serveNext runs the next handler. When reverse_proxy aborts a response
// that is still held, nothing has been sent, and the client can still be
// answered with an error instead of a dropped connection.
func (hw *hashingWriter) serveNext(next caddyhttp.Handler, r *http.Request) (err error) {
	defer func() {
		if rec := recover(); rec != nil {
			hw.mu.Lock()
			held := hw.state == holding
			hw.mu.Unlock()
			if rec != http.ErrAbortHandler || !held {
				panic(rec)
			}
			err = caddyhttp.Error(http.StatusBadGateway, errAnswerAborted)
		}
	}()
	return next.ServeHTTP(hw, r)
}

// abandon stops what a response that did not finish left running.
func (hw *hashingWriter) abandon() {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.flushTimer != nil {
		hw.flushTimer.Stop()
	}
	if hw.state != finished {
		hw.state = finished
		hw.recycle()
	}
}

func parsedList(hdr http.Header, field string) *precondition.List {
	lines, ok := hdr[field]
	if !ok {
		return nil
	}
	l, err := precondition.ParseList(lines)
	if err != nil {
		return nil
	}
	return &l
}

// revalidateRead answers a conditional GET whose If-None-Match names the
// cached version: 304 when a GET of the current representation hashes to
// it; otherwise (done false) the request is served as any other.
func (s *hashVersions) revalidateRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, hw *hashingWriter) (done bool, err error) {
	h := s.h
	stamp := h.cache.Stamp(hw.key)
	resp, v, known, err := s.probe(r, next)
	if err != nil || !known || !v.Exists || v.ETag == "" || !hw.noneMatch(v.ETag) {
		return false, nil
	}
	h.cache.Learn(hw.key, stamp, v)
	hdr := w.Header()
	// What a 304 must carry of the 200 it stands for (RFC 9110 section
	// 15.4.5), and its validators.
	for _, f := range [...]string{"Cache-Control", "Content-Location", "Date", "Expires", "Vary", "Last-Modified"} {
		if vv, ok := resp.header[f]; ok {
			hdr[f] = vv
		}
	}
	hdr.Set("Etag", v.ETag)
	h.markRevalidate(hdr, http.StatusNotModified, &hw.noCache)
	w.WriteHeader(http.StatusNotModified)
	return true, nil
}

// withoutValidators returns r without the validators that name the guard's
// tags, which the upstream cannot evaluate. A Range that depends on such a
// validator (If-Range, If-Match) goes too: the full representation is a
// valid answer, a part of another version is not. If-Modified-Since goes
// with If-None-Match, which takes precedence over it (RFC 9110 section
// 13.2.2).
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
	if inm {
		r.Header.Del("If-None-Match")
		r.Header.Del("If-Modified-Since")
	}
	if im || ir {
		r.Header.Del("If-Match")
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
	finished                    // the next handler returned
)

// hashingWriter tags a GET response with the digest of its body. Small
// bodies are held until complete so that the tag can go in the header (and
// a matching If-None-Match be answered 304); larger ones, and streams that
// pause after a flush, are passed on as they come, and their tag follows in
// a trailer field.
//
// The mutex is for the timer that ends a hold after a flush: it runs on
// its own goroutine.
type hashingWriter struct {
	caddyhttp.ResponseWriterWrapper
	h           *Handler
	r           *http.Request
	key         string
	stamp       etagcache.Stamp
	learn       bool
	head        bool
	ifNoneMatch *precondition.List
	ifMatch     *precondition.List

	mu         sync.Mutex
	state      hashingState
	status     int
	hash       *bodyHash
	held       heldBuffer
	flushTimer *time.Timer
	// coding is the Content-Encoding the upstream sent; one that appears
	// later was added by an outer encode.
	coding  string
	noCache noCacheValue
}

func (hw *hashingWriter) WriteHeader(status int) {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	hw.writeHeader(status)
}

func (hw *hashingWriter) writeHeader(status int) {
	if hw.state != awaitingHeader {
		return
	}
	if status < 200 {
		if status == http.StatusSwitchingProtocols {
			// The connection stops being HTTP's: nothing to tag, nothing
			// more to send.
			hw.state = passing
		}
		hw.ResponseWriterWrapper.WriteHeader(status)
		return
	}
	hdr := hw.Header()
	hw.h.markRevalidate(hdr, status, &hw.noCache)
	// The upstream's tag is not a version the guard can check writes
	// against, in the header or in a trailer.
	hdr.Del("Etag")
	upstreamTrailers := hdr.Get("Trailer") != ""
	dropETagTrailer(hdr)
	hw.status = status
	hw.state = passing
	switch {
	case hw.head:
		status = hw.headFromCache(status)
	case status == http.StatusNotModified, status == http.StatusPartialContent:
		// The upstream's 304 answers If-Modified-Since, at the one-second
		// resolution of dates: the client's copy may be an older version
		// than the one the cache knows, so it gets no tag. A part is not
		// the representation.
	case status >= 200 && status < 300:
		hw.hash = newBodyHash(hw.h.HashMaxBody)
		hw.coding = hdr.Get("Content-Encoding")
		size := contentLength(hdr)
		switch {
		case size > hw.h.HashMaxBody:
			hw.learnVersion("")
		case size > heldBodyLimit || caddyhttp.IsIncremental(hdr) || isEventStream(hdr) || upstreamTrailers:
			// Known to be large, or meant to reach the client bit by bit.
			// With trailers of its own it streams too, even if the only one
			// was an ETag: reverse_proxy writes them into the header map
			// after the body, which the timer that ends a hold must then
			// not touch.
			hw.startStreaming()
			return
		default:
			hw.state = holding
			hw.held = getHeld(size)
			return
		}
	default:
		hw.learnVersion("")
	}
	hw.ResponseWriterWrapper.WriteHeader(status)
}

// headFromCache labels a HEAD with the tag the cache knows, and turns a
// HEAD whose If-None-Match names it into 304. The cached tag names the
// version a GET hashed; a HEAD whose Last-Modified differs from that
// version's shows that it is not current any more.
func (hw *hashingWriter) headFromCache(status int) int {
	if status == http.StatusNotFound || status == http.StatusGone {
		hw.learnVersion("")
		return status
	}
	if !hw.learn || status < 200 || status >= 300 {
		return status
	}
	v, ok := hw.h.cache.Get(hw.key)
	if !ok || !v.Exists || v.ETag == "" || !v.Guard {
		// Not a tag the guard made: an upstream's, learned before its
		// site's tags were distrusted (etags auto).
		return status
	}
	hdr := hw.Header()
	if lm, err := parseHTTPDate(hdr.Get("Last-Modified")); err == nil && !lm.Equal(v.LastModified) {
		hw.h.cache.Forget(hw.key)
		return status
	}
	hdr.Set("Etag", v.ETag)
	if hw.noneMatch(v.ETag) {
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
		v.Guard = v.ETag != ""
		hw.h.cache.Learn(hw.key, hw.stamp, v)
	}
}

// noneMatch reports whether the client's If-None-Match names tag, by the
// weak comparison RFC 9110 prescribes for it.
func (hw *hashingWriter) noneMatch(tag string) bool {
	return hw.ifNoneMatch != nil && listMatches(hw.ifNoneMatch, tag, precondition.Lenient)
}

func listMatches(l *precondition.List, tag string, m precondition.Matching) bool {
	if l.Any {
		return true
	}
	current, ok := precondition.ParseETag(tag)
	if !ok {
		return false
	}
	for _, t := range l.Tags {
		if m.Match(t, current) {
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
	if hw.held.buf != nil {
		if b := hw.held.bytes(); len(b) > 0 {
			_, err = hw.ResponseWriterWrapper.Write(b)
		}
		hw.held.release()
	}
	return err
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.state == awaitingHeader {
		hw.writeHeader(http.StatusOK)
	}
	switch hw.state {
	case holding:
		hw.hash.Write(p)
		if hw.held.append(p) {
			return len(p), nil
		}
		if err := hw.startStreaming(); err != nil {
			return 0, err
		}
	case streaming:
		hw.hash.Write(p)
	case finished:
		return 0, http.ErrHandlerTimeout
	}
	return hw.ResponseWriterWrapper.Write(p)
}

// ReadFrom keeps the underlying writer's fast paths for bodies that are not
// hashed; the others must pass through Write.
func (hw *hashingWriter) ReadFrom(r io.Reader) (int64, error) {
	hw.mu.Lock()
	if hw.state == awaitingHeader {
		hw.writeHeader(http.StatusOK)
	}
	state := hw.state
	hw.mu.Unlock()
	if state == passing {
		return hw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{hw}, r)
}

// FlushError lets a streaming response reach the client as it comes. A
// held response is flushed when it is complete, or heldFlushDelay after the
// first flush if it is not complete by then.
func (hw *hashingWriter) FlushError() error {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.state == awaitingHeader {
		hw.writeHeader(http.StatusOK)
	}
	switch hw.state {
	case holding:
		if hw.flushTimer == nil {
			hw.flushTimer = time.AfterFunc(heldFlushDelay, hw.flushHeld)
		}
		return nil
	case finished:
		return nil
	}
	return http.NewResponseController(hw.ResponseWriterWrapper.ResponseWriter).Flush()
}

// flushHeld ends a hold that a flush asked to end: the response is a stream.
func (hw *hashingWriter) flushHeld() {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.state != holding {
		return
	}
	if hw.startStreaming() == nil {
		http.NewResponseController(hw.ResponseWriterWrapper.ResponseWriter).Flush()
	}
}

// representationFields describe a response body; a held response that
// failed leaves them behind for Caddy's error answer unless removed.
var representationFields = [...]string{"Content-Length", "Content-Encoding", "Content-Type", "Content-Range", "Content-Language", "Content-Location", "Last-Modified", "Etag", "Trailer"}

// finish completes the response once the next handler has returned.
func (hw *hashingWriter) finish(err error) error {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.flushTimer != nil {
		hw.flushTimer.Stop()
	}
	defer hw.recycle()
	if hw.state == awaitingHeader && err == nil {
		hw.writeHeader(http.StatusOK)
	}
	// An ETag trailer the upstream did not announce, which reverse_proxy
	// passes on under http.TrailerPrefix.
	delete(hw.Header(), http.TrailerPrefix+"Etag")
	state := hw.state
	hw.state = finished
	switch state {
	case holding:
		if err != nil {
			// Nothing has been sent: the error can still be answered, and
			// the failed response's fields must not describe that answer.
			hdr := hw.Header()
			for _, f := range representationFields {
				hdr.Del(f)
			}
			return err
		}
		tag := hw.hash.etag()
		hw.learnVersion(tag)
		hdr := hw.Header()
		if hw.ifMatch != nil && !(tag != "" && listMatches(hw.ifMatch, tag, hw.h.matching)) {
			for _, f := range representationFields {
				hdr.Del(f)
			}
			return writeProblem(hw.ResponseWriterWrapper.ResponseWriter, hw.r, readPreconditionFailed())
		}
		if tag != "" {
			hdr.Set("Etag", tag)
			if hw.noneMatch(tag) {
				notModifiedHeader(hdr)
				hw.ResponseWriterWrapper.WriteHeader(http.StatusNotModified)
				return nil
			}
		}
		hw.ResponseWriterWrapper.WriteHeader(hw.status)
		if b := hw.held.bytes(); len(b) > 0 {
			_, err = hw.ResponseWriterWrapper.Write(b)
		}
	case streaming:
		if err != nil {
			return err
		}
		tag := hw.hash.etag()
		hw.learnVersion(tag)
		hdr := hw.Header()
		// Announced in the Trailer field, the ETag is sent after the body:
		// the guard's, or none, never the upstream's trailer, which
		// reverse_proxy has just put in the header map.
		hdr.Del("Etag")
		if tag != "" {
			// encode suffixes a strong tag in the header with the coding
			// it applied; a trailer escapes it, so do it here.
			if c := hdr.Get("Content-Encoding"); c != "" && c != hw.coding {
				tag = tag[:len(tag)-1] + "-" + c + `"`
			}
			hdr.Set("Etag", tag)
		}
	}
	return err
}

// recycle returns the digest state and the held buffer to their pools once
// nothing refers to them any more.
func (hw *hashingWriter) recycle() {
	if hw.hash != nil {
		hw.hash.release()
		hw.hash = nil
	}
	hw.held.release()
}

// dropETagTrailer takes ETag out of the trailer fields that the Trailer
// field announces. ETag is a singleton field, and the guard announces its
// own; an upstream's announcement left in place would make net/http send
// the ETag trailer twice, or send the upstream's.
func dropETagTrailer(hdr http.Header) {
	lines, ok := hdr["Trailer"]
	if !ok {
		return
	}
	var kept []string
	changed := false
	for _, line := range lines {
		var b strings.Builder
		for _, name := range strings.Split(line, ",") {
			name = strings.TrimSpace(name)
			if strings.EqualFold(name, "Etag") {
				changed = true
				continue
			}
			if name != "" {
				if b.Len() > 0 {
					b.WriteString(", ")
				}
				b.WriteString(name)
			}
		}
		if b.Len() > 0 {
			kept = append(kept, b.String())
		}
	}
	switch {
	case !changed:
	case len(kept) == 0:
		delete(hdr, "Trailer")
	default:
		hdr["Trailer"] = kept
	}
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

// taggingWriter carries a guarded write's answer with `etags hash`. The
// upstream's answer names no version the guard can use, so after a
// successful write the guard asks for the new representation, still under
// the lock, records its tag and hands it to the client in the answer's
// ETag. The answer is held (up to heldBodyLimit) until reverse_proxy has
// read it: asking sooner would wait for the connection the answer still
// occupies, for ever with `max_conns_per_host 1`.
type taggingWriter struct {
	caddyhttp.ResponseWriterWrapper
	wr *write
	// auto is set with etags auto, where guarded says the resource's
	// versions are the guard's tags; otherwise the upstream's, and the
	// answer's own tag (answerTag) is what the write made unless it is
	// missing, weak, or one the guard saw replaced (source_auto.go).
	auto      *autoVersions
	guarded   bool
	answerTag string

	holding bool
	status  int
	body    heldBuffer
}

func (tw *taggingWriter) WriteHeader(status int) {
	wr := tw.wr
	if tw.holding || wr.ended {
		if !tw.holding {
			tw.ResponseWriterWrapper.WriteHeader(status)
		}
		return
	}
	if status < 200 {
		if status == http.StatusSwitchingProtocols {
			// The connection becomes a tunnel; what it does to the
			// resource is unknown.
			wr.end(true, 0, nil)
		}
		tw.ResponseWriterWrapper.WriteHeader(status)
		return
	}
	hdr := tw.Header()
	if tw.auto != nil && !tw.guarded {
		etag := hdr.Get("Etag")
		if upstreamAnswerSuffices(wr, status, etag) {
			wr.end(true, status, wr.answered(status, etag, hdr.Get("Last-Modified")))
			tw.ResponseWriterWrapper.WriteHeader(status)
			return
		}
		tw.answerTag = etag
	}
	// Neither the upstream's tag nor its ETag trailer names a version the
	// guard vouches for.
	hdr.Del("Etag")
	dropETagTrailer(hdr)
	if tw.tagsAnswer(status, hdr) {
		// write_timeout goes on until the answer has been read: an
		// upstream that stalls in its body must not hold the lock longer.
		tw.holding = true
		tw.status = status
		tw.body = getHeld(contentLength(hdr))
		return
	}
	// Failed, a DELETE (recorded as absent), or an answer about another
	// resource (a POST's 201 with the Location of what it created): the
	// version is recorded or forgotten without asking.
	wr.end(true, status, wr.answered(status, "", ""))
	tw.ResponseWriterWrapper.WriteHeader(status)
}

// tagsAnswer reports whether the new version of the write's target is
// worth asking for: the write succeeded, left something there, and the
// answer is about the target itself.
func (tw *taggingWriter) tagsAnswer(status int, hdr http.Header) bool {
	wr := tw.wr
	if status < 200 || status >= 300 || wr.method == http.MethodDelete || wr.method == http.MethodPost {
		return false
	}
	loc := hdr.Get("Location")
	if loc == "" {
		return true
	}
	u, err := wr.r.URL.Parse(loc)
	return err == nil && (u.Host == "" || u.Host == wr.r.Host) && u.EscapedPath() == wr.r.URL.EscapedPath()
}

func (tw *taggingWriter) Write(p []byte) (int, error) {
	if !tw.holding && !tw.wr.ended {
		tw.WriteHeader(http.StatusOK)
	}
	if tw.holding {
		if tw.body.append(p) {
			return len(p), nil
		}
		// Too large to hold: let it go without a tag, and let the next
		// write ask for the version.
		if err := tw.release(); err != nil {
			return 0, err
		}
	}
	return tw.ResponseWriterWrapper.Write(p)
}

// release sends a held answer without a tag and gives the lock up.
func (tw *taggingWriter) release() error {
	tw.holding = false
	tw.wr.end(true, 0, nil)
	tw.ResponseWriterWrapper.WriteHeader(tw.status)
	b := tw.body.bytes()
	var err error
	if len(b) > 0 {
		_, err = tw.ResponseWriterWrapper.Write(b)
	}
	tw.body.release()
	return err
}

// ReadFrom keeps the underlying writer's fast paths for an answer that is
// not held.
func (tw *taggingWriter) ReadFrom(r io.Reader) (int64, error) {
	if !tw.holding && !tw.wr.ended {
		tw.WriteHeader(http.StatusOK)
	}
	if !tw.holding {
		return tw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{tw}, r)
}

// FlushError waits while the answer is held: reverse_proxy flushes after
// every write of an answer without Content-Length.
func (tw *taggingWriter) FlushError() error {
	if tw.holding {
		return nil
	}
	if !tw.wr.ended {
		tw.WriteHeader(http.StatusOK)
		if tw.holding {
			return nil
		}
	}
	return http.NewResponseController(tw.ResponseWriterWrapper.ResponseWriter).Flush()
}

// serveNext runs the next handler; reverse_proxy's abort of an answer that
// is still held becomes an error, since nothing has reached the client.
func (tw *taggingWriter) serveNext(next caddyhttp.Handler, r *http.Request) (err error) {
	defer func() {
		// An ETag trailer the upstream did not announce, which
		// reverse_proxy passes on under http.TrailerPrefix.
		delete(tw.Header(), http.TrailerPrefix+"Etag")
		if rec := recover(); rec != nil {
			if rec != http.ErrAbortHandler || !tw.holding {
				panic(rec)
			}
			err = caddyhttp.Error(http.StatusBadGateway, errAnswerAborted)
		}
	}()
	return next.ServeHTTP(tw, r)
}

// forward holds a successful write's answer until reverse_proxy has
// returned, then asks for the new version (complete).
func (s *hashVersions) forward(wr *write) error {
	tw := &taggingWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: wr.w},
		wr:                    wr,
	}
	err := tw.serveNext(wr.next, wr.lr)
	if tw.holding {
		return tw.complete(err)
	}
	return err
}

// complete ends a held answer once reverse_proxy has returned: it asks for
// the new version, records it, releases the lock and sends the answer with
// the new tag. The check runs on the client's context, bounded anew by
// write_timeout: the write itself is done.
func (tw *taggingWriter) complete(err error) error {
	tw.holding = false
	defer tw.body.release()
	wr := tw.wr
	h := wr.h
	if err != nil {
		// The upstream answered, then failed or stalled past write_timeout:
		// the write was probably applied, and nothing has been sent yet.
		wr.end(true, 0, nil)
		hdr := tw.Header()
		for _, f := range representationFields {
			hdr.Del(f)
		}
		return wr.upstreamFailed(err)
	}
	h.timeouts.stop(wr)
	ctx, cancel := context.WithTimeout(wr.r.Context(), time.Duration(h.WriteTimeout))
	var (
		v     etagcache.Version
		known bool
		perr  error
	)
	switch r := wr.r.WithContext(ctx); {
	case tw.auto == nil:
		_, v, known, perr = h.versions.probe(r, wr.next)
	case tw.guarded:
		v, known, perr = tw.auto.guardedAfterWrite(wr, r)
	default:
		v, known, perr = tw.auto.afterWrite(wr, r, tw.answerTag)
	}
	cancel()
	tagged := perr == nil && known && tw.status != http.StatusAccepted
	var made *etagcache.Version
	if tagged {
		wr.made = v
		made = &wr.made
	}
	wr.end(true, tw.status, made)
	// reverse_proxy has put the upstream's ETag trailer, if any, in the
	// header map.
	tw.Header().Del("Etag")
	if tagged && v.Exists && v.ETag != "" {
		tw.Header().Set("Etag", v.ETag)
	}
	tw.ResponseWriterWrapper.WriteHeader(tw.status)
	if b := tw.body.bytes(); len(b) > 0 {
		_, err = tw.ResponseWriterWrapper.Write(b)
	}
	return err
}
