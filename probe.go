package writeguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/precondition"
)

// Header fields a probe must not carry: the probe asks for the plain current
// representation, without a body and without conditions the upstream might
// evaluate itself.
var probeStripped = [...]string{
	"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Range",
	"Content-Length", "Content-Type", "Content-Encoding", "Content-Range", "Transfer-Encoding", "Expect",
}

// probeState asks the upstream for the resource's current version, through
// the next handler so that it takes the same route as the write would,
// with the client's own credentials. The answer is also taught to the cache.
// A non-nil refusal means the version could not be established; it answers
// the client instead of the write.
func (h *Handler) probeState(w http.ResponseWriter, r *http.Request, key string, next caddyhttp.Handler) (state precondition.State, refusal func() error) {
	stamp := h.cache.Stamp(key)
	resp, v, known, err := h.probeVersion(r, next)
	if c := h.logger.Check(zapcore.DebugLevel, "probed upstream"); c != nil {
		c.Write(zap.String("key", key), zap.Int("status", resp.status), zap.String("etag", v.ETag), zap.Error(err))
	}
	if err == nil {
		switch {
		case known:
			if h.learnsFrom(r) {
				h.cache.Learn(key, stamp, v)
			}
			return stateOf(v), nil
		case resp.status >= 200 && resp.status < 300:
			// It exists, but nothing names its version.
			return precondition.State{Exists: true}, nil
		case resp.status == http.StatusUnauthorized || resp.status == http.StatusForbidden:
			// The client may not read the resource: let it see why, exactly
			// as the upstream said it.
			return precondition.State{}, func() error {
				h.logRejection(r, "unauthorized", "")
				return resp.replay(w)
			}
		}
	}
	status := http.StatusBadGateway
	detail := fmt.Sprintf("The upstream answered the version check with status %d, so the write's preconditions could not be checked and the write was not forwarded. Retry later.", resp.status)
	switch {
	case context.Cause(r.Context()) == errWriteTimeout:
		status = http.StatusGatewayTimeout
		detail = fmt.Sprintf("The upstream did not answer the version check within %s (write_timeout), so the write was not forwarded. Retry later.", time.Duration(h.WriteTimeout))
	case err != nil:
		detail = "The upstream could not be reached to check the resource's current version, so the write was not forwarded. Retry later."
	}
	return precondition.State{}, func() error {
		h.logRejection(r, "probe_failed", "")
		return h.refuse(w, r, problem{
			Type:   problemProbeFailed,
			Title:  "Version check failed",
			Status: status,
			Detail: detail,
		})
	}
}

// probeVersion asks the upstream for the resource's current version: a HEAD
// (a GET where HEAD is refused) for the upstream's validators, or with
// `etags hash` a GET whose body is hashed and discarded. known is false when
// the answer names no version.
func (h *Handler) probeVersion(r *http.Request, next caddyhttp.Handler) (resp *probeResponse, v etagcache.Version, known bool, err error) {
	if h.hashTags {
		resp, err = h.probe(r, http.MethodGet, next)
	} else {
		resp, err = h.probe(r, http.MethodHead, next)
		if err == nil && (resp.status == http.StatusMethodNotAllowed || resp.status == http.StatusNotImplemented) {
			resp, err = h.probe(r, http.MethodGet, next)
		}
	}
	if err != nil {
		countProbe(probeFailed)
		return resp, etagcache.Version{}, false, err
	}
	defer func() {
		switch {
		case known:
			countProbe(probeVersion)
		case resp.status >= 200 && resp.status < 300:
			countProbe(probeNoVersion)
		case resp.status == http.StatusUnauthorized || resp.status == http.StatusForbidden:
			countProbe(probeUnauthorized)
		default:
			countProbe(probeFailed)
		}
	}()
	etag := resp.header.Get("Etag")
	if h.hashTags {
		etag = ""
		if resp.hash != nil {
			if resp.status != http.StatusPartialContent {
				etag = resp.hash.etag()
			}
			resp.hash.release()
			resp.hash = nil
		}
	}
	v, known = versionFromResponse(resp.status, etag, resp.header.Get("Last-Modified"))
	return resp, v, known, nil
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

func (h *Handler) probe(r *http.Request, method string, next caddyhttp.Handler) (resp *probeResponse, err error) {
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
	if h.hashTags && method == http.MethodGet {
		resp.hash = newBodyHash(h.HashMaxBody)
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
