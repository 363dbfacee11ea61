package writeguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/lockmgr"
	"github.com/writeguard/caddy-writeguard/precondition"
)

// Every answer the guard gives instead of the upstream's is built here: one
// constructor per problem type of docs/problems.md, with its texts. A
// refusal names what the client should send next.

// problemBase prefixes every problem type; the fragments are documented in
// docs/problems.md.
const problemBase = "https://github.com/writeguard/caddy-writeguard/blob/main/docs/problems.md#"

// Problem types (RFC 9457) this handler answers with.
const (
	problemPreconditionRequired  = "precondition-required"
	problemPreconditionFailed    = "precondition-failed"
	problemInvalidPrecondition   = "invalid-precondition"
	problemResourceBusy          = "resource-busy"
	problemBodyTooLarge          = "body-too-large"
	problemBodyUnreadable        = "body-unreadable"
	problemProbeFailed           = "probe-failed"
	problemUpstreamFailed        = "upstream-failed"
	problemInvalidMethodOverride = "invalid-method-override"
	problemStoreUnavailable      = "store-unavailable"
	problemIdemKeyInvalid        = "idempotency-key-invalid"
	problemIdemKeyRequired       = "idempotency-key-required"
	problemIdemKeyReused         = "idempotency-key-reused"
	problemIdemInFlight          = "idempotency-in-flight"
	problemIdemOutcomeUnknown    = "idempotency-outcome-unknown"
)

// problem is an RFC 9457 problem details object.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance,omitempty"`

	// Header is what the failed precondition or missing field was about;
	// it lets a client react without parsing prose.
	Header string `json:"header,omitempty"`

	retryAfter int
}

// refusal is the guard's answer to a request it does not forward.
type refusal struct {
	outcome outcome
	// field is the precondition or header field at fault, for logs.
	field string
	// The answer: a problem, the upstream's own answer to the version
	// check, or an error handed back to Caddy (a client that is gone).
	problem problem
	replay  *probeResponse
	err     error
	// uncounted: not an outcome of the request, but this server failing.
	uncounted bool
}

// --- precondition-required, precondition-failed, invalid-precondition ---

// refuseBlind answers a write that carries no precondition (blind 428 or
// 409).
func refuseBlind(status int) *refusal {
	return &refusal{outcome: outcomeBlind, problem: problem{
		Type:   problemPreconditionRequired,
		Title:  "Precondition required",
		Status: status,
		Detail: "This write carries no precondition, so it could overwrite a change it has not seen. GET the resource, then repeat the write with If-Match set to the ETag of that response (or If-None-Match: * to create a resource that must not exist yet).",
		Header: "If-Match",
	}}
}

// refuseInvalidPrecondition answers a precondition field that cannot be
// parsed.
func refuseInvalidPrecondition(he *precondition.HeaderError) *refusal {
	return &refusal{outcome: outcomeBadRequest, field: he.Field, problem: problem{
		Type:   problemInvalidPrecondition,
		Title:  "Invalid precondition",
		Status: http.StatusBadRequest,
		Detail: fmt.Sprintf("The %s header field is not valid (%s). Send the entity-tag exactly as the ETag response field gave it, for example If-Match: \"abc\".", he.Field, he.Reason),
		Header: he.Field,
	}}
}

// untagged says why a resource's version has no entity-tag, for the 412
// of an If-Match that therefore cannot match.
type untagged func() string

// upstreamUntagged: the upstream sends none.
func upstreamUntagged() string {
	return "The upstream sends no ETag for this resource, so If-Match cannot name its version. Use If-Unmodified-Since with its Last-Modified date instead."
}

// hashUntagged: the representation is too large for the guard to tag.
func hashUntagged(limit int64) untagged {
	return func() string {
		return fmt.Sprintf("The resource is larger than %d bytes (hash_max_body), so this proxy gives it no ETag and If-Match cannot name its version. Use If-Unmodified-Since with its Last-Modified date instead.", limit)
	}
}

