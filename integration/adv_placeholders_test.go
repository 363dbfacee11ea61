package integration

import (
	"net/http"
	"testing"
	"time"
)

// TestAdvRefusalsChosenByExpression answers refusals in handle_errors
// routes that `expression` matchers choose by the guard's placeholders:
// the outcome, the key and the version the decision used are strings
// there, as in the access log.
func TestAdvRefusalsChosenByExpression(t *testing.T) {
	store := newStore(map[string]string{"/doc": "v1"})
	startCaddy(t, fmtSite(`
	write_guard {
		refusals handle_errors
	}
	reverse_proxy %s
	handle_errors {
		@stale expression {http.write_guard.outcome} == "stale" && {http.write_guard.etag} != ""
		handle @stale {
			respond "stale {http.write_guard.key}" 412
		}
		@keyed expression {http.write_guard.key}.startsWith("*/")
		handle @keyed {
			respond "keyed {http.write_guard.outcome}" {http.error.status_code}
		}
		respond "unmatched" {http.error.status_code}
	}`, startBackend(t, store)))
	client := &http.Client{Timeout: 30 * time.Second}

	if r := do(t, client, "PUT", "/doc", "v2", `If-Match: "old"`); r.status != 412 || r.body != "stale */doc" {
		t.Errorf("stale write: %d %q", r.status, r.body)
	}
	if r := do(t, client, "PUT", "/doc", "v2"); r.status != 428 || r.body != "keyed blind" {
		t.Errorf("blind write: %d %q", r.status, r.body)
	}
	if got := mustBody(t, store, "/doc"); got != "v1" {
		t.Errorf("backend has %q", got)
	}
}
