package writeguard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/lockmgr"
	"github.com/writeguard/caddy-writeguard/precondition"
	"github.com/writeguard/caddy-writeguard/redisstore"
)

// serveWrite checks a guarded request's preconditions against the
// resource's current version and forwards it only if they hold. Check and
// forward happen under the resource's lock, so of two writes that name the
// same version only the first reaches the backend.
//
// method is the method the request asks for: r.Method, or the one a method
// override header names.
func (h *Handler) serveWrite(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error {
	if h.config != nil {
		if !h.config.enter() {
			return h.refuseStopped(w, r)
		}
		defer h.config.exit()
	}
	key := h.resourceKey(r)
	if outer, _ := r.Context().Value(guardedCtxKey{}).(string); outer == key {
		// An outer guard checked this write and holds this resource's lock.
		// Counted, but the outcome shown to access logs stays the outer's.
		countOutcome(outcomeNested)
		return next.ServeHTTP(w, r)
	}
	setPlaceholder(r, "http.write_guard.key", key)
	cond, err := precondition.Parse(r.Header)
	if err != nil {
		var he *precondition.HeaderError
		errors.As(err, &he)
		h.logRejection(r, "bad_request", he.Field)
		return h.refuse(w, r, problem{
			Type:   problemInvalidPrecondition,
			Title:  "Invalid precondition",
			Status: http.StatusBadRequest,
			Detail: fmt.Sprintf("The %s header field is not valid (%s). Send the entity-tag exactly as the ETag response field gave it, for example If-Match: \"abc\".", he.Field, he.Reason),
			Header: he.Field,
		})
	}
	if cond.Blind() && h.Blind != "allow" {
		status := http.StatusPreconditionRequired
		if h.Blind == "409" {
			status = http.StatusConflict
		}
		h.logRejection(r, "blind", "")
		return h.refuse(w, r, problem{
			Type:   problemPreconditionRequired,
			Title:  "Precondition required",
			Status: status,
			Detail: "This write carries no precondition, so it could overwrite a change it has not seen. GET the resource, then repeat the write with If-Match set to the ETag of that response (or If-None-Match: * to create a resource that must not exist yet).",
			Header: "If-Match",
		})
	}

	// Read the whole body before taking the lock, so that a slow client
	// never holds up other writers of the resource.
	discard, err := h.bufferBody(r)
	defer discard()
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.logRejection(r, "too_large", "")
			return h.refuse(w, r, problem{
				Type:   problemBodyTooLarge,
				Title:  "Request body too large",
				Status: http.StatusRequestEntityTooLarge,
				Detail: fmt.Sprintf("Guarded writes may carry at most %d bytes.", tooLarge.Limit),
			})
		}
		if r.Context().Err() != nil {
			decided(r, outcomeClientGone)
			return caddyhttp.Error(499, err) // the client is gone
		}
		var spool *spoolError
		if errors.As(err, &spool) {
			// The write was fine; this server could not hold it.
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		h.logRejection(r, "bad_request", "")
		return h.refuse(w, r, problem{
			Type:   problemBodyUnreadable,
			Title:  "Request body unreadable",
			Status: http.StatusBadRequest,
			Detail: "The request body could not be read to its end, so the write was not forwarded. Send it again.",
		})
	}

	// A guard nested inside this one (in a subroute, say) must not wait
	// for the lock this one holds.
	ctx := context.WithValue(r.Context(), guardedCtxKey{}, key)
	r = r.WithContext(ctx)

	waitStart := time.Now()
	fenced, err := h.enterFence(ctx, r.URL.EscapedPath())
	if fenced.key != "" {
		// A guard nested in this one must not wait for this fence either.
		ctx = context.WithValue(ctx, fencedCtxKey{}, fenced.key)
		r = r.WithContext(ctx)
	}
	if err == nil && !h.locks.TryLock(key) {
		// Contended: most writes that wait now name a version the one
		// ahead of them is about to replace, or has replaced.
		if refused, err := h.refuseSuperseded(w, r, key, cond); refused {
			fenced.leave(h)
			return err
		}
		err = h.lock(ctx, key)
		if err != nil {
			fenced.leave(h)
		}
	}
	waited := time.Since(waitStart)
	observeLockWait(waited)
	setPlaceholder(r, "http.write_guard.lock_wait", waited)
	setPlaceholder(r, "http.write_guard.lock_wait_ms", waited.Seconds()*1e3)
	if err != nil {
		if ctx.Err() != nil {
			// The client left while it waited; nobody is there to answer.
			decided(r, outcomeClientGone)
			return caddyhttp.Error(499, err)
		}
		detail := fmt.Sprintf("Other writes to this resource kept it locked for more than %s. Retry after the time given in Retry-After, with the same precondition.", time.Duration(h.LockTimeout))
		if errors.Is(err, lockmgr.ErrTooManyWaiters) {
			detail = fmt.Sprintf("%d other writes to this resource are already waiting. Retry after the time given in Retry-After, with the same precondition.", h.MaxWaiters)
		}
		h.logRejection(r, "busy", "")
		return h.refuse(w, r, problem{
			Type:       problemResourceBusy,
			Title:      "Resource busy",
			Status:     http.StatusConflict,
			Detail:     detail,
			retryAfter: 1,
		})
	}
	held := &heldWrite{
		h: h, key: key, method: method, locked: true, fence: fenced,
		// A write whose method was overridden may be applied as either.
		recordable: h.learnsFrom(r) && method == r.Method,
		r:          r, next: next,
	}
	// Whatever happens below, including a panic in a later handler, the lock
	// is released; a write whose outcome was never seen forgets the version.
	defer held.finish(0, "", "")
	if h.abandoned != nil && h.abandoned.any() {
		held.mark = markOf(r.URL.EscapedPath())
		held.distrust = h.abandoned.distrusts(held.mark, time.Now(), func() { h.cache.Forget(key) }, h.forgetAll)
	}
	if h.redis != nil {
		if refusal := h.lockShared(w, r, held, waitStart.Add(time.Duration(h.LockTimeout))); refusal != nil {
			held.release()
			return refusal()
		}
	}

	// Everything done under the lock until the upstream answers the write
	// is bounded by write_timeout, so that a hung upstream cannot hold the
	// resource for longer.
	lockedCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(time.Duration(h.WriteTimeout), func() { cancel(errWriteTimeout) })
	defer timer.Stop()
	r = r.WithContext(lockedCtx)

	if !cond.Blind() {
		state, cached, fromCache, refusal := h.currentState(w, r, held, next)
		if refusal != nil {
			held.release()
			return refusal()
		}
		outcome := cond.Evaluate(state, h.matching)
		if fromCache && (outcome != precondition.Pass || !state.Exists) && !cond.NamesOnly(cached.Superseded, h.matching) {
			// Refuse only what the upstream confirms, unless the write names
			// versions that writes through this guard replaced: the cache may
			// hold another representation's tag or miss a change made behind
			// the proxy's back. And trust absence only when seen under the
			// lock: a read may have been answered 404 for reasons of its own.
			fromCache = false
			state, refusal = h.probeState(w, r, key, next)
			if refusal != nil {
				held.release()
				return refusal()
			}
			outcome = cond.Evaluate(state, h.matching)
		}
		setPlaceholder(r, "http.write_guard.etag", state.ETag)
		held.replaced = state.ETag
		if fromCache {
			held.older = cached.Superseded
			held.cached = h.redis == nil
		}
		if held.lease != nil && (fromCache || stateKnown(state)) {
			v := etagcache.Version{Exists: state.Exists, ETag: state.ETag, LastModified: state.LastModified, Superseded: held.older}
			held.current = &v
		}
		if outcome != precondition.Pass {
			held.release()
			h.logRejection(r, "stale", outcome.Field())
			if c := h.logger.Check(zapcore.DebugLevel, "precondition failed"); c != nil {
				c.Write(zap.String("key", key), zap.String("current_etag", state.ETag), zap.Bool("exists", state.Exists))
			}
			return h.refuse(w, r, h.failedProblem(outcome, state))
		}
	}

	decided(r, outcomeAllowed)
	if h.hashTags {
		tw := &taggingWriter{
			ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
			held:                  held,
			timer:                 timer,
		}
		err = tw.serveNext(next, r)
		if tw.holding {
			return tw.complete(err, ctx, r)
		}
	} else {
		err = next.ServeHTTP(&outcomeWriter{
			ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
			held:                  held,
			timer:                 timer,
		}, r)
	}
	if err == nil || held.done {
		return err
	}
	// The upstream never answered: the write may or may not have been
	// applied, now or later, so the version is forgotten, distrusted for a
	// while (abandon.go), and the client told as much.
	h.abandon(held)
	held.finish(0, "", "")
	return h.upstreamFailed(w, r, ctx, err)
}

