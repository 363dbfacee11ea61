package writeguard

import (
	"context"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/idempotency"
)

// A reload that changes max_memory provisions the new handler before the
// old one is cleaned up: the records, finished and in flight, must be the
// same, or a retry through the new configuration is applied again.
func TestAdv14ReloadChangingMaxMemoryKeepsRecords(t *testing.T) {
	old, oldKey, err := attachIdempotencyMemory(10 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Delete(oldKey)
	ctx := context.Background()
	var fp idempotency.Fingerprint
	ticket, _, err := old.Claim(ctx, "adv14-reload", fp)
	if err != nil || ticket == nil {
		t.Fatalf("claim: %v %v", ticket, err)
	}
	if err := ticket.Finish(ctx, idempotency.Finished, &idempotency.Answer{Status: 201}, time.Hour); err != nil {
		t.Fatal(err)
	}

	reloaded, newKey, err := attachIdempotencyMemory(20 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Delete(newKey)
	rec, err := reloaded.Lookup(ctx, "adv14-reload")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != idempotency.Finished {
		t.Fatalf("after a reload with another max_memory the record is %v, want finished: the retry would be applied again", rec.State)
	}
	if got := reloaded.Stats().MaxBytes; got != 20<<20 {
		t.Errorf("bound after the reload: %d, want the new one", got)
	}
}