// refuseStale answers a write whose precondition failed against the
// resource's current state.
func refuseStale(o precondition.Outcome, state precondition.State, why untagged) *refusal {
	p := problem{
		Type:   problemPreconditionFailed,
		Title:  "Precondition failed",
		Status: http.StatusPreconditionFailed,
		Header: o.Field(),
	}
	switch {
	case o == precondition.FailedIfNoneMatch:
		p.Detail = "The resource already exists (or has a version named in If-None-Match), and this write must not replace it. GET the resource and, to change it, send If-Match with its ETag instead."
	case !state.Exists:
		p.Detail = "The resource does not exist any more (it was deleted after you read it). GET it to confirm; to create it anew, send If-None-Match: * instead."
	case o == precondition.FailedIfUnmodifiedSince && state.LastModified.IsZero():
		p.Detail = "The resource has no Last-Modified date to compare If-Unmodified-Since with. GET it and send If-Match with its ETag instead."
	case o == precondition.FailedIfMatch && state.ETag == "":
		p.Detail = why()
	default:
		p.Detail = "The resource changed since you read it. GET it again, merge your change into the current version, and repeat the write with If-Match set to the new ETag."
	}
	return &refusal{outcome: outcomeStale, field: o.Field(), problem: p}
}

// readPreconditionFailed answers a read whose If-Match names another
// version than the representation the guard tagged.
func readPreconditionFailed() problem {
	return problem{
		Type:   problemPreconditionFailed,
		Title:  "Precondition failed",
		Status: http.StatusPreconditionFailed,
		Detail: "The representation changed since the version named in If-Match. GET it without If-Match to have the current version and its ETag.",
		Header: "If-Match",
	}
}

// --- resource-busy ---

func busy(detail string) *refusal {
	return &refusal{outcome: outcomeBusy, problem: problem{
		Type:       problemResourceBusy,
		Title:      "Resource busy",
		Status:     http.StatusConflict,
		Detail:     detail,
		retryAfter: 1,
	}}
}

// refuseBusy answers a write that could not have the resource's lock in
// this process: lock_timeout, or max_waiters writes ahead of it.
func refuseBusy(err error, lockTimeout time.Duration, maxWaiters int) *refusal {
	if errors.Is(err, lockmgr.ErrTooManyWaiters) {
		return busy(fmt.Sprintf("%d other writes to this resource are already waiting. Retry after the time given in Retry-After, with the same precondition.", maxWaiters))
	}
	return busy(fmt.Sprintf("Other writes to this resource kept it locked for more than %s. Retry after the time given in Retry-After, with the same precondition.", lockTimeout))
}

// refuseBusyShared answers a write that could not have the resource's lock
// in Redis within lock_timeout.
func refuseBusyShared(lockTimeout time.Duration) *refusal {
	return busy(fmt.Sprintf("Other writes to this resource, through this or another server, kept it locked for more than %s. Retry after the time given in Retry-After, with the same precondition.", lockTimeout))
}

// refuseStopped answers a write that reaches a configuration after it was
// replaced and its writes were done: the replacing one serves the retry.
func refuseStopped() *refusal {
	return busy("This server's configuration was being replaced when the write arrived. Retry after the time given in Retry-After, with the same precondition.")
}

// --- body-too-large, body-unreadable ---

func refuseTooLarge(limit int64) *refusal {
	return &refusal{outcome: outcomeTooLarge, problem: problem{
		Type:   problemBodyTooLarge,
		Title:  "Request body too large",
		Status: http.StatusRequestEntityTooLarge,
		Detail: fmt.Sprintf("Guarded writes may carry at most %d bytes.", limit),
	}}
}

func refuseUnreadable() *refusal {
	return &refusal{outcome: outcomeBadRequest, problem: problem{
		Type:   problemBodyUnreadable,
		Title:  "Request body unreadable",
		Status: http.StatusBadRequest,
		Detail: "The request body could not be read to its end, so the write was not forwarded. Send it again.",
	}}
}

// --- probe-failed ---

// refuseProbeFailed answers a write whose version check the upstream did
// not answer usefully: status is its answer's (0: none), err what broke.
func refuseProbeFailed(status int, err error, timedOut bool, writeTimeout time.Duration) *refusal {
	code := http.StatusBadGateway
	detail := fmt.Sprintf("The upstream answered the version check with status %d, so the write's preconditions could not be checked and the write was not forwarded. Retry later.", status)
	switch {
	case timedOut:
		code = http.StatusGatewayTimeout
		detail = fmt.Sprintf("The upstream did not answer the version check within %s (write_timeout), so the write was not forwarded. Retry later.", writeTimeout)
	case err != nil:
		detail = "The upstream could not be reached to check the resource's current version, so the write was not forwarded. Retry later."
	}
	return &refusal{outcome: outcomeProbeFailed, problem: problem{
		Type:   problemProbeFailed,
		Title:  "Version check failed",
		Status: code,
		Detail: detail,
	}}
}