// refuseStopped answers a write that reaches a configuration after it was
// replaced and its writes were done: the replacing one serves the retry.
func (h *Handler) refuseStopped(w http.ResponseWriter, r *http.Request) error {
	h.logRejection(r, outcomeBusy, "")
	return h.refuse(w, r, problem{
		Type:       problemResourceBusy,
		Title:      "Resource busy",
		Status:     http.StatusConflict,
		Detail:     "This server's configuration was being replaced when the write arrived. Retry after the time given in Retry-After, with the same precondition.",
		retryAfter: 1,
	})
}

// refuseSuperseded refuses, without waiting for the lock, a write that names
// only versions that writes through the guard have replaced. Under
// contention most writes are such: writers that read the version just
// replaced. Confirming each with the upstream under the lock would turn a
// hot resource into a convoy of version checks.
func (h *Handler) refuseSuperseded(w http.ResponseWriter, r *http.Request, key string, cond precondition.Conditions) (bool, error) {
	if cond.IfMatch == nil || !h.learnsFrom(r) || !h.trustsCache() || h.redis != nil {
		// With Redis, the process's cache must not decide a write.
		return false, nil
	}
	// Peek: the decision is made again under the lock, where the lookup
	// counts as the write's hit or miss.
	v, ok := h.cache.Peek(key)
	if !ok || len(v.Superseded) == 0 {
		return false, nil
	}
	state := stateOf(v)
	outcome := cond.Evaluate(state, h.matching)
	if outcome == precondition.Pass || !cond.NamesOnly(v.Superseded, h.matching) {
		return false, nil
	}
	setPlaceholder(r, "http.write_guard.etag", state.ETag)
	h.logRejection(r, "stale", outcome.Field())
	return true, h.refuse(w, r, h.failedProblem(outcome, state))
}

