package writeguard

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/precondition"
)

// A guarded write is one value with one life, read top to bottom here:
//
//	admit    its preconditions and its body, before anything is held
//	acquire  the fence, the resource's lock in this process and in the store
//	decide   the resource's current version, confirmed with the upstream
//	         when the cache's word is not enough, and the preconditions
//	forward  to the upstream, through the version source's writer
//	end      commit (the write was forwarded) or release (it was not)
//
// Whatever happens after acquire (a refusal, an answer, a panic, a
// timeout, a client gone, a cut upstream) reaches end exactly once, which
// records or forgets the version and gives the locks up. Where locks and
// versions live (store) and who names versions (versionSource) were chosen
// at Provision; the write only calls them.
type write struct {
	h    *Handler
	w    http.ResponseWriter
	r    *http.Request // as it arrived, with the client's context
	lr   *http.Request // under the lock, with the write's context (ctx)
	next caddyhttp.Handler
	// repl is the request's replacer, which shows the write's placeholders.
	repl *caddy.Replacer
	// method is the method the request asks for: r.Method, or the one a
	// method override field names.
	method string
	key    string
	cond   precondition.Conditions
	body   bufferedBody
	// discard removes a body spooled to a file.
	discard func()

	// Acquired.
	fence  fence
	holds  bool // the resource's lock in this process
	shared sharedLock
	// ctx is the client's context, also ended at write_timeout (timeout),
	// and marked with the write for guards nested in this one.
	ctx     writeCtx
	cancel  context.CancelCauseFunc
	timeout timeoutLinks
	waited  time.Duration

	// Decided.
	// distrust: a write of the resource was abandoned lately (abandon.go),
	// so its version is asked of the upstream and what this write makes is
	// not recorded in this process; mark names it in that list.
	distrust bool
	mark     string
	// held is the resource's entry in this process's cache when the write
	// found its version there under the lock: the next version replaces it
	// in place.
	held etagcache.Held
	// replaced is the tag of the version the write was checked against,
	// older the tags that version had superseded: once the write succeeds,
	// a write naming any of them is certainly stale.
	replaced string
	older    []string
	// checked is the version the write was checked against, when known
	// (checkedKnown): a store puts it back if the write is not forwarded.
	checked      etagcache.Version
	checkedKnown bool
	// guardTagged: that version is named by the guard's tag (etags auto).
	guardTagged bool
	// siteName is the write's site (site.go), once asked for.
	siteName string

	// Forwarded.
	answer answerWriter
	// made is the version the write's answer shows, once it has arrived.
	made  etagcache.Version
	ended bool
}

