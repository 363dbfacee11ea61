package writeguard

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// autoVersions (`etags auto`, the default) uses the upstream's ETag where
// it is evidence of a version and the guard's own tag (as `etags hash`
// makes it) where it is not:
//
//   - a 2xx representation without an ETag is tagged by the guard, so that
//     a client that sends back what it read always has a tag to send;
//   - a write checked against an upstream tag is followed by a look at the
//     tag it made: the answer's, when it carries a strong one, else the
//     upstream's answer to a version check under the same lock. A tag that
//     the resource had before (the one the write was checked against, or
//     one that an earlier write replaced) proves that the upstream's tags
//     do not name versions: an ETag of the route, or of a one-second mtime
//     and a size. The site is switched to the guard's tags (auto_sites.go)
//     before the lock is released, and the write's new version is recorded
//     with the guard's tag and the reused one among those it replaced, so
//     that no write naming the reused tag passes, here or in another
//     instance.
//
// A write that left the representation as it was (the same body written
// again) shows its old tag too, when the upstream's tags are made of the
// content. Telling it apart would need the digest of the representation
// before the write, which only hashing every read would give: the guard
// switches, which costs hashing, and no update.
//
// In front of an upstream whose strong tags change with every write,
// nothing is hashed: reads pass as with `etags upstream` (one check of
// their answer's ETag field), and a write whose answer carries its new tag
// ends as there.
type autoVersions struct {
	h      *Handler
	up     upstreamVersions
	hash   *hashVersions
	reused *reusedTags
}

func (s *autoVersions) untagged() string { return s.hash.untagged() }

// siteUntrusted reports whether r's site is tagged by the guard.
func (s *autoVersions) siteUntrusted(r *http.Request) bool {
	return s.reused.any.Load() && s.reused.untrusted(s.h.siteOf(r))
}

// trusts refuses an upstream tag of a site whose tags are distrusted. A
// version that another instance recorded after it found the site's tags
// reused (TagsReused) makes this one distrust them too.
func (s *autoVersions) trusts(wr *write, v etagcache.Version) bool {
	if v.TagsReused && !s.siteUntrusted(wr.r) {
		s.reused.distrust(s.h.logger, s.h.siteNames(wr.r, wr.site()), wr.key, "", "store")
	}
	return v.Guard || !v.Exists || v.ETag == "" || !s.siteUntrusted(wr.r)
}

func (s *autoVersions) staleDetail(wr *write) string {
	if !s.siteUntrusted(wr.r) {
		return ""
	}
	return "This site's upstream gives new versions entity-tags that earlier versions had, so the guard tags its representations itself now, and the ETag you sent names no version it can vouch for. GET the resource again: the answer carries the guard's ETag. Merge your change into it and repeat the write with If-Match set to that ETag."
}

// serveRead passes a read as `etags upstream` does, unless its answer has
// no ETag, which the guard then supplies, or the site's tags are
// distrusted, where the read is served as `etags hash` serves it. A read
// that names a version (If-None-Match, If-Match, If-Range) of a resource
// whose versions the guard tags is served as `etags hash` serves it too:
// the upstream cannot evaluate the guard's tags.
func (s *autoVersions) serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error {
	h := s.h
	if s.siteUntrusted(r) {
		return s.hash.serveRead(w, r, next, method)
	}
	ar := &autoReader{
		learningWriter: learningWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, h: h, learn: h.learnsFrom(r)},
		s:              s,
		r:              r,
		head:           method == http.MethodHead,
	}
	if ar.learn {
		ar.key = h.resourceKey(r)
		ar.stamp = h.cache.Stamp(ar.key)
		r = h.withoutAmbiguousDate(r, ar.key)
	}
	hdr := r.Header
	_, inm := hdr["If-None-Match"]
	_, im := hdr["If-Match"]
	_, ir := hdr["If-Range"]
	if inm || im || ir {
		var v etagcache.Version
		var known bool
		if ar.learn {
			v, known = h.cache.Get(ar.key)
		}
		if !(known && v.Exists && v.ETag != "" && !v.Guard) {
			if known && v.Guard || im || ir {
				return s.hash.serveRead(w, r, next, method)
			}
			// Unknown: the tag the client names is the upstream's or the
			// guard's. The upstream evaluates If-None-Match; an upstream
			// without tags would evaluate If-Modified-Since instead, and a
			// 304 at the one-second resolution of dates may stand for
			// another version than the client's: that field goes.
			if _, ims := hdr["If-Modified-Since"]; ims {
				r = r.WithContext(r.Context())
				r.Header = hdr.Clone()
				r.Header.Del("If-Modified-Since")
			}
			ar.ifNoneMatch = true
		}
	}
	return ar.serve(next, r)
}

