package writeguard

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

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

// refuse answers a request the guard does not forward: with a problem body,
// or, with `refusals handle_errors`, by handing it to the server's
// handle_errors routes as an error with the problem in placeholders.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, p problem) error {
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