// refuseUnauthorized passes on the upstream's 401 or 403 to the version
// check: the client may not read the resource, and sees why exactly as the
// upstream said it.
func refuseUnauthorized(resp *probeResponse) *refusal {
	return &refusal{outcome: outcomeUnauthorized, replay: resp}
}

// --- upstream-failed ---

// upstreamFailed is the answer to a forwarded write that the upstream never
// answered: 504 when write_timeout elapsed (timedOut), otherwise the status
// of reverse_proxy's error.
func upstreamFailed(status int, timedOut bool, writeTimeout time.Duration) problem {
	detail := "The upstream failed before it answered this write, which may or may not have been applied. GET the resource to see its current version, then repeat the write with If-Match set to its ETag."
	if timedOut {
		status = http.StatusGatewayTimeout
		detail = fmt.Sprintf("The upstream did not answer this write within %s (write_timeout), so it may or may not have been applied. GET the resource to see its current version, then repeat the write with If-Match set to its ETag.", writeTimeout)
	}
	return problem{
		Type:   problemUpstreamFailed,
		Title:  "Upstream failed",
		Status: status,
		Detail: detail,
	}
}

// --- invalid-method-override ---

func refuseMethodOverride(err *overrideError) *refusal {
	return &refusal{outcome: outcomeBadRequest, field: err.field, problem: problem{
		Type:   problemInvalidMethodOverride,
		Title:  "Invalid method override",
		Status: http.StatusBadRequest,
		Detail: err.reason,
		Header: err.field,
	}}
}

// --- store-unavailable ---

func refuseStoreUnavailable() *refusal {
	return &refusal{outcome: outcomeStoreDown, problem: problem{
		Type:       problemStoreUnavailable,
		Title:      "Lock store unavailable",
		Status:     http.StatusServiceUnavailable,
		Detail:     "The store that serializes writes across servers cannot be reached, so this write was not forwarded. Retry after the time given in Retry-After, with the same precondition.",
		retryAfter: 1,
	}}
}

// --- idempotency-key-invalid, idempotency-key-required, idempotency-key-reused,
// idempotency-in-flight, idempotency-outcome-unknown ---
//
// Counted in the idempotency metrics, not as outcomes of guarded writes:
// they answer requests of methods the guard may not guard.

func refuseInvalidIdempotencyKey(err error) *refusal {
	return &refusal{uncounted: true, field: "Idempotency-Key", problem: problem{
		Type:   problemIdemKeyInvalid,
		Title:  "Invalid Idempotency-Key",
		Status: http.StatusBadRequest,
		Detail: fmt.Sprintf("%v. Send one key per logical operation as a quoted string of at most 255 printable ASCII characters, for example Idempotency-Key: \"8e03978e-40d5-43e8-bc93-6894a57f9324\", and the same key on every retry of that operation.", err),
		Header: "Idempotency-Key",
	}}
}

func refuseIdempotencyKeyRequired(method string) *refusal {
	return &refusal{uncounted: true, field: "Idempotency-Key", problem: problem{
		Type:   problemIdemKeyRequired,
		Title:  "Idempotency-Key required",
		Status: http.StatusBadRequest,
		Detail: fmt.Sprintf("%s requests to this server must carry an Idempotency-Key, so that a retry is never applied twice. Generate a new key (a UUID, say) for this operation, send it as Idempotency-Key: \"<key>\", and send the same key on every retry of it.", method),
		Header: "Idempotency-Key",
	}}
}

func refuseIdempotencyKeyReused() *refusal {
	return &refusal{uncounted: true, field: "Idempotency-Key", problem: problem{
		Type:   problemIdemKeyReused,
		Title:  "Idempotency-Key reused",
		Status: http.StatusUnprocessableEntity,
		Detail: "This Idempotency-Key was already used for another request (another body, target or Content-Type), so this one was not forwarded. A retry must repeat its request exactly; a new operation needs a new key.",
		Header: "Idempotency-Key",
	}}
}