// serveWrite checks a guarded request's preconditions against the
// resource's current version and forwards it only if they hold. Check and
// forward happen under the resource's lock, so of two writes that name the
// same version only the first reaches the backend.
func (h *Handler) serveWrite(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error {
	if !h.config.enter() {
		return h.refuse(w, r, refuseStopped())
	}
	defer h.config.exit()
	key := h.resourceKey(r)
	if outer, _ := r.Context().Value(guardedCtxKey{}).(*write); outer != nil && outer.key == key {
		// An outer guard checked this write and holds this resource's lock.
		// Counted, but the outcome shown to access logs stays the outer's.
		countOutcome(outcomeNested)
		return next.ServeHTTP(w, r)
	}
	wr := &write{h: h, w: w, r: r, next: next, method: method, key: key}
	wr.repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	wr.set("http.write_guard.key", (*placeholderString)(&wr.key))
	defer wr.close()
	if ref := wr.admit(); ref != nil {
		return h.refuse(w, r, ref)
	}
	if ref := wr.acquire(); ref != nil {
		return h.refuse(w, r, ref)
	}
	if ref := wr.decide(); ref != nil {
		wr.end(false, 0, nil)
		return h.refuse(w, r, ref)
	}
	countOutcome(outcomeAllowed)
	wr.set("http.write_guard.outcome", (*placeholderString)(&outcomeNames[outcomeAllowed]))
	return wr.forward()
}

// admit checks what the write carries: its preconditions, and its body,
// read in full before any lock is taken so that a slow client never holds
// up other writers of the resource.
func (wr *write) admit() *refusal {
	h := wr.h
	if err := wr.cond.ParseInto(wr.r.Header); err != nil {
		var he *precondition.HeaderError
		errors.As(err, &he)
		return refuseInvalidPrecondition(he)
	}
	if wr.cond.Blind() && h.Blind != "allow" {
		status := http.StatusPreconditionRequired
		if h.Blind == "409" {
			status = http.StatusConflict
		}
		return refuseBlind(status)
	}
	discard, err := h.bufferBody(wr.r, &wr.body)
	wr.discard = discard
	if err == nil {
		return nil
	}
	return bodyRefusal(wr.r, err)
}

// bodyRefusal answers a request whose body could not be read in full.
func bodyRefusal(r *http.Request, err error) *refusal {
	var tooLarge *http.MaxBytesError
	var spool *spoolError
	switch {
	case errors.As(err, &tooLarge):
		return refuseTooLarge(tooLarge.Limit)
	case r.Context().Err() != nil:
		return refuseClientGone(err)
	case errors.As(err, &spool):
		// The write was fine; this server could not hold it.
		return serverFailed(err)
	}
	return refuseUnreadable()
}

// acquire takes what serializes the write with every other write of the
// resource: the fence while configurations overlap (reload.go), the
// process's lock, and the store's. From then on, everything until the
// upstream answers is bounded by write_timeout, so that a hung upstream
// cannot hold the resource for longer.
func (wr *write) acquire() *refusal {
	h := wr.h
	ctx := wr.r.Context()
	// When the write began to wait, if it had to: a write that finds its
	// resource free reads the clock once (it is slow on some virtual
	// machines), and waited nothing.
	var start time.Time
	if h.reg != nil && h.reg.overlap.Load() {
		start = time.Now() // the fence may make it wait
	}
	fenced, err := h.enterFence(ctx, wr.r.URL.EscapedPath())
	if err == nil && !h.locks.TryLock(wr.key) {
		if start.IsZero() {
			start = time.Now()
		}
		// Contended: most writes that wait now name a version the one
		// ahead of them is about to replace, or has replaced.
		if ref := wr.refuseSuperseded(); ref != nil {
			fenced.leave(h)
			return ref
		}
		if err = h.lock(ctx, wr.key); err != nil {
			fenced.leave(h)
		}
	}
	now := time.Now()
	if start.IsZero() {
		start = now
	}
	wr.waited = now.Sub(start)
	observeLockWait(wr.waited)
	wr.set("http.write_guard.lock_wait", wr.waited)
	wr.set("http.write_guard.lock_wait_ms", wr.waited.Seconds()*1e3)
	if err != nil {
		if ctx.Err() != nil {
			// The client left while it waited; nobody is there to answer.
			return refuseClientGone(err)
		}
		return refuseBusy(err, time.Duration(h.LockTimeout), h.MaxWaiters)
	}
	wr.fence, wr.holds = fenced, true
	if h.abandoned.any() {
		wr.mark = markOf(wr.r.URL.EscapedPath())
		wr.distrust = h.abandoned.distrusts(wr.mark, now, func() { h.cache.Forget(wr.key) }, h.forgetAll)
	}
	if ref := h.store.lock(wr, start.Add(time.Duration(h.LockTimeout))); ref != nil {
		wr.end(false, 0, nil)
		return ref
	}
	cctx, cancel := context.WithCancelCause(ctx)
	wr.ctx, wr.cancel = writeCtx{Context: cctx, wr: wr}, cancel
	wr.lr = wr.r.WithContext(&wr.ctx)
	h.timeouts.start(wr, now)
	return nil
}

// refuseSuperseded refuses, without waiting for the lock, a write that names
// only versions that writes through the guard have replaced. Under
// contention most writes are such: writers that read the version just
// replaced. Confirming each with the upstream under the lock would turn a
// hot resource into a convoy of version checks.
func (wr *write) refuseSuperseded() *refusal {
	h := wr.h
	if wr.cond.IfMatch == nil || !h.store.refusesSuperseded() || !h.learnsFrom(wr.r) || !h.trustsCache() {
		return nil
	}
	// Peek: the decision is made again under the lock, where the lookup
	// counts as the write's hit or miss.
	v, ok := h.cache.Peek(wr.key)
	if !ok || len(v.Superseded) == 0 || !h.versions.trusts(wr, v) {
		return nil
	}
	state := stateOf(v)
	o := wr.cond.Evaluate(state, h.matching)
	if o == precondition.Pass || !wr.cond.NamesOnly(v.Superseded, h.matching) {
		return nil
	}
	wr.replaced = state.ETag
	wr.set("http.write_guard.etag", (*placeholderString)(&wr.replaced))
	return wr.refuseStale(o, state)
}

// decide establishes the resource's current version and evaluates the
// write's preconditions against it. The store's or cache's version decides
// a write it lets pass; a refusal, or a pass on absence, is confirmed with
// the upstream first, unless the write names only versions that writes
// through the guard replaced: the cache may hold another representation's
// tag or miss a change made behind the proxy's back, and a read may have
// been answered 404 for reasons of its own.
func (wr *write) decide() *refusal {
	if wr.cond.Blind() {
		return nil // blind allow: serialized, nothing to check
	}
	h := wr.h
	if c, ok := h.versions.(storeConsulter); ok {
		c.consult(wr)
	}
	var (
		state     precondition.State
		cached    etagcache.Version
		fromCache bool
		ref       *refusal
	)
	// The cache knows the keyed resource, which need not be what a URL
	// with a query selects.
	switch {
	case !h.learnsFrom(wr.r):
	case h.trustsCache() && !wr.distrust:
		cached, fromCache = h.store.found(wr)
		if fromCache && !h.versions.trusts(wr, cached) {
			cached, fromCache = etagcache.Version{}, false
		}
		state = stateOf(cached)
		wr.guardTagged = cached.Guard
	default:
		// The version found does not decide the write, but who names the
		// resource's versions still holds: a switch another instance
		// recorded is adopted, and the guard's tag asked for.
		if v, ok := h.store.found(wr); ok {
			h.versions.trusts(wr, v)
			wr.guardTagged = v.Guard
		}
	}
	if !fromCache {
		if state, ref = wr.checkUpstream(); ref != nil {
			return ref
		}
	}
	o := wr.cond.Evaluate(state, h.matching)
	if fromCache && (o != precondition.Pass || !state.Exists) && !wr.cond.NamesOnly(cached.Superseded, h.matching) {
		fromCache = false
		if state, ref = wr.checkUpstream(); ref != nil {
			return ref
		}
		o = wr.cond.Evaluate(state, h.matching)
		switch {
		case state.Exists == cached.Exists && state.ETag == cached.ETag:
			// Confirmed: what the cache knew the version replaced still
			// holds.
			wr.older = cached.Superseded
		case cached.FromAnswer && cached.Exists && state.Exists && state.ETag != "":
			// The upstream names the version its answer tagged otherwise:
			// that tag stays refused (etagcache.Version.FromAnswer).
			wr.older = etagcache.Supersede(cached.ETag, cached.Superseded, state.ETag)
		}
	}
	wr.replaced = state.ETag
	wr.set("http.write_guard.etag", (*placeholderString)(&wr.replaced))
	if fromCache {
		wr.older = cached.Superseded
	}
	crowded := crowdedDate(cached, fromCache, state)
	if fromCache || stateKnown(state) {
		wr.checked = etagcache.Version{
			Exists: state.Exists, ETag: state.ETag, LastModified: state.LastModified, Superseded: wr.older,
			Guard: wr.guardTagged, Crowded: crowded, TagsReused: fromCache && cached.TagsReused,
			ReplacedDate: cached.ReplacedDate,
		}
		wr.checkedKnown = true
	}
	if o != precondition.Pass {
		if c := h.logger.Check(zapcore.DebugLevel, "precondition failed"); c != nil {
			c.Write(zap.String("key", wr.key), zap.String("current_etag", state.ETag), zap.Bool("exists", state.Exists))
		}
		return wr.refuseStale(o, state)
	}
	return wr.settleDate(state, crowded)
}

// refuseStale refuses the write for a precondition that failed against
// state, with the version source's word on it where it has one.
func (wr *write) refuseStale(o precondition.Outcome, state precondition.State) *refusal {
	ref := refuseStale(o, state, wr.h.versions.untagged)
	if o == precondition.FailedIfMatch && state.Exists && state.ETag != "" {
		if d := wr.h.versions.staleDetail(wr); d != "" {
			ref.problem.Detail = d
		}
	}
	return ref
}

// site is the write's site, as the default key names it.
func (wr *write) site() string {
	if wr.siteName == "" {
		wr.siteName = wr.h.siteOf(wr.r)
	}
	return wr.siteName
}

// forward passes the write to the upstream through the version source,
// whose writer ends the write when the answer arrives.
func (wr *write) forward() error {
	err := wr.h.versions.forward(wr)
	if err == nil || wr.ended {
		return err
	}
	// The upstream never answered: the write may or may not have been
	// applied, now or later, so the version is forgotten, distrusted for a
	// while (abandon.go), and the client told as much.
	wr.h.abandon(wr)
	wr.end(true, 0, nil)
	return wr.upstreamFailed(err)
}

// end is where every write that holds its locks ends, once. forwarded says
// the write reached the upstream, which answered status (0: no answer, or
// one the guard cannot read); made is the version the answer shows, nil
// when unknown. A write not forwarded leaves what the stores hold.
func (wr *write) end(forwarded bool, status int, made *etagcache.Version) {
	if wr.ended || !wr.holds {
		return
	}
	wr.ended = true
	h := wr.h
	h.timeouts.stop(wr)
	if forwarded {
		if status == http.StatusBadGateway || status == http.StatusGatewayTimeout {
			// A gateway between here and the application gave up on the
			// write, which the application may still apply.
			h.abandon(wr)
		}
		recorded := wr.record(made)
		if n, ok := h.versions.(writeNoter); ok {
			n.wrote(wr, status, recorded)
		}
		h.store.commit(wr, recorded)
	} else {
		h.store.release(wr)
	}
	h.locks.Unlock(wr.key)
	wr.fence.leave(h)
}

// A storeConsulter reads what the store says of the write's site before
// the write is decided.
type storeConsulter interface{ consult(wr *write) }

// A writeNoter is told of every forwarded write as it ends.
type writeNoter interface {
	wrote(wr *write, status int, made *etagcache.Version)
}

// record tells the process's cache the version the write made, and
// returns it for the store; nil when it is unknown, and forgotten.
func (wr *write) record(made *etagcache.Version) *etagcache.Version {
	h := wr.h
	// A write whose method was overridden may be applied as either, and a
	// write to a URL that is not the keyed resource (learnsFrom) tells
	// nothing of it.
	if made == nil || wr.method != wr.r.Method || !h.learnsFrom(wr.r) {
		h.cache.Forget(wr.key)
		return nil
	}
	made.Superseded = etagcache.Supersede(wr.replaced, wr.older, made.ETag)
	wr.dateMade(made)
	if wr.distrust {
		h.cache.Forget(wr.key)
	} else {
		h.cache.Update(wr.key, wr.held, *made)
	}
	return made
}

// answered notes what a write's answer shows of the version it made, and
// returns it (nil when the answer does not say).
func (wr *write) answered(status int, etag, lastModified string) *etagcache.Version {
	switch {
	case status < 200 || status >= 300 || status == http.StatusAccepted:
		// 202: accepted for later, maybe never applied (RFC 9110, 15.3.3).
		return nil
	case wr.method == http.MethodDelete:
		wr.made = etagcache.Version{}
	case etag == "" || strings.HasPrefix(etag, "W/"):
		// RFC 9110 (9.3.4) lets a write response carry only the new
		// representation's own strong validator. Frameworks that tag every
		// response body (Express tags {"ok":true}) send a weak one that is
		// no version at all: let the next write ask the upstream.
		return nil
	default:
		wr.made, _ = versionFromResponse(status, etag, lastModified)
		wr.made.FromAnswer = true
	}
	return &wr.made
}

// close runs when the request is done. A write still holding its locks
// (a panic in a later handler) ends as one whose outcome is unknown.
func (wr *write) close() {
	wr.end(true, 0, nil)
	if wr.cancel != nil {
		wr.cancel(nil)
	}
	if wr.discard != nil {
		wr.discard()
	}
}

// upstreamFailed answers a write that the next handler failed before any
// response: a problem body for the upstream's failures, the error itself for
// other handlers' (so that handle_errors sees them).
func (wr *write) upstreamFailed(err error) error {
	h := wr.h
	guardMetrics().upstreamFailures.Inc()
	idemForwardFailed(wr.r, err)
	if wr.r.Context().Err() != nil {
		return caddyhttp.Error(499, err) // the client is gone
	}
	timedOut := context.Cause(wr.lr.Context()) == errWriteTimeout
	status := http.StatusBadGateway
	var he caddyhttp.HandlerError
	switch {
	case timedOut:
		status = http.StatusGatewayTimeout
	case errors.As(err, &he) && he.StatusCode >= 500:
		status = he.StatusCode
	default:
		return err
	}
	if c := h.logger.Check(zapcore.WarnLevel, "write failed upstream"); c != nil {
		c.Write(zap.String("method", wr.r.Method), zap.String("path", wr.r.URL.Path), zap.Int("status", status), zap.Error(err))
	}
	return h.answer(wr.w, wr.r, upstreamFailed(status, timedOut, time.Duration(h.WriteTimeout)))
}

// abandon notes that the write wr was given up before the upstream
// answered it.
func (h *Handler) abandon(wr *write) {
	if wr.mark == "" {
		wr.mark = markOf(wr.r.URL.EscapedPath())
	}
	h.abandoned.mark(wr.mark, time.Now(), time.Duration(h.RevalidateAbandoned), time.Duration(h.CacheTTL))
	// Other instances must check it against the upstream too.
	h.store.distrust(wr.key, time.Duration(h.RevalidateAbandoned))
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

// writeCtx is a write's context under its lock: the client's, ended also
// at write_timeout, and marked with the write, so that a guard nested in
// this one (in a subroute, say) waits neither for the lock nor for the
// fence this one holds. It is part of the write, which spares an
// allocation.
type writeCtx struct {
	context.Context
	wr *write
}

// guardedCtxKey marks a request with the write that holds its resource's
// lock; fencedCtxKey with the fence lock a guard holds for it.
type (
	guardedCtxKey struct{}
	fencedCtxKey  struct{}
)

func (c *writeCtx) Value(key any) any {
	switch key.(type) {
	case guardedCtxKey:
		return c.wr
	case fencedCtxKey:
		if c.wr.fence.key != "" {
			return c.wr.fence.key
		}
	}
	return c.Context.Value(key)
}

// placeholderString is a placeholder's value that is a field of the write
// (or an outcome's name), set without an allocation. Through a pointer to a
// string it is still a string to every consumer: the replacer and
// log_append (String), and the CEL of `expression` matchers, which takes a
// pointer's target by its kind and refuses a struct or reads a uint8 as a
// number.
type placeholderString string

func (p *placeholderString) String() string { return string(*p) }

// set sets one of the write's placeholders.
func (wr *write) set(name string, value any) {
	if wr.repl != nil {
		wr.repl.Set(name, value)
	}
}

// decided counts a guarded request's outcome and shows it to access logs.
func decided(r *http.Request, o outcome) {
	countOutcome(o)
	setPlaceholder(r, "http.write_guard.outcome", (*placeholderString)(&outcomeNames[o]))
}

// setPlaceholder sets one of the guard's placeholders for the request.
func setPlaceholder(r *http.Request, name string, value any) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(name, value)
	}
}
