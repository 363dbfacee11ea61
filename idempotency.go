package writeguard

// Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): a client
// names each logical write with a key and sends it again on every retry of
// that write; the guard forwards the first attempt only, and answers every
// retry with the first attempt's answer, for every method in `idempotency
// methods` (POST PUT PATCH DELETE by default), guarded or not.
//
// # Where it runs
//
// The idempotency step wraps the rest of the guard: ServeHTTP hands a
// request carrying a key to serveIdempotent, which decides on the record
// before anything else (preconditions, the lock) and, for a new key, runs
// the usual path (serveWrite for guarded methods, serveUnguarded for the
// others) under a recorder of its answer. A retried conditional PUT whose
// first attempt was applied therefore gets that attempt's 200, not the 412
// its If-Match, naming the version it replaced itself, would now earn.
//
// # What a record is, and its key
//
// A record's id is a SHA-256 over the method (the one a method override
// field names, if any), the resource key (the guard's `key`), a SHA-256 of
// the `scope` value (a placeholder template, default the Authorization
// field) and the client's key: one client can never be answered with
// another's record, nor one resource's answer replayed for another. Stores
// see only the id, so neither keys nor credentials stand in Redis.
//
// Beside its state, a record holds the request's fingerprint: a SHA-256 of
// the request method, the target (path and query as sent), the body, and
// the fields that change a body's meaning (Content-Type, Content-Encoding,
// Content-Language and the method override fields; `fingerprint` adds
// others). The preconditions are not part of it: they say which version a
// change is based on, not what the change is, so a client that re-read the
// resource after a lost answer and retries with a new If-Match learns from
// the replay that its first attempt was applied. A key sent again with a
// request of another fingerprint is answered 422 idempotency-key-reused.
//
// # States
//
//	absent     no record (never seen, expired, evicted, released, forgotten):
//	           the request claims the key and is served as usual
//	in flight  an attempt is being served: a retry gets 409
//	           idempotency-in-flight with Retry-After, or with `wait` waits
//	           for the attempt to end, at most that long
//	finished   the attempt's answer is stored for `ttl`: a retry gets it
//	           replayed with Idempotent-Replayed: true, without reaching the
//	           upstream, the lock or the preconditions
//	unknown    the attempt was forwarded and its answer lost: a retry gets
//	           409 idempotency-outcome-unknown, for `ttl`
//
// Stored (finished): the upstream's 2xx and 4xx answers, except 408, 425
// and 429, which ask for a retry. Released (absent again): the guard's own
// refusals (428, 412, 409 busy, 413, 400, 503 store unavailable: nothing
// reached the upstream, so a retry is judged afresh), the upstream's 1xx
// upgrades, 3xx and 5xx answers other than 502 and 504, and requests that
// never reached the upstream (reverse_proxy could not connect: a DialError).
//
// # Lost answers
//
// A request with a key is served on a context that outlives the client: a
// client that gives up (its own timeout, a cut connection, a proxy in
// between giving up) does not cancel the upstream request, whose answer is
// stored for the retry; once the client has gone, write_timeout bounds how
// long that lasts. What remains lost is an answer that never came from the
// upstream, after the request was forwarded: write_timeout elapsed, the
// upstream cut the connection, a gateway behind the guard answered 502 or
// 504. The upstream may have applied the write. Forwarding the retry could
// apply it twice, so the record becomes unknown: the retry is refused with
// 409 idempotency-outcome-unknown, whose text tells the client to GET the
// resource to see whether its change is there and, if it is not, to send
// it again under a new key. The key is never released for such a write.
//
// The forwarded request does not carry Idempotency-Key (forward_key keeps
// it): Go's HTTP transport takes a request with that field for one it may
// send again on a new connection when the first broke before an answer,
// which a backend that knows nothing of keys would apply twice.
//
// # Large answers
//
// The answer's status and its headers that describe the result (ETag,
// Location, Content-Type, Last-Modified, ... and `replay_headers`; never
// Set-Cookie unless listed there) are always stored. Its body is stored
// when it is at most `max_body`; a larger one is not, and its replay
// carries the status and headers with an empty body and
// Idempotent-Body-Omitted: true (Content-Type and Content-Encoding
// dropped). It is still never applied twice.
//
// # Stores
//
// Records live where the handler's `store` says (idemstore.go). In memory,
// the records of every handler sharing the bound `max_memory` (bytes,
// counted from the stored bodies and headers) survive reloads in the
// pool; records in flight are never evicted; finished ones are evicted
// oldest first when the bound is reached, counted in
// caddy_write_guard_idempotency_evictions_total, since an evicted key can
// be applied again. In Redis a record is one key; a claim has its own TTL
// (`claim_ttl`), renewed every third of it while the request runs, so that
// an instance that dies frees its keys after claim_ttl and a live request
// is never taken for an orphan; the finished answer is kept for `ttl`.
// Redis unreachable: on_store_error fail refuses keyed requests with 503,
// local keeps their records in this process for as long as Redis fails.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/idempotency"
)

