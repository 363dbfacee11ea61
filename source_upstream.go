package writeguard

import (
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// upstreamVersions takes the upstream's ETag and Last-Modified for the
// versions they name: learned from the reads that pass, asked with a HEAD
// (a GET where HEAD is refused) when unknown, and read off the write's
// answer.
type upstreamVersions struct{ h *Handler }

func (upstreamVersions) untagged() string { return upstreamUntagged() }

func (upstreamVersions) trusts(*write, etagcache.Version) bool { return true }
func (upstreamVersions) staleDetail(*write) string             { return "" }

// serveRead passes a GET or HEAD through untouched and learns the version
// its response reveals. The stamp is taken before the upstream is asked, so
// a response that was overtaken by a write can never be stored as current.
func (s upstreamVersions) serveRead(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, _ string) error {
	h := s.h
	learn := h.learnsFrom(r)
	if !learn && !h.revalidateReads {
		return next.ServeHTTP(w, r)
	}
	lw := &learningWriter{
		ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		h:                     h,
		learn:                 learn,
	}
	if learn {
		lw.key = h.resourceKey(r)
		lw.stamp = h.cache.Stamp(lw.key)
		r = h.withoutAmbiguousDate(r, lw.key)
	}
	return next.ServeHTTP(lw, r)
}

func (s upstreamVersions) probe(r *http.Request, next caddyhttp.Handler) (*probeResponse, etagcache.Version, bool, error) {
	resp, err := s.h.probe(r, http.MethodHead, next, 0)
	if err == nil && (resp.status == http.StatusMethodNotAllowed || resp.status == http.StatusNotImplemented) {
		resp, err = s.h.probe(r, http.MethodGet, next, 0)
	}
	if err != nil {
		countProbeResult(resp, false, err)
		return resp, etagcache.Version{}, false, err
	}
	v, known := versionFromResponse(resp.status, resp.header.Get("Etag"), resp.header.Get("Last-Modified"))
	countProbeResult(resp, known, nil)
	return resp, v, known, nil
}

// forward ends the write as soon as the upstream's answer arrives: the write
// is applied by then, and the lock must not wait for the body to reach a
// client that reads it slowly.
func (upstreamVersions) forward(wr *write) error {
	wr.answer = answerWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: wr.w}, wr: wr}
	return wr.next.ServeHTTP(&wr.answer, wr.lr)
}

// answerWriter ends a write when its answer's header passes.
type answerWriter struct {
	// Embedded by value: one allocation per request fewer.
	caddyhttp.ResponseWriterWrapper
	wr *write
}

func (aw *answerWriter) WriteHeader(status int) {
	wr := aw.wr
	switch {
	case wr.ended:
	case status == http.StatusSwitchingProtocols:
		// The connection becomes a tunnel for as long as it lasts; what it
		// does to the resource is unknown.
		wr.end(true, 0, nil)
	case status >= 200:
		// Read before an outer handler (such as encode) rewrites them.
		hdr := aw.Header()
		wr.end(true, status, wr.answered(status, hdr.Get("Etag"), hdr.Get("Last-Modified")))
	}
	aw.ResponseWriterWrapper.WriteHeader(status)
}

func (aw *answerWriter) Write(p []byte) (int, error) {
	if !aw.wr.ended {
		aw.WriteHeader(http.StatusOK)
	}
	return aw.ResponseWriterWrapper.Write(p)
}

func (aw *answerWriter) ReadFrom(r io.Reader) (int64, error) {
	if !aw.wr.ended {
		aw.WriteHeader(http.StatusOK)
	}
	return aw.ResponseWriterWrapper.ReadFrom(r)
}

// learningWriter looks at the final response header on its way out.
type learningWriter struct {
	// Embedded by value: one allocation per request fewer.
	caddyhttp.ResponseWriterWrapper
	h           *Handler
	key         string
	stamp       etagcache.Stamp
	learn       bool
	wroteHeader bool
	noCache     noCacheValue
}

func (lw *learningWriter) WriteHeader(status int) {
	if !lw.wroteHeader && status >= 200 {
		lw.learnHeader(status, lw.Header().Get("Etag"))
	}
	lw.ResponseWriterWrapper.WriteHeader(status)
}

// learnHeader learns the version the final header shows, etag being its
// ETag field, and marks it for revalidation.
func (lw *learningWriter) learnHeader(status int, etag string) {
	lw.wroteHeader = true
	hdr := lw.Header()
	if lw.learn {
		if v, ok := versionFromResponse(status, etag, hdr.Get("Last-Modified")); ok {
			lw.h.cache.Learn(lw.key, lw.stamp, v)
		}
	}
	lw.h.markRevalidate(hdr, status, &lw.noCache)
}

func (lw *learningWriter) Write(p []byte) (int, error) {
	if !lw.wroteHeader {
		lw.WriteHeader(http.StatusOK)
	}
	return lw.ResponseWriterWrapper.Write(p)
}

// ReadFrom keeps sendfile and other fast paths of the underlying writer.
func (lw *learningWriter) ReadFrom(r io.Reader) (int64, error) {
	if !lw.wroteHeader {
		lw.WriteHeader(http.StatusOK)
	}
	return lw.ResponseWriterWrapper.ReadFrom(r)
}
