package writeguard

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/writeguard/caddy-writeguard/idempotency"
)

// Where the records of requests with an Idempotency-Key live follows the
// handler's store: in this process (a Memory, shared through the pool by
// every handler with the same bound, so that a reload keeps the records),
// or in Redis.

// pooledIdemMemory is a Memory in the pool.
type pooledIdemMemory struct{ *idempotency.Memory }

func (pooledIdemMemory) Destruct() error { return nil }

// attachIdempotencyMemory returns the process's Memory of bound maxMemory.
func attachIdempotencyMemory(maxMemory int64) (*idempotency.Memory, string, error) {
	key := fmt.Sprintf("write_guard.idempotency/memory/%d", maxMemory)
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledIdemMemory{idempotency.NewMemory(idempotency.MemoryConfig{MaxBytes: maxMemory})}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(pooledIdemMemory).Memory, key, nil
}

// attachIdempotencyStore chooses the records' store for h.
func attachIdempotencyStore(h *Handler, maxMemory int64, claimTTL time.Duration) (idempotency.Store, string, error) {
	return attachIdempotencyMemory(maxMemory)
}