// Defaults of the idempotency options.
const (
	DefaultIdempotencyTTL       = 24 * time.Hour
	DefaultIdempotencyMaxBody   = 1 << 20
	DefaultIdempotencyMaxMemory = 64 << 20
	DefaultIdempotencyClaimTTL  = 10 * time.Second
	defaultIdempotencyScope     = "{http.request.header.Authorization}"
)

var defaultIdempotencyMethods = []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// defaultFingerprintFields change what a body means; the method override
// fields in force are added.
var defaultFingerprintFields = []string{"Content-Type", "Content-Encoding", "Content-Language"}

// replayFields are the answer's header fields that describe the result,
// kept for replay; replay_headers adds others.
var replayFields = []string{
	"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Location",
	"Content-Type", "Etag", "Expires", "Last-Modified", "Link", "Location", "Preference-Applied", "Vary",
}

// IdempotencyConfig makes requests that carry an Idempotency-Key field
// (draft-ietf-httpapi-idempotency-key-header) apply at most once: the first
// request with a key is served, and every retry with the same key is
// answered with the first one's answer, without reaching the upstream.
type IdempotencyConfig struct {
	// Methods whose requests honour Idempotency-Key, guarded or not.
	// Default: POST, PUT, PATCH, DELETE.
	Methods []string `json:"methods,omitempty"`

	// Require lists the methods whose requests must carry a key: 400
	// without one. Each must be one of Methods. Default: none.
	Require []string `json:"require,omitempty"`

	// TTL is how long a finished answer is replayed (and a write whose
	// answer was lost is refused). Default: 24h.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// MaxBody is the largest answer body kept for replay, in bytes; the
	// replay of a larger answer has its status and header fields and no
	// body. Default: 1048576 (1 MiB).
	MaxBody int64 `json:"max_body,omitempty"`

	// Scope separates one client's keys from another's: a placeholder
	// template whose value (hashed) is part of every record's id, beside
	// the method and the resource key. Default:
	// "{http.request.header.Authorization}".
	Scope string `json:"scope,omitempty"`

	// Wait is how long a retry that arrives while the first request with
	// its key is still being served waits for that request's answer; 0
	// answers 409 with Retry-After at once. Default: 0.
	Wait caddy.Duration `json:"wait,omitempty"`

	// Fingerprint lists request header fields that, besides the method,
	// the target, the body, Content-Type, Content-Encoding,
	// Content-Language and the method override fields, make two requests
	// with one key different requests (422). Default: none.
	Fingerprint []string `json:"fingerprint,omitempty"`

	// ReplayHeaders lists answer header fields to keep for replay besides
	// those that describe the result (ETag, Location, Content-Type,
	// Last-Modified, Content-Location, Cache-Control, ...). Set-Cookie is
	// kept only when listed. Default: none.
	ReplayHeaders []string `json:"replay_headers,omitempty"`

	// MaxMemory bounds, in bytes, the records kept in memory (store
	// memory, and store redis with on_store_error local while Redis is
	// unreachable). Finished records are evicted oldest first once it is
	// reached; records in flight never are. Default: 67108864 (64 MiB).
	MaxMemory int64 `json:"max_memory,omitempty"`

	// ForwardKey passes the Idempotency-Key field on to the upstream, for
	// upstreams that implement it too. Go's HTTP transport, which
	// reverse_proxy uses, takes a request with the field for one it may
	// send again when the connection breaks before the answer, so an
	// upstream that knows nothing of keys could then apply it twice.
	// Default: false (the field is removed).
	ForwardKey bool `json:"forward_key,omitempty"`

	// ClaimTTL is, with store redis, how long the claim of a key in
	// flight outlives an instance that dies while serving it: the
	// instance renews it every third of ClaimTTL while the request runs.
	// Default: 10s.
	ClaimTTL caddy.Duration `json:"claim_ttl,omitempty"`
}

