package writeguard

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/precondition"
)

// Header fields a probe must not carry: the probe asks for the plain current
// representation, without a body and without conditions the upstream might
// evaluate itself.
var probeStripped = [...]string{
	"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Range",
	"Content-Length", "Content-Type", "Content-Encoding", "Content-Range", "Transfer-Encoding", "Expect",
}

// checkUpstream asks the upstream for the resource's current version,
// under the write's lock, through the next handler so that it takes the
// same route as the write would, with the client's own credentials. The
// answer is also taught to the cache. A refusal means the version could
// not be established; it answers the client instead of the write.
func (wr *write) checkUpstream() (precondition.State, *refusal) {
	h := wr.h
	stamp := h.cache.Stamp(wr.key)
	resp, v, known, err := h.versions.probe(wr.lr, wr.next)
	if c := h.logger.Check(zapcore.DebugLevel, "probed upstream"); c != nil {
		c.Write(zap.String("key", wr.key), zap.Int("status", resp.status), zap.String("etag", v.ETag), zap.Error(err))
	}
	if err == nil {
		switch {
		case known:
			if h.learnsFrom(wr.r) {
				h.cache.Learn(wr.key, stamp, v)
			}
			wr.guardTagged = v.Guard
			return stateOf(v), nil
		case resp.status >= 200 && resp.status < 300:
			// It exists, but nothing names its version.
			return precondition.State{Exists: true}, nil
		case resp.status == http.StatusUnauthorized || resp.status == http.StatusForbidden:
			return precondition.State{}, refuseUnauthorized(resp)
		}
	}
	timedOut := context.Cause(wr.lr.Context()) == errWriteTimeout
	return precondition.State{}, refuseProbeFailed(resp.status, err, timedOut, time.Duration(h.WriteTimeout))
}

// countProbeResult counts what a version check found.
func countProbeResult(resp *probeResponse, known bool, err error) {
	switch {
	case err != nil:
		countProbe(probeFailed)
	case known:
		countProbe(probeVersion)
	case resp.status >= 200 && resp.status < 300:
		countProbe(probeNoVersion)
	case resp.status == http.StatusUnauthorized || resp.status == http.StatusForbidden:
		countProbe(probeUnauthorized)
	default:
		countProbe(probeFailed)
	}
}

// probeResponse is what the upstream answered a probe.
type probeResponse struct {
	status int
	header http.Header
	body   bytes.Buffer
	// hash digests a 2xx GET's body with `etags hash`.
	hash *bodyHash
}

// probeBodyLimit bounds what is kept of a probe's body: only an error page
// passed on to the client (401, 403) is ever shown.
const probeBodyLimit = 16 << 10

// errProbeAborted reports a probe whose response broke off: reverse_proxy
// panics with http.ErrAbortHandler when the upstream's body does.
var errProbeAborted = errors.New("the upstream's answer to the version check broke off")

// probe asks next for r's resource with method, as a plain read: no body,
// no conditions, no method override. hashLimit > 0 digests a 2xx GET's
// body, up to that many bytes.
func (h *Handler) probe(r *http.Request, method string, next caddyhttp.Handler, hashLimit int64) (resp *probeResponse, err error) {
	pr := r.Clone(withOwnVars(r.Context()))
	pr.Method = method
	pr.Body = http.NoBody
	pr.GetBody = nil
	pr.ContentLength = 0
	pr.TransferEncoding = nil
	pr.Trailer = nil
	for _, f := range probeStripped {
		pr.Header.Del(f)
	}
	// The check is a read: a method override field would make a backend
	// that honours it perform the write before its precondition is known.
	for name := range pr.Header {
		if h.isOverrideField(name) || isDefaultOverrideField(name) {
			delete(pr.Header, name)
		}
	}
	if pr.URL.RawQuery != "" {
		pr.URL.RawQuery = withoutMethodParams(pr.URL.RawQuery)
	}
	// A cache between Caddy and the origin must not answer for the origin.
	pr.Header.Set("Cache-Control", "no-cache")
	resp = &probeResponse{header: make(http.Header)}
	if hashLimit > 0 && method == http.MethodGet {
		resp.hash = newBodyHash(hashLimit)
	}
	defer func() {
		if rec := recover(); rec != nil {
			if rec != http.ErrAbortHandler {
				panic(rec)
			}
			err = errProbeAborted
		}
	}()
	err = next.ServeHTTP(&probeWriter{resp: resp}, pr)
	if err == nil && resp.status == 0 {
		resp.status = http.StatusOK
	}
	return resp, err
}

// withOwnVars gives a probe a copy of the request's variables. Handlers
// such as reverse_proxy write to them, and the transport reads them from
// the goroutine that dials for a request, which can outlive the request: a
// probe that shared the map would write to it while the write's dial (or
// the write, a probe's) still reads it.
func withOwnVars(ctx context.Context) context.Context {
	vars, ok := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return ctx
	}
	return context.WithValue(ctx, caddyhttp.VarsCtxKey, maps.Clone(vars))
}

func (p *probeResponse) replay(w http.ResponseWriter) error {
	hdr := w.Header()
	for k, v := range p.header {
		hdr[k] = v
	}
	hdr.Del("Content-Length")
	w.WriteHeader(p.status)
	_, err := w.Write(p.body.Bytes())
	return err
}

// probeWriter captures a probe's response instead of sending it anywhere.
type probeWriter struct {
	resp        *probeResponse
	wroteHeader bool
}

func (pw *probeWriter) Header() http.Header { return pw.resp.header }

func (pw *probeWriter) WriteHeader(status int) {
	if pw.wroteHeader || status < 200 {
		return
	}
	pw.wroteHeader = true
	pw.resp.status = status
}

func (pw *probeWriter) Write(p []byte) (int, error) {
	if !pw.wroteHeader {
		pw.WriteHeader(http.StatusOK)
	}
	if pw.resp.hash != nil && pw.resp.status >= 200 && pw.resp.status < 300 {
		pw.resp.hash.Write(p)
	}
	if room := probeBodyLimit - pw.resp.body.Len(); room > 0 {
		pw.resp.body.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Flush lets streaming upstream handlers flush; nothing is sent anyway.
func (pw *probeWriter) Flush() {}