// autoReader passes a read's answer as learningWriter does, unless it is a
// representation without an ETag: then it hands the answer to a
// hashingWriter, which tags it.
type autoReader struct {
	learningWriter
	s    *autoVersions
	r    *http.Request
	head bool
	// ifNoneMatch: the client's If-None-Match reached the upstream, and
	// is evaluated against the guard's tag if the answer needs one.
	ifNoneMatch bool
	hw          *hashingWriter
}

func (ar *autoReader) serve(next caddyhttp.Handler, r *http.Request) (err error) {
	defer func() {
		if ar.hw == nil {
			return
		}
		if rec := recover(); rec != nil {
			ar.hw.mu.Lock()
			held := ar.hw.state == holding
			ar.hw.mu.Unlock()
			ar.hw.abandon()
			if rec != http.ErrAbortHandler || !held {
				panic(rec)
			}
			err = caddyhttp.Error(http.StatusBadGateway, errAnswerAborted)
		}
	}()
	err = next.ServeHTTP(ar, r)
	if ar.hw != nil {
		err = ar.hw.finish(err)
		ar.hw.abandon()
	}
	return err
}

func (ar *autoReader) WriteHeader(status int) {
	if ar.hw != nil {
		ar.hw.WriteHeader(status)
		return
	}
	if ar.wroteHeader || status < 200 {
		ar.ResponseWriterWrapper.WriteHeader(status)
		return
	}
	etag := ar.Header().Get("Etag")
	if status < 300 && status != http.StatusPartialContent && etag == "" {
		ar.wroteHeader = true
		// With the stamp taken before the upstream was asked: a write that
		// overtook this answer must keep it out of the cache.
		hw := ar.s.hash.hashingWriterFor(ar.ResponseWriter, ar.r, ar.head, ar.learn, ar.key, ar.stamp)
		if !ar.ifNoneMatch {
			hw.ifNoneMatch = nil
		}
		ar.hw = hw
		hw.WriteHeader(status)
		return
	}
	ar.learnHeader(status, etag)
	ar.ResponseWriterWrapper.WriteHeader(status)
}

func (ar *autoReader) Write(p []byte) (int, error) {
	if !ar.wroteHeader {
		ar.WriteHeader(http.StatusOK)
	}
	if ar.hw != nil {
		return ar.hw.Write(p)
	}
	return ar.ResponseWriterWrapper.Write(p)
}