// validate checks the options; methods are the guard's method rules.
func (c *IdempotencyConfig) validate() error {
	if c == nil {
		return nil
	}
	for _, m := range c.Methods {
		switch strings.ToUpper(m) {
		case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodConnect:
			return fmt.Errorf("idempotency methods: %s is safe, and a key means nothing for it", m)
		}
		if !validFieldName(m) {
			return fmt.Errorf("idempotency methods: %q is not a method name", m)
		}
	}
	methods := c.Methods
	if len(methods) == 0 {
		methods = defaultIdempotencyMethods
	}
	for _, m := range c.Require {
		if !slices.Contains(methods, strings.ToUpper(m)) {
			return fmt.Errorf("idempotency require: %s is not one of the idempotency methods", m)
		}
	}
	switch {
	case c.TTL < 0, c.Wait < 0, c.ClaimTTL < 0:
		return errors.New("idempotency: ttl, wait and claim_ttl must not be negative")
	case c.MaxBody < 0, c.MaxMemory < 0:
		return errors.New("idempotency: max_body and max_memory must not be negative")
	case c.ClaimTTL != 0 && time.Duration(c.ClaimTTL) < 300*time.Millisecond:
		return fmt.Errorf("idempotency claim_ttl %v is too short to be renewed in time", time.Duration(c.ClaimTTL))
	}
	if c.MaxBody > 0 && c.MaxMemory > 0 && c.MaxBody > c.MaxMemory {
		return errors.New("idempotency: max_body is larger than max_memory")
	}
	for _, f := range append(slices.Clone(c.Fingerprint), c.ReplayHeaders...) {
		if !validFieldName(f) {
			return fmt.Errorf("idempotency: %q is not a header field name", f)
		}
	}
	return nil
}

// idempotent is a handler's idempotency step, built at Provision.
type idempotent struct {
	h        *Handler
	methods  map[string]bool // true: a key is required
	ttl      time.Duration
	maxBody  int64
	scope    string
	wait     time.Duration
	fields   []string // fingerprinted, canonical
	replayed []string // kept for replay, canonical
	store    idempotency.Store
	// forwardKey: the upstream gets the Idempotency-Key field.
	forwardKey bool
}

// provisionIdempotency builds the handler's idempotency step, once the
// rest is provisioned.
func (h *Handler) provisionIdempotency() error {
	c := h.Idempotency
	if c == nil {
		return nil
	}
	ip := &idempotent{h: h, methods: map[string]bool{}, ttl: DefaultIdempotencyTTL, maxBody: DefaultIdempotencyMaxBody, scope: defaultIdempotencyScope}
	methods := c.Methods
	if len(methods) == 0 {
		methods = defaultIdempotencyMethods
	}
	for _, m := range methods {
		ip.methods[strings.ToUpper(m)] = false
	}
	for _, m := range c.Require {
		ip.methods[strings.ToUpper(m)] = true
	}
	if c.TTL > 0 {
		ip.ttl = time.Duration(c.TTL)
	}
	if c.MaxBody > 0 {
		ip.maxBody = c.MaxBody
	}
	if c.Scope != "" {
		ip.scope = c.Scope
	}
	ip.wait = time.Duration(c.Wait)
	ip.forwardKey = c.ForwardKey
	for _, f := range append(append(slices.Clone(defaultFingerprintFields), h.overrideFields...), c.Fingerprint...) {
		if f = http.CanonicalHeaderKey(f); !slices.Contains(ip.fields, f) {
			ip.fields = append(ip.fields, f)
		}
	}
	slices.Sort(ip.fields)
	for _, f := range append(slices.Clone(replayFields), c.ReplayHeaders...) {
		if f = http.CanonicalHeaderKey(f); !slices.Contains(ip.replayed, f) {
			ip.replayed = append(ip.replayed, f)
		}
	}
	maxMemory := c.MaxMemory
	if maxMemory == 0 {
		maxMemory = DefaultIdempotencyMaxMemory
	}
	store, keys, err := attachIdempotencyStore(h, maxMemory, time.Duration(c.ClaimTTL))
	if err != nil {
		return fmt.Errorf("write_guard idempotency: %v", err)
	}
	ip.store = store
	h.poolKeys = append(h.poolKeys, keys...)
	h.idem = ip
	return nil
}

