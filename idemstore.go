package writeguard

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/writeguard/caddy-writeguard/idempotency"
)

// Where the records of requests with an Idempotency-Key live follows the
// handler's store: in this process (a Memory, shared through the pool by
// every handler with the same bound, so that a reload keeps the records),
// or in Redis, shared by every instance, through the client the locks
// use. When Redis cannot be reached, on_store_error decides as it does for
// locks: fail refuses keyed requests with 503 (the step answers the
// store's error so), local keeps their records in this process's Memory
// meanwhile, which protects retries through this instance only.

// pooledIdemMemory is a Memory in the pool.
type pooledIdemMemory struct{ *idempotency.Memory }

func (pooledIdemMemory) Destruct() error { return nil }

// attachIdempotencyMemory returns the process's Memory, bounded by
// maxMemory from now on. There is one for the process whatever the bound:
// a reload that changes max_memory must keep the records, finished and in
// flight, or a retry through the new configuration would be applied again.
// With handlers of different bounds, the last one provisioned sets it.
func attachIdempotencyMemory(maxMemory int64) (*idempotency.Memory, string, error) {
	const key = "write_guard.idempotency/memory"
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledIdemMemory{idempotency.NewMemory(idempotency.MemoryConfig{MaxBytes: maxMemory, OnEvict: countIdemEviction})}, nil
	})
	if err != nil {
		return nil, "", err
	}
	m := v.(pooledIdemMemory).Memory
	m.SetMaxBytes(maxMemory)
	return m, key, nil
}

// attachIdempotencyStore chooses the records' store for h, whose own store
// is provisioned already, and returns the pool keys it took.
func attachIdempotencyStore(h *Handler, maxMemory int64, claimTTL time.Duration) (idempotency.Store, []string, error) {
	local, key, err := attachIdempotencyMemory(maxMemory)
	if err != nil {
		return nil, nil, err
	}
	shared := h.store.shared()
	if shared == nil {
		return local, []string{key}, nil
	}
	s := &idemFailover{redis: shared.Idempotency(claimTTL), logger: h.logger}
	if h.OnStoreError == "local" {
		s.local = local
	}
	return s, []string{key}, nil
}

// idemFailover keeps records in Redis and, with on_store_error local, in
// this process while Redis fails.
type idemFailover struct {
	redis idempotency.Store
	local *idempotency.Memory // nil: on_store_error fail
	// down: the last call found Redis unreachable.
	down   atomic.Bool
	logger *zap.Logger
}

// failed notes a Redis failure, and says whether to go on locally.
func (s *idemFailover) failed(err error) bool {
	guardMetrics().storeErrors.Inc()
	if s.down.CompareAndSwap(false, true) {
		if s.local != nil {
			s.logger.Warn("Redis unavailable; the records of requests with an Idempotency-Key are kept in this process until it answers (on_store_error local): retries through other instances may be applied again", zap.Error(err))
		} else {
			s.logger.Error("Redis unavailable; requests with an Idempotency-Key are refused with 503 until it answers (on_store_error fail)", zap.Error(err))
		}
	}
	return s.local != nil
}

func (s *idemFailover) ok() {
	if s.down.CompareAndSwap(true, false) {
		s.logger.Info("Redis reachable again; the records of requests with an Idempotency-Key are shared again")
	}
}

func (s *idemFailover) Claim(ctx context.Context, id string, fp idempotency.Fingerprint) (idempotency.Ticket, idempotency.Record, error) {
	t, rec, err := s.redis.Claim(ctx, id, fp)
	if err == nil {
		s.ok()
		return t, rec, nil
	}
	if ctx.Err() != nil || !s.failed(err) {
		return nil, idempotency.Record{}, err
	}
	return s.local.Claim(ctx, id, fp)
}

func (s *idemFailover) Wait(ctx context.Context, id string) error {
	err := s.redis.Wait(ctx, id)
	if err != nil && ctx.Err() == nil && s.failed(err) {
		return s.local.Wait(ctx, id)
	}
	return err
}

func (s *idemFailover) Lookup(ctx context.Context, id string) (idempotency.Record, error) {
	rec, err := s.redis.Lookup(ctx, id)
	if err != nil || rec.State != idempotency.Absent || s.local == nil {
		return rec, err
	}
	return s.local.Lookup(ctx, id)
}

func (s *idemFailover) Forget(ctx context.Context, id string) (bool, error) {
	forgot := false
	if s.local != nil {
		forgot, _ = s.local.Forget(ctx, id)
	}
	ok, err := s.redis.Forget(ctx, id)
	return forgot || ok, err
}