func (ar *autoReader) ReadFrom(r io.Reader) (int64, error) {
	if !ar.wroteHeader {
		ar.WriteHeader(http.StatusOK)
	}
	if ar.hw != nil {
		return ar.hw.ReadFrom(r)
	}
	return ar.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError reaches the hashingWriter, which holds a response it tags
// until it is complete; http.ResponseController would otherwise go round
// it to the writer underneath.
func (ar *autoReader) FlushError() error {
	if ar.hw != nil {
		return ar.hw.FlushError()
	}
	return http.NewResponseController(ar.ResponseWriter).Flush()
}

// probe asks the upstream with a HEAD, as `etags upstream` does, unless
// the guard tags the resource's versions: then, or when the answer names
// no version by a tag, with a GET whose body is hashed.
func (s *autoVersions) probe(r *http.Request, next caddyhttp.Handler) (*probeResponse, etagcache.Version, bool, error) {
	if s.siteUntrusted(r) || s.guardTags(r) {
		return s.hash.probe(r, next)
	}
	resp, v, known, err := s.up.probe(r, next)
	if err == nil && resp.status >= 200 && resp.status < 300 && v.ETag == "" {
		return s.hash.probe(r, next)
	}
	return resp, v, known, err
}

// guardTags reports whether r's resource is known by the guard's tag: to
// the write whose version check r is (from the store it found the version
// in), or to the cache.
func (s *autoVersions) guardTags(r *http.Request) bool {
	if wr, _ := r.Context().Value(guardedCtxKey{}).(*write); wr != nil && wr.guardTagged {
		return true
	}
	if !s.h.learnsFrom(r) {
		return false
	}
	v, ok := s.h.cache.Peek(s.h.resourceKey(r))
	return ok && v.Guard
}

// forward passes the write through a taggingWriter: with the guard's tags
// as `etags hash` does; with the upstream's, the answer passes at once
// when its strong tag is new, and is held for a look at the version the
// write made otherwise (afterWrite).
func (s *autoVersions) forward(wr *write) error {
	tw := &taggingWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: wr.w},
		wr:                    wr,
		auto:                  s,
		guarded:               wr.guardTagged || s.siteUntrusted(wr.r),
	}
	err := tw.serveNext(wr.next, wr.lr)
	if tw.holding {
		return tw.complete(err)
	}
	return err
}

// upstreamAnswerSuffices reports whether a write's answer says all there
// is to know of the version it made: it failed, deleted, answers a POST
// (which names another resource), or carries a strong tag the resource
// has not had.
func upstreamAnswerSuffices(wr *write, status int, etag string) bool {
	switch {
	case status < 200 || status >= 300 || status == http.StatusAccepted:
		return true
	case wr.method == http.MethodDelete || wr.method == http.MethodPost:
		return true
	case etag == "" || strings.HasPrefix(etag, "W/"):
		return false
	}
	return !wr.hadTag(etag)
}

// hadTag reports whether tag is one the write's resource had before it:
// the version the write was checked against, or one a write replaced (a
// resource created anew included: the tags of the one deleted before it).
// Tags made of the content come back with the content; changedNothing
// tells those apart where the guard wrote that content.
func (wr *write) hadTag(tag string) bool {
	return tag != "" && (tag == wr.replaced || slices.Contains(wr.older, tag))
}

// afterWrite establishes the version a write made, still under its lock,
// when its answer did not name it (answerTag: the answer's ETag field).
func (s *autoVersions) afterWrite(wr *write, r *http.Request, answerTag string) (etagcache.Version, bool, error) {
	if wr.hadTag(answerTag) && !s.changedNothing(wr, answerTag) {
		return s.reveal(wr, r, answerTag, "answer")
	}
	resp, v, known, err := s.up.probe(r, wr.next)
	switch {
	case err != nil:
		return v, false, err
	case resp.status >= 200 && resp.status < 300 && v.ETag == "":
		// The upstream names this version by no tag: the guard does.
		_, v, known, err = s.hash.probe(r, wr.next)
		return v, known, err
	case v.Exists && wr.hadTag(v.ETag) && !s.changedNothing(wr, v.ETag):
		return s.reveal(wr, r, v.ETag, "check")
	}
	return v, known, nil
}

// changedNothing reports whether a write whose new version shows tag, one
// its resource had before, wrote the body that made the version with that
// tag: a form saved twice, a toggle set back, a retry. Tags made of the
// content come back with it, which is no evidence against them.
func (s *autoVersions) changedNothing(wr *write, tag string) bool {
	if wr.method != http.MethodPut {
		return false
	}
	sum, ok := wr.bodySum(&s.reused.bodies)
	return ok && s.reused.bodies.same(wr.key, sum, tag)
}