// applies reports whether requests of method honour Idempotency-Key.
func (ip *idempotent) applies(method string) bool {
	_, ok := ip.methods[method]
	return ok
}

// idemResult is what the idempotency step made of a request, shown in
// {http.write_guard.idempotency}.
type idemResult uint8

const (
	idemNew      idemResult = iota // the key was claimed: the request was served
	idemReplayed                   // the stored answer was replayed
	idemInFlight                   // 409: the first request with the key was still being served
	idemReused                     // 422: the key came with another request
	idemUnknown                    // 409: the first request's answer was lost
	idemInvalid                    // 400: not a key
	idemRequired                   // 400: no key where one is required
	numIdemResults
)

var idemResultNames = [numIdemResults]string{
	idemNew:      "new",
	idemReplayed: "replayed",
	idemInFlight: "in_flight",
	idemReused:   "reused",
	idemUnknown:  "outcome_unknown",
	idemInvalid:  "invalid",
	idemRequired: "required",
}

func (r idemResult) String() string { return idemResultNames[r] }

// idemCtxKey marks a request whose key an enclosing guard handles.
type idemCtxKey struct{}

// serveIdempotent is the idempotency step of a request whose method
// honours Idempotency-Key: it replays, refuses, or serves the request
// (serveMethod) under a recorder of its answer, and records the answer.
func (h *Handler) serveIdempotent(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error {
	ip := h.idem
	fields, sent := r.Header["Idempotency-Key"]
	if !sent || r.Context().Value(idemCtxKey{}) != nil {
		if sent || !ip.methods[method] {
			return h.serveMethod(w, r, next, method)
		}
		ip.result(r, idemRequired)
		return h.refuse(w, r, refuseIdempotencyKeyRequired(method))
	}
	key, err := idempotency.ParseKey(strings.Join(fields, ","))
	if err != nil {
		ip.result(r, idemInvalid)
		return h.refuse(w, r, refuseInvalidIdempotencyKey(err))
	}
	// The fingerprint needs the body; guarded writes take it as it is.
	var body bufferedBody
	discard, err := h.bufferBody(r, &body)
	defer discard()
	if err != nil {
		return h.refuse(w, r, bodyRefusal(r, err))
	}
	id := ip.recordID(r, method, h.resourceKey(r), key)
	fp, err := ip.fingerprint(r, method)
	if err != nil {
		return h.refuse(w, r, serverFailed(err))
	}
	ticket, ref := ip.claim(w, r, id, fp)
	if ticket == nil {
		return ref
	}
	ip.result(r, idemNew)
	return ip.serve(ticket, w, r, next, method)
}

// claim claims id for the request, or answers the request from the record
// that holds id: the returned error is then the answer's.
func (ip *idempotent) claim(w http.ResponseWriter, r *http.Request, id string, fp idempotency.Fingerprint) (idempotency.Ticket, error) {
	h := ip.h
	var deadline time.Time
	if ip.wait > 0 {
		deadline = time.Now().Add(ip.wait)
	}
	for {
		ticket, rec, err := ip.store.Claim(r.Context(), id, fp)
		switch {
		case err != nil:
			return nil, h.refuse(w, r, ip.storeFailed(r, err))
		case ticket != nil:
			return ticket, nil
		case rec.Fingerprint != fp:
			ip.result(r, idemReused)
			return nil, h.refuse(w, r, refuseIdempotencyKeyReused())
		case rec.State == idempotency.Finished:
			ip.result(r, idemReplayed)
			return nil, ip.replay(w, rec.Answer)
		case rec.State == idempotency.Unknown:
			ip.result(r, idemUnknown)
			return nil, h.refuse(w, r, refuseIdempotencyOutcomeUnknown())
		}
		// In flight.
		if time.Now().Before(deadline) {
			ctx, cancel := context.WithDeadline(r.Context(), deadline)
			err = ip.store.Wait(ctx, id)
			cancel()
			if err == nil || (errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil) {
				continue // claim again, or answer from what it became
			}
			if r.Context().Err() != nil {
				return nil, h.refuse(w, r, refuseClientGone(err))
			}
			return nil, h.refuse(w, r, ip.storeFailed(r, err))
		}
		ip.result(r, idemInFlight)
		return nil, h.refuse(w, r, refuseIdempotencyInFlight())
	}
}

// storeFailed answers a request whose record could not be read or
// claimed: the store (Redis) failed, and on_store_error fail is in force.
func (ip *idempotent) storeFailed(r *http.Request, err error) *refusal {
	if c := ip.h.logger.Check(zapcore.WarnLevel, "idempotency store failed; request refused"); c != nil {
		c.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	return refuseStoreUnavailable()
}

// serve serves a request that claimed its key, and ends the claim with
// what became of it.
func (ip *idempotent) serve(ticket idempotency.Ticket, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) (err error) {
	rec := &idemRecorder{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, max: ip.maxBody, fields: ip.replayed}
	call := &idemCall{}
	ctx, stop := detach(r.Context(), time.Duration(ip.h.WriteTimeout), call)
	defer stop()
	panicked := true
	defer func() {
		if panicked {
			// Whatever the next handler did is unknown.
			ip.end(ticket, r, idempotency.Unknown, nil)
		}
	}()
	fr := r.WithContext(ctx)
	if !ip.forwardKey {
		// The guard answers retries; and Go's transport (reverse_proxy's)
		// would take a request with the field for one it may send again
		// on a new connection when the first broke before an answer:
		// applied twice by a backend that knows nothing of keys.
		fr.Header = r.Header.Clone()
		delete(fr.Header, "Idempotency-Key")
	}
	err = ip.h.serveMethod(rec, fr, next, method)
	panicked = false
	state, answer := ip.outcome(r, rec, call, err)
	ip.end(ticket, r, state, answer)
	return err
}

// outcome decides what a served request leaves: a finished record with its
// answer, an unknown one (forwarded, answer lost), or none (Absent).
func (ip *idempotent) outcome(r *http.Request, rec *idemRecorder, call *idemCall, err error) (idempotency.State, *idempotency.Answer) {
	if o, ok := outcomeOf(r); ok && o != outcomeAllowed && o != outcomeNested {
		return idempotency.Absent, nil // the guard refused it: nothing was forwarded
	}
	var dial reverseproxy.DialError
	if call.unsent || errors.As(err, &dial) {
		return idempotency.Absent, nil // no connection to the upstream: nothing was sent
	}
	status := rec.status
	if status == 0 {
		var he caddyhttp.HandlerError
		switch {
		case err == nil:
			// The next handler wrote nothing: as net/http, a 200 with no body.
			status = http.StatusOK
		case errors.As(err, &he) && (he.StatusCode == 0 || he.StatusCode >= 500 || he.StatusCode == 499):
			status = he.StatusCode
			if status == 0 || status == 499 {
				status = http.StatusBadGateway // no answer at all
			}
			if status != http.StatusBadGateway && status != http.StatusGatewayTimeout {
				return idempotency.Absent, nil
			}
			return idempotency.Unknown, nil
		default:
			// Answered by handle_errors, which the guard does not see.
			return idempotency.Absent, nil
		}
	}
	switch {
	case rec.upgraded:
		return idempotency.Absent, nil
	case status == http.StatusBadGateway || status == http.StatusGatewayTimeout:
		// A gateway, or the guard, gave up before the upstream answered.
		return idempotency.Unknown, nil
	case status == http.StatusRequestTimeout || status == http.StatusTooEarly || status == http.StatusTooManyRequests:
		return idempotency.Absent, nil // retry asked for
	case status < 200 || status >= 300 && status < 400 || status >= 500:
		return idempotency.Absent, nil
	}
	a := &idempotency.Answer{Status: status, Header: rec.header}
	if rec.overflow {
		a.BodyOmitted = true
	} else if rec.body.Len() > 0 {
		a.Body = bytes.Clone(rec.body.Bytes())
	}
	return idempotency.Finished, a
}

// end ends the claim: a record of state, or none (Absent).
func (ip *idempotent) end(ticket idempotency.Ticket, r *http.Request, state idempotency.State, answer *idempotency.Answer) {
	// The claim must end even when the client has gone.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	var err error
	if state == idempotency.Absent {
		err = ticket.Release(ctx)
	} else {
		err = ticket.Finish(ctx, state, answer, ip.ttl)
	}
	if err == nil && state != idempotency.Absent {
		countIdemStored()
	}
	if err != nil {
		if c := ip.h.logger.Check(zapcore.WarnLevel, "could not record what became of a request with an Idempotency-Key; a retry with the key may be served again"); c != nil {
			c.Write(zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Stringer("state", state), zap.Error(err))
		}
	}
}

// recordID names the record of key: the method, the resource, the scope
// (hashed) and the key, hashed together.
func (ip *idempotent) recordID(r *http.Request, method, resource, key string) string {
	scope := ""
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		scope = repl.ReplaceAll(ip.scope, "")
	}
	return idempotencyRecordID(method, resource, scope, key)
}

// idempotencyRecordID is the id of a record; the admin API computes it
// from its parts too.
func idempotencyRecordID(method, resource, scope, key string) string {
	scopeSum := sha256.Sum256([]byte(scope))
	sum := sha256.New()
	for _, part := range [...]string{method, resource, string(scopeSum[:]), key} {
		sum.Write([]byte(strconv.Itoa(len(part))))
		sum.Write([]byte{':'})
		sum.Write([]byte(part))
	}
	return hex.EncodeToString(sum.Sum(nil))
}

// fingerprint digests what the request asks: the method as sent and as
// meant, the target, the fingerprinted fields and the body (held by then).
func (ip *idempotent) fingerprint(r *http.Request, method string) (idempotency.Fingerprint, error) {
	sum := sha256.New()
	part := func(s string) {
		sum.Write([]byte(strconv.Itoa(len(s))))
		sum.Write([]byte{':'})
		sum.Write([]byte(s))
	}
	part(r.Method)
	part(method)
	part(r.URL.EscapedPath())
	part(r.URL.RawQuery)
	for _, f := range ip.fields {
		part(f)
		part(strings.Join(r.Header[f], "\n"))
	}
	if r.GetBody != nil {
		body, err := r.GetBody()
		if err != nil {
			return idempotency.Fingerprint{}, err
		}
		sum.Write([]byte("body:"))
		_, err = io.Copy(sum, body)
		body.Close()
		if err != nil {
			return idempotency.Fingerprint{}, err
		}
	}
	var fp idempotency.Fingerprint
	sum.Sum(fp[:0])
	return fp, nil
}

// replay answers with a stored answer.
func (ip *idempotent) replay(w http.ResponseWriter, a *idempotency.Answer) error {
	hdr := w.Header()
	for k, vs := range a.Header {
		hdr[k] = slices.Clone(vs)
	}
	hdr.Set("Idempotent-Replayed", "true")
	if a.BodyOmitted {
		hdr.Del("Content-Type")
		hdr.Del("Content-Encoding")
		hdr.Set("Idempotent-Body-Omitted", "true")
	}
	if a.Status != http.StatusNoContent && a.Status != http.StatusNotModified {
		hdr.Set("Content-Length", strconv.Itoa(len(a.Body)))
	}
	w.WriteHeader(a.Status)
	if len(a.Body) == 0 {
		return nil
	}
	_, err := w.Write(a.Body)
	return err
}

// result shows what the step made of the request.
func (ip *idempotent) result(r *http.Request, res idemResult) {
	countIdemResult(res)
	setPlaceholder(r, "http.write_guard.idempotency", (*placeholderString)(&idemResultNames[res]))
}

// outcomeOf returns the guard's outcome of r, when one was decided.
func outcomeOf(r *http.Request) (outcome, bool) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return 0, false
	}
	v, ok := repl.Get("http.write_guard.outcome")
	if !ok {
		return 0, false
	}
	name, ok := v.(*placeholderString)
	if !ok {
		return 0, false
	}
	for o := range numOutcomes {
		if outcomeNames[o] == string(*name) {
			return o, true
		}
	}
	return 0, false
}

