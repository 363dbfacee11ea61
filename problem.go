package writeguard

import (
	"encoding/json"
	"net/http"
	"strconv"
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