// errWriteTimeout is the cause of a write's context ending at write_timeout.
var errWriteTimeout = errors.New("write_timeout elapsed before the upstream answered")

// upstreamFailed answers a write that the next handler failed before any
// response: a problem body for the upstream's failures, the error itself for
// other handlers' (so that handle_errors sees them).
func (h *Handler) upstreamFailed(w http.ResponseWriter, r *http.Request, clientCtx context.Context, err error) error {
	guardMetrics().upstreamFailures.Inc()
	if clientCtx.Err() != nil {
		return caddyhttp.Error(499, err) // the client is gone
	}
	status := http.StatusBadGateway
	detail := "The upstream failed before it answered this write, which may or may not have been applied. GET the resource to see its current version, then repeat the write with If-Match set to its ETag."
	var he caddyhttp.HandlerError
	switch {
	case context.Cause(r.Context()) == errWriteTimeout:
		status = http.StatusGatewayTimeout
		detail = fmt.Sprintf("The upstream did not answer this write within %s (write_timeout), so it may or may not have been applied. GET the resource to see its current version, then repeat the write with If-Match set to its ETag.", time.Duration(h.WriteTimeout))
	case errors.As(err, &he) && he.StatusCode >= 500:
		status = he.StatusCode
	default:
		return err
	}
	if c := h.logger.Check(zapcore.WarnLevel, "write failed upstream"); c != nil {
		c.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Int("status", status), zap.Error(err))
	}
	return h.refuse(w, r, problem{
		Type:   problemUpstreamFailed,
		Title:  "Upstream failed",
		Status: status,
		Detail: detail,
	})
}