func refuseIdempotencyInFlight() *refusal {
	return &refusal{uncounted: true, field: "Idempotency-Key", problem: problem{
		Type:       problemIdemInFlight,
		Title:      "Request with this Idempotency-Key in progress",
		Status:     http.StatusConflict,
		Detail:     "An earlier request with this Idempotency-Key is still being served, so this one was not forwarded. Retry after the time given in Retry-After, with the same key and request: you will get the earlier request's answer.",
		Header:     "Idempotency-Key",
		retryAfter: 1,
	}}
}

func refuseIdempotencyOutcomeUnknown() *refusal {
	return &refusal{uncounted: true, field: "Idempotency-Key", problem: problem{
		Type:   problemIdemOutcomeUnknown,
		Title:  "Outcome of the request with this Idempotency-Key unknown",
		Status: http.StatusConflict,
		Detail: "An earlier request with this Idempotency-Key reached the upstream, but its answer was lost (the upstream failed or timed out before answering), so it may or may not have been applied; it is not forwarded again. GET the resource to see whether the change is there. If it is not, send the request again with a new Idempotency-Key.",
		Header: "Idempotency-Key",
	}}
}

// --- no problem body ---

// serverFailed ends a write this server could not hold (its body could not
// be spooled to a file): the server's failure, not the client's.
func serverFailed(err error) *refusal {
	return &refusal{err: caddyhttp.Error(http.StatusInternalServerError, err), uncounted: true}
}

// refuseClientGone ends a request whose client left before its write was
// decided: nobody is there to answer.
func refuseClientGone(err error) *refusal {
	return &refusal{outcome: outcomeClientGone, err: caddyhttp.Error(499, err)}
}

// refuse answers a request the guard does not forward, counts it and logs
// it. A refusal is an ordinary protocol answer, like a 304: it is logged at
// Debug.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, ref *refusal) error {
	if !ref.uncounted {
		decided(r, ref.outcome)
	}
	if ref.err != nil {
		return ref.err
	}
	if c := h.logger.Check(zapcore.DebugLevel, "write rejected"); c != nil {
		fields := []zap.Field{
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
		}
		if !ref.uncounted {
			fields = append(fields, zap.Stringer("outcome", ref.outcome))
		}
		if sent := preconditionFields(r); sent != "" {
			fields = append(fields, zap.String("preconditions", sent))
		}
		if ref.field != "" {
			fields = append(fields, zap.String("failed", ref.field))
		}
		c.Write(fields...)
	}
	if ref.replay != nil {
		return ref.replay.replay(w)
	}
	return h.answer(w, r, ref.problem)
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

// answer sends a problem: as an application/problem+json body, or, with
// `refusals handle_errors`, by handing it to the server's handle_errors
// routes as an error with the problem in placeholders.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, p problem) error {
	if h.Refusals != "handle_errors" {
		return writeProblem(w, r, p)
	}
	p.Type = problemBase + p.Type
	p.Instance = r.URL.EscapedPath()
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	setPlaceholder(r, "http.write_guard.problem.type", p.Type)
	setPlaceholder(r, "http.write_guard.problem.title", p.Title)
	setPlaceholder(r, "http.write_guard.problem.detail", p.Detail)
	setPlaceholder(r, "http.write_guard.problem.header", p.Header)
	setPlaceholder(r, "http.write_guard.problem.json", string(body))
	if p.retryAfter > 0 {
		// Caddy answers errors with the header as it stands.
		w.Header().Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	return caddyhttp.Error(p.Status, refusalError{p})
}

// refusalError carries a refusal to handle_errors; its message is the
// problem's detail, {http.error.message}.
type refusalError struct{ p problem }

func (e refusalError) Error() string { return e.p.Detail }

func writeProblem(w http.ResponseWriter, r *http.Request, p problem) error {
	p.Type = problemBase + p.Type
	p.Instance = r.URL.EscapedPath()
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/problem+json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	hdr.Set("Cache-Control", "no-store")
	if p.retryAfter > 0 {
		hdr.Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	w.WriteHeader(p.Status)
	if r.Method != http.MethodHead {
		_, err = w.Write(body)
	}
	return err
}