// idemRecorder passes an answer to the client and keeps what a replay
// needs: the status, the fields that describe the result, and the body up
// to max. Once the client has gone, writes to it are dropped and reported
// done, so that the next handler reads the upstream's answer to its end
// and the record is complete.
type idemRecorder struct {
	caddyhttp.ResponseWriterWrapper
	max      int64
	fields   []string
	status   int
	header   http.Header
	body     bytes.Buffer
	overflow bool
	upgraded bool
	gone     bool
}

func (rw *idemRecorder) WriteHeader(status int) {
	switch {
	case rw.status != 0:
	case status == http.StatusSwitchingProtocols:
		rw.upgraded = true
		rw.status = status
	case status >= 200:
		rw.status = status
		hdr := rw.Header()
		for _, f := range rw.fields {
			if vs, ok := hdr[f]; ok {
				if rw.header == nil {
					rw.header = http.Header{}
				}
				rw.header[f] = slices.Clone(vs)
			}
		}
	}
	rw.ResponseWriterWrapper.WriteHeader(status)
}

func (rw *idemRecorder) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if !rw.overflow {
		if int64(rw.body.Len()+len(p)) > rw.max {
			rw.overflow = true
			rw.body = bytes.Buffer{}
		} else {
			rw.body.Write(p)
		}
	}
	if rw.gone {
		return len(p), nil
	}
	n, err := rw.ResponseWriterWrapper.Write(p)
	if err != nil {
		rw.gone = true
		return len(p), nil
	}
	return n, nil
}