// decided counts a guarded request's outcome and shows it to access logs.
func decided(r *http.Request, outcome string) {
	countOutcome(outcome)
	setPlaceholder(r, "http.write_guard.outcome", outcome)
}

// setPlaceholder sets one of the guard's placeholders for the request.
func setPlaceholder(r *http.Request, name string, value any) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(name, value)
	}
}

// guardedCtxKey marks a request with the key of the resource a guard has
// locked for it.
type guardedCtxKey struct{}

// heldWrite is a write in progress: guarded and holding its resource's lock
// (locked), or let through unguarded, in which case its outcome can only be
// forgotten.
type heldWrite struct {
	h           *Handler
	key, method string
	locked      bool
	// recordable: the write's URL is the keyed resource itself (see
	// learnsFrom), so its answer tells that resource's new version.
	recordable bool
	done       bool
	// replaced is the tag of the version the write was checked against,
	// older the tags that version had superseded: once the write succeeds,
	// a write naming any of them is certainly stale.
	replaced string
	older    []string
	// cached: the version was found in the process's cache under the lock,
	// so recording the next one needs no settling lookup.
	cached bool
	// current is the version the write was checked against, when known: put
	// back in the shared store if the write is not forwarded.
	current *etagcache.Version
	// lease holds the resource's lock in Redis; degraded means Redis could
	// not be reached and the write is guarded by this process alone.
	lease    *redisstore.Lease
	degraded bool
	// distrust: a write of the resource was abandoned lately, so its
	// version is asked of the upstream and what this write makes is not
	// recorded.
	distrust bool
	// mark names the resource in the list of abandoned writes (markOf).
	mark string
	// fence is held besides the lock while configurations overlap.
	fence fence
	// r (with the client's context, not the write's) and next let a guard
	// with `etags hash` ask for the new version.
	r    *http.Request
	next caddyhttp.Handler
}

// finish records the outcome the upstream answered (status 0: unknown) and
// releases the lock. Only the first call of finish or release counts.
func (hw *heldWrite) finish(status int, etag, lastModified string) {
	if hw.done {
		return
	}
	hw.done = true
	if hw.locked && (status == http.StatusBadGateway || status == http.StatusGatewayTimeout) {
		// A gateway between here and the application gave up on the write,
		// which the application may still apply.
		hw.h.abandon(hw)
	}
	var made etagcache.Version
	known := false
	if hw.locked && hw.recordable {
		made, known = hw.h.record(hw, status, etag, lastModified)
	} else {
		hw.h.cache.Forget(hw.key)
		if !hw.locked {
			hw.h.forgetShared(hw.key)
		}
	}
	if hw.degraded {
		hw.h.unseen.add(hw.h.logger, hw.key)
	}
	if hw.lease != nil {
		var shared *etagcache.Version
		if known {
			v := made // only this copy escapes, on this path only
			shared = &v
		}
		hw.endShared(true, shared)
	}
	if hw.locked {
		hw.h.locks.Unlock(hw.key)
		hw.fence.leave(hw.h)
	}
}

// release gives the lock up without forwarding: what the cache knows stays.
func (hw *heldWrite) release() {
	if hw.done {
		return
	}
	hw.done = true
	hw.endShared(false, hw.current)
	if hw.locked {
		hw.h.locks.Unlock(hw.key)
		hw.fence.leave(hw.h)
	}
}