// wrote notes the body of a PUT that made a version tagged by the
// upstream, for changedNothing.
func (s *autoVersions) wrote(wr *write, status int, made *etagcache.Version) {
	if wr.method != http.MethodPut || status < 200 || status >= 300 || made == nil || !made.Exists || made.Guard || made.ETag == "" {
		return
	}
	if sum, ok := wr.bodySum(&s.reused.bodies); ok {
		s.reused.bodies.note(wr.key, sum, made.ETag)
	}
}

// bodySum digests the write's body as the guard holds it (body.go).
func (wr *write) bodySum(b *writtenBodies) (uint64, bool) {
	if wr.r.GetBody == nil {
		if wr.r.Body == nil || wr.r.Body == http.NoBody || wr.r.ContentLength == 0 {
			return b.digest(strings.NewReader(""))
		}
		return 0, false
	}
	body, err := wr.r.GetBody()
	if err != nil {
		return 0, false
	}
	defer body.Close()
	return b.digest(body)
}

// guardedAfterWrite asks for the version a write made of a resource the
// guard tags. In a site whose upstream tags are distrusted the version
// says so (TagsReused), so that an instance sharing the store that has not
// seen the switch yet adopts it when it finds the version, instead of
// handing out and trusting the upstream's tags meanwhile.
func (s *autoVersions) guardedAfterWrite(wr *write, r *http.Request) (etagcache.Version, bool, error) {
	_, v, known, err := s.hash.probe(r, wr.next)
	if known && v.Guard && s.siteUntrusted(wr.r) {
		v.TagsReused = true
	}
	return v, known, err
}

// reveal switches the write's site to the guard's tags, on the evidence
// that the upstream gave the version the write made a tag its resource had
// before, and returns that version as the guard tags it.
func (s *autoVersions) reveal(wr *write, r *http.Request, tag, seen string) (etagcache.Version, bool, error) {
	names := s.h.siteNames(wr.r, wr.site())
	if s.reused.distrust(s.h.logger, names, wr.key, tag, seen) {
		s.mark(r.Context(), names)
	}
	_, v, known, err := s.hash.probe(r, wr.next)
	if known && v.Guard {
		v.TagsReused = true
	}
	return v, known, err
}

// consult reads, once per site and process, whether the Redis store
// records the write's site as one whose upstream tags are distrusted: an
// instance that started after the switch, or a reload that puts another of
// the site's names first, must not trust the tags it was switched for.
// Without an answer from Redis it asks again on the next write.
func (s *autoVersions) consult(wr *write) {
	rs := s.h.store.shared()
	if rs == nil {
		return
	}
	site := wr.site()
	if s.reused.untrusted(site) {
		return
	}
	if _, asked := s.reused.asked.Load(site); asked {
		return
	}
	ctx, cancel := context.WithTimeout(wr.ctx.Context, rs.Config().Timeout)
	evidence, marked, err := rs.SiteMarked(ctx, site)
	cancel()
	if err != nil {
		return
	}
	s.reused.asked.Store(site, struct{}{})
	if marked {
		var was tagReuse
		json.Unmarshal([]byte(evidence), &was)
		s.reused.distrust(s.h.logger, s.h.siteNames(wr.r, site), was.Key, was.ETag, "store")
	}
}

// mark records the switch of the site with names in the Redis store, for
// every instance and for as long as the store lives.
func (s *autoVersions) mark(ctx context.Context, names []string) {
	rs := s.h.store.shared()
	if rs == nil || len(names) == 0 {
		return
	}
	var evidence []byte
	if r, ok := s.reused.sites.Load(names[0]); ok {
		evidence, _ = json.Marshal(r)
	}
	ctx, cancel := context.WithTimeout(ctx, rs.Config().Timeout)
	defer cancel()
	for _, name := range names {
		if err := rs.MarkSite(ctx, name, string(evidence)); err != nil {
			s.h.logger.Warn("could not record in Redis that the site's upstream tags are distrusted; other instances find out from the versions recorded",
				zap.String("site", name), zap.Error(err))
			return
		}
	}
}