// ReadFrom goes through Write, which keeps the body.
func (rw *idemRecorder) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{rw}, r)
}

// idemCall is what the guard tells the idempotency step of a request it
// serves for it.
type idemCall struct {
	// unsent: the upstream could not be reached, so nothing was sent.
	unsent bool
}

// idemCtx carries the call to the guard, and marks the request as one
// whose key is handled.
type idemCtx struct {
	context.Context
	call *idemCall
}

func (c idemCtx) Value(key any) any {
	if _, ok := key.(idemCtxKey); ok {
		return c.call
	}
	return c.Context.Value(key)
}

// idemForwardFailed tells the idempotency step, if any, why forwarding a
// write failed.
func idemForwardFailed(r *http.Request, err error) {
	var dial reverseproxy.DialError
	if call, _ := r.Context().Value(idemCtxKey{}).(*idemCall); call != nil && errors.As(err, &dial) {
		call.unsent = true
	}
}

// detach returns a context with parent's values (and call) that does not
// end when parent does (the client gone), but grace later; stop releases
// it.
func detach(parent context.Context, grace time.Duration, call *idemCall) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(idemCtx{context.WithoutCancel(parent), call})
	var mu sync.Mutex
	var timer *time.Timer
	done := false
	stopAfter := context.AfterFunc(parent, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			timer = time.AfterFunc(grace, func() { cancel(errClientGoneTimeout) })
		}
	})
	return ctx, func() {
		stopAfter()
		mu.Lock()
		done = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel(nil)
	}
}

var errClientGoneTimeout = errors.New("the client left, and write_timeout elapsed before the upstream answered")