func (h *Handler) failedProblem(outcome precondition.Outcome, state precondition.State) problem {
	p := problem{
		Type:   problemPreconditionFailed,
		Title:  "Precondition failed",
		Status: http.StatusPreconditionFailed,
		Header: outcome.Field(),
	}
	switch {
	case outcome == precondition.FailedIfNoneMatch:
		p.Detail = "The resource already exists (or has a version named in If-None-Match), and this write must not replace it. GET the resource and, to change it, send If-Match with its ETag instead."
	case !state.Exists:
		p.Detail = "The resource does not exist any more (it was deleted after you read it). GET it to confirm; to create it anew, send If-None-Match: * instead."
	case outcome == precondition.FailedIfUnmodifiedSince && state.LastModified.IsZero():
		p.Detail = "The resource has no Last-Modified date to compare If-Unmodified-Since with. GET it and send If-Match with its ETag instead."
	case outcome == precondition.FailedIfMatch && state.ETag == "" && h.hashTags:
		p.Detail = fmt.Sprintf("The resource is larger than %d bytes (hash_max_body), so this proxy gives it no ETag and If-Match cannot name its version. Use If-Unmodified-Since with its Last-Modified date instead.", h.HashMaxBody)
	case outcome == precondition.FailedIfMatch && state.ETag == "":
		p.Detail = "The upstream sends no ETag for this resource, so If-Match cannot name its version. Use If-Unmodified-Since with its Last-Modified date instead."
	default:
		p.Detail = "The resource changed since you read it. GET it again, merge your change into the current version, and repeat the write with If-Match set to the new ETag."
	}
	return p
}

// lock waits for the resource's lock, at most LockTimeout.
func (h *Handler) lock(ctx context.Context, key string) error {
	if h.locks.TryLock(key) {
		return nil // no timer needed
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.LockTimeout))
	defer cancel()
	return h.locks.Lock(ctx, key, h.MaxWaiters)
}

// currentState returns the resource's current version: from the cache, or
// from the upstream when the cache does not know it. A non-nil refusal means
// the version could not be established and the write must not go on.
//
// cached is the cache's version when the state came from it (fromCache).
func (h *Handler) currentState(w http.ResponseWriter, r *http.Request, held *heldWrite, next caddyhttp.Handler) (state precondition.State, cached etagcache.Version, fromCache bool, refusal func() error) {
	// The cache knows the keyed resource, which need not be what a URL
	// with a query selects.
	if h.learnsFrom(r) && h.trustsCache() && !held.distrust {
		switch {
		case held.lease != nil:
			if v, ok := held.lease.Found(); ok {
				return stateOf(v), v, true, nil
			}
		case h.redis != nil:
			// Degraded: other instances write too, and this process's cache
			// does not see their writes.
		default:
			if v, ok := h.cache.Get(held.key); ok {
				return stateOf(v), v, true, nil
			}
		}
	}
	state, refusal = h.probeState(w, r, held.key, next)
	return state, etagcache.Version{}, false, refusal
}

// abandon notes that the write hw was given up before the upstream
// answered it.
func (h *Handler) abandon(hw *heldWrite) {
	if h.abandoned != nil {
		if hw.mark == "" {
			hw.mark = markOf(hw.r.URL.EscapedPath())
		}
		h.abandoned.mark(hw.mark, time.Now(), time.Duration(h.RevalidateAbandoned), time.Duration(h.CacheTTL))
	}
	// Other instances must check it against the upstream too.
	h.distrustShared(hw.key, time.Duration(h.RevalidateAbandoned))
}

// trustsCache reports whether a write may be decided on a cached version:
// not with revalidate always, nor while another serving configuration names
// resources otherwise, nor while Redis may hold versions named otherwise
// (reload.go).
func (h *Handler) trustsCache() bool {
	return !h.revalidateAlways && (h.unsettled == nil || !h.unsettled.Load()) &&
		(h.redisUnsettled == nil || !h.redisUnsettled.Load())
}

// stateKnown reports whether a version check's answer named the version:
// an entity-tag, a date, or the resource's absence.
func stateKnown(s precondition.State) bool {
	return !s.Exists || s.ETag != "" || !s.LastModified.IsZero()
}

func stateOf(v etagcache.Version) precondition.State {
	return precondition.State{Exists: v.Exists, ETag: v.ETag, LastModified: v.LastModified}
}

// record stores what the write's response says about the new version, or
// forgets the resource's version when the response does not say.
//
// It returns the version recorded; ok is false if it was forgotten.
func (h *Handler) record(hw *heldWrite, status int, etag, lastModified string) (v etagcache.Version, ok bool) {
	switch {
	case status < 200 || status >= 300 || status == http.StatusAccepted:
		// 202: accepted for later, maybe never applied (RFC 9110, 15.3.3).
		h.cache.Forget(hw.key)
		return v, false
	case hw.method == http.MethodDelete:
		v = etagcache.Version{Superseded: etagcache.Supersede(hw.replaced, hw.older, "")}
	case etag == "" || strings.HasPrefix(etag, "W/"):
		// RFC 9110 (9.3.4) lets a write response carry only the new
		// representation's own strong validator. Frameworks that tag every
		// response body (Express tags {"ok":true}) send a weak one that is
		// no version at all: let the next write ask the upstream.
		h.cache.Forget(hw.key)
		return v, false
	default:
		v, _ = versionFromResponse(status, etag, lastModified)
		v.Superseded = etagcache.Supersede(hw.replaced, hw.older, v.ETag)
	}
	hw.recordLocally(v)
	return v, true
}

// recordLocally stores the version the write made in the process's cache.
func (hw *heldWrite) recordLocally(v etagcache.Version) {
	if hw.distrust {
		hw.h.cache.Forget(hw.key)
		return
	}
	if hw.cached {
		hw.h.cache.Update(hw.key, v)
	} else {
		hw.h.cache.Record(hw.key, v)
	}
}

// outcomeWriter records a write's outcome and releases its lock as soon as
// the upstream's answer arrives: the write is applied by then, and the lock
// must not wait for the body to reach a client that reads it slowly.
type outcomeWriter struct {
	// Embedded by value: one allocation per request fewer.
	caddyhttp.ResponseWriterWrapper
	held *heldWrite
	// timer enforces write_timeout until the answer arrives; nil when the
	// write is not guarded.
	timer *time.Timer
}

func (ow *outcomeWriter) WriteHeader(status int) {
	if ow.timer != nil && status >= 200 {
		ow.timer.Stop()
	}
	switch {
	case ow.held.done:
	case status == http.StatusSwitchingProtocols:
		// The connection becomes a tunnel for as long as it lasts; what it
		// does to the resource is unknown.
		ow.held.finish(0, "", "")
	case status >= 200:
		// Read before an outer handler (such as encode) rewrites them.
		hdr := ow.Header()
		ow.held.finish(status, hdr.Get("Etag"), hdr.Get("Last-Modified"))
	}
	ow.ResponseWriterWrapper.WriteHeader(status)
}

func (ow *outcomeWriter) Write(p []byte) (int, error) {
	if !ow.held.done {
		ow.WriteHeader(http.StatusOK)
	}
	return ow.ResponseWriterWrapper.Write(p)
}

func (ow *outcomeWriter) ReadFrom(r io.Reader) (int64, error) {
	if !ow.held.done {
		ow.WriteHeader(http.StatusOK)
	}
	return ow.ResponseWriterWrapper.ReadFrom(r)
}

// logRejection counts and logs a refused request. A refusal is an ordinary
// protocol answer, like a 304: it is logged at Debug.
func (h *Handler) logRejection(r *http.Request, outcome, field string) {
	decided(r, outcome)
	if c := h.logger.Check(zapcore.DebugLevel, "write rejected"); c != nil {
		fields := []zap.Field{
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.String("outcome", outcome),
		}
		if sent := preconditionFields(r); sent != "" {
			fields = append(fields, zap.String("preconditions", sent))
		}
		if field != "" {
			fields = append(fields, zap.String("failed", field))
		}
		c.Write(fields...)
	}
}

// preconditionFields lists the precondition header fields r carries, for logs.
func preconditionFields(r *http.Request) string {
	var present []string
	for _, f := range [...]string{"If-Match", "If-None-Match", "If-Unmodified-Since"} {
		if _, ok := r.Header[f]; ok {
			present = append(present, f)
		}
	}
	return strings.Join(present, ",")
}
