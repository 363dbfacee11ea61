package writeguard

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/redisstore"
)

// StoreConfig says where the guard keeps its locks and the current version
// of each resource. In memory (the default) they are the process's own,
// which is right for one Caddy. With Redis, every Caddy instance that uses
// the same Redis and key prefix serializes its writes with the others and
// decides them on the version the last write left, whichever instance it
// went through; the in-process cache then only serves reads.
type StoreConfig struct {
	// Backend is "memory" or "redis". Default: "memory".
	Backend string `json:"backend,omitempty"`
	// Addresses of Redis (host:port): one server, the nodes of a Redis
	// Cluster, or the Sentinels when SentinelMaster is set.
	Addresses []string `json:"addresses,omitempty"`
	// SentinelMaster names the master that the Sentinels at Addresses
	// watch; Redis fails over to a replica without a configuration change.
	SentinelMaster string `json:"sentinel_master,omitempty"`
	// Username authenticates with Redis ACLs (Redis 6 and later); empty for
	// the default user. Placeholders such as {env.REDIS_USER} are replaced.
	Username string `json:"username,omitempty"`
	// Password authenticates with Redis (AUTH). Placeholders such as
	// {env.REDIS_PASSWORD} are replaced, so that it need not stand in the
	// config. Default: none.
	Password string `json:"password,omitempty"`
	// DB selects the logical database of a single server or Sentinel
	// setup; a Cluster has only database 0. Default: 0.
	DB int `json:"db,omitempty"`
	// TLS connects with TLS, verifying the server's certificate against the
	// system's roots (TLSServerName overrides the name checked).
	TLS bool `json:"tls,omitempty"`
	// TLSServerName is the name the server's certificate must carry, when
	// it is not the host of the address (connecting by IP address, say).
	TLSServerName string `json:"tls_server_name,omitempty"`
	// TLSInsecureSkipVerify accepts any certificate the server shows, for
	// tests only: anyone between Caddy and Redis could then take the locks.
	TLSInsecureSkipVerify bool `json:"tls_insecure_skip_verify,omitempty"`
	// KeyPrefix starts every Redis key the guard writes. Instances that
	// guard the same backend must use the same one. Default: "write_guard:".
	KeyPrefix string `json:"key_prefix,omitempty"`
	// LockTTL is how long a lock outlives an instance that holds it and
	// dies (or loses Redis): writes to that resource wait that long. While
	// the holder lives, it renews the lock every third of LockTTL for as
	// long as its write runs. Default: 10s.
	LockTTL caddy.Duration `json:"lock_ttl,omitempty"`
	// Timeout bounds connecting and each Redis command. Default: 1s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

func (s *StoreConfig) redis() bool { return s != nil && s.Backend == "redis" }

func (s *StoreConfig) validate() error {
	if s == nil {
		return nil
	}
	switch s.Backend {
	case "", "memory":
		if len(s.Addresses) > 0 || s.SentinelMaster != "" || s.Password != "" || s.TLS {
			return errors.New("store: Redis options given for store memory")
		}
		return nil
	case "redis":
	default:
		return fmt.Errorf("store: %q is not one of memory, redis", s.Backend)
	}
	if len(s.Addresses) == 0 {
		return errors.New("store redis: at least one address is required")
	}
	for _, a := range s.Addresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("store redis: address %q: %v", a, err)
		}
	}
	if s.DB < 0 {
		return errors.New("store redis: db must not be negative")
	}
	if s.DB != 0 && len(s.Addresses) > 1 && s.SentinelMaster == "" {
		return errors.New("store redis: db cannot be chosen on a Redis Cluster (several addresses)")
	}
	if strings.ContainsAny(s.KeyPrefix, "{}") {
		return fmt.Errorf("store redis: key_prefix %q contains a brace, which Redis Cluster reads as a hash tag", s.KeyPrefix)
	}
	if (s.TLSServerName != "" || s.TLSInsecureSkipVerify) && !s.TLS {
		return errors.New("store redis: tls_server_name and tls_insecure_skip_verify need tls")
	}
	if s.LockTTL != 0 && time.Duration(s.LockTTL) < 100*time.Millisecond {
		return fmt.Errorf("store redis: lock_ttl %v is too short to be renewed in time", time.Duration(s.LockTTL))
	}
	if s.Timeout < 0 {
		return errors.New("store redis: timeout must not be negative")
	}
	return nil
}

// sharedRedis is one Redis client, shared by every handler with the same
// settings.
type sharedRedis struct {
	*redisstore.Store
	unseen *unseenWrites
}

// Destruct stops what still tries to tell Redis of writes it did not see,
// and closes the client.
func (s sharedRedis) Destruct() error {
	s.unseen.stop()
	return s.Close()
}

// attachRedis returns the client for cfg; placeholders such as
// {env.REDIS_PASSWORD} in its fields are replaced first.
func attachRedis(cfg StoreConfig, versionTTL time.Duration) (sharedRedis, string, error) {
	repl := caddy.NewReplacer()
	// A copy: the configuration's own slice keeps its placeholders.
	cfg.Addresses = slices.Clone(cfg.Addresses)
	for i, a := range cfg.Addresses {
		cfg.Addresses[i] = repl.ReplaceKnown(a, "")
	}
	cfg.Username = repl.ReplaceKnown(cfg.Username, "")
	cfg.Password = repl.ReplaceKnown(cfg.Password, "")
	key := redisPoolKey(cfg, versionTTL)
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		rc := redisstore.Config{
			Addrs:      cfg.Addresses,
			MasterName: cfg.SentinelMaster,
			Username:   cfg.Username,
			Password:   cfg.Password,
			DB:         cfg.DB,
			KeyPrefix:  cfg.KeyPrefix,
			LockTTL:    time.Duration(cfg.LockTTL),
			VersionTTL: versionTTL,
			Timeout:    time.Duration(cfg.Timeout),
			OnCheck:    logDeployment(cfg),
		}
		if cfg.TLS {
			rc.TLS = &tls.Config{
				ServerName:         cfg.TLSServerName,
				InsecureSkipVerify: cfg.TLSInsecureSkipVerify,
				MinVersion:         tls.VersionTLS12,
			}
		}
		s, err := redisstore.New(rc)
		if err != nil {
			return nil, err
		}
		return sharedRedis{s, newUnseenWrites(s)}, nil
	})
	if err != nil {
		return sharedRedis{}, "", err
	}
	return v.(sharedRedis), key, nil
}

// logDeployment returns what logs each check of a Redis store's
// deployment: loudly when Redis may evict the guard's keys or will not
// say. No resource key is involved.
func logDeployment(cfg StoreConfig) func(redisstore.Deployment) {
	return func(d redisstore.Deployment) {
		logger := caddy.Log().Named("http.handlers.write_guard")
		prefix := cfg.KeyPrefix
		if prefix == "" {
			prefix = redisstore.DefaultKeyPrefix
		}
		fields := []zap.Field{zap.Strings("addresses", cfg.Addresses), zap.String("key_prefix", prefix), zap.Int("db", cfg.DB)}
		switch {
		case d.Evicts:
			logger.Error("Redis may evict write_guard's keys: it has a maxmemory and a maxmemory-policy other than noeviction (volatile-* policies evict the guard's keys too, since they all carry a TTL). "+
				"A write's lock evicted with the copy of its holder while the write runs lets a second write to the resource in at once, and an update can be lost. "+
				"Set maxmemory-policy noeviction, or give the guard a Redis of its own without maxmemory",
				append(fields, zap.String("maxmemory_policy", d.Policy), zap.Int64("maxmemory", d.MaxMemory))...)
		case !d.Known:
			logger.Warn("could not read Redis's maxmemory-policy, so whether it may evict write_guard's keys is unknown. "+
				"A write's lock evicted with the copy of its holder while the write runs lets a second write to the resource in at once, and an update can be lost. "+
				"Make sure the policy is noeviction, or that no maxmemory is set",
				append(fields, zap.String("error", d.Err))...)
		default:
			logger.Info("Redis keeps write_guard's keys until they expire (no eviction)",
				append(fields, zap.String("maxmemory_policy", d.Policy), zap.Int64("maxmemory", d.MaxMemory))...)
		}
	}
}

// redisReport is what the admin API shows of one Redis store: whether its
// deployment can keep the guard's locks, and how many it lost.
type redisReport struct {
	Addresses []string `json:"addresses"`
	KeyPrefix string   `json:"key_prefix"`
	DB        int      `json:"db,omitempty"`
	// Eviction is "impossible" (noeviction, or no maxmemory), "possible"
	// (Redis may evict the guard's keys: updates can be lost) or
	// "unknown" (CONFIG refused, or Redis not reached yet).
	Eviction        string     `json:"eviction"`
	MaxmemoryPolicy string     `json:"maxmemory_policy,omitempty"`
	Maxmemory       *int64     `json:"maxmemory,omitempty"`
	Error           string     `json:"error,omitempty"`
	Checked         *time.Time `json:"checked,omitempty"`
	// LocksVanished counts locks whose key vanished while a write held
	// them (evicted, flushed, deleted) and that another write may have
	// taken; LocksExpired those that expired unrenewed; LocksRestored lock
	// keys that vanished and were put back before anyone else took them.
	LocksVanished int64 `json:"locks_vanished"`
	LocksExpired  int64 `json:"locks_expired"`
	LocksRestored int64 `json:"locks_restored"`
}

// redisStoreReports lists every Redis store in use, in a stable order.
func redisStoreReports() []redisReport {
	reports := []redisReport{}
	pool.Range(func(_, value any) bool {
		s, ok := value.(sharedRedis)
		if !ok {
			return true
		}
		cfg, d := s.Config(), s.Deployment()
		r := redisReport{
			Addresses: cfg.Addrs, KeyPrefix: cfg.KeyPrefix, DB: cfg.DB,
			Eviction:      "unknown",
			Error:         d.Err,
			LocksVanished: d.LocksVanished, LocksExpired: d.LocksExpired, LocksRestored: d.LocksRestored,
		}
		if !d.Checked.IsZero() {
			checked := d.Checked.UTC()
			r.Checked = &checked
		}
		if d.Known {
			r.MaxmemoryPolicy, r.Maxmemory = d.Policy, &d.MaxMemory
			r.Eviction = "impossible"
		}
		if d.Evicts {
			r.MaxmemoryPolicy, r.Maxmemory = d.Policy, &d.MaxMemory
			r.Eviction = "possible"
		}
		reports = append(reports, r)
		return true
	})
	sort.Slice(reports, func(i, j int) bool {
		a, b := reports[i], reports[j]
		return fmt.Sprint(a.Addresses, a.DB, a.KeyPrefix) < fmt.Sprint(b.Addresses, b.DB, b.KeyPrefix)
	})
	return reports
}

// redisPoolKey tells apart clients of different settings. The pool's keys
// can be listed (the admin API walks the pool), so the password is in it
// only as a digest.
func redisPoolKey(cfg StoreConfig, versionTTL time.Duration) string {
	sum := sha256.Sum256([]byte(cfg.Password))
	cfg.Password = hex.EncodeToString(sum[:])
	raw, _ := json.Marshal(cfg)
	return fmt.Sprintf("write_guard.redis/%s/%s", raw, versionTTL)
}

// redisStore keeps locks and versions in Redis, shared by every instance
// with the same Redis and key prefix. The process's cache then only serves
// reads: what decides a write is what Redis holds.
type redisStore struct {
	h      *Handler
	redis  *redisstore.Store
	unseen *unseenWrites
}

// sharedLock is a write's part of the lock in Redis.
type sharedLock struct {
	lease *redisstore.Lease
	// degraded: Redis could not be reached, and with on_store_error local
	// the write is guarded by this process alone.
	degraded bool
}

func (s *redisStore) shared() *redisstore.Store { return s.redis }

func (s *redisStore) refusesSuperseded() bool { return false }

// storeCtx bounds the Redis calls that end a write: they must run even when
// the client has gone, since the lock and the version are everyone's.
func (s *redisStore) storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*s.redis.Config().Timeout)
}

// lock takes the resource's lock in Redis. With on_store_error local, an
// unreachable Redis leaves the write to the process alone (degraded).
func (s *redisStore) lock(wr *write, deadline time.Time) *refusal {
	h := s.h
	ctx, cancel := context.WithDeadline(wr.r.Context(), deadline)
	defer cancel()
	lease, err := s.redis.Lock(ctx, wr.key)
	if err == nil {
		wr.shared.lease = lease
		if s.unseen.down.CompareAndSwap(true, false) {
			h.logger.Info("Redis reachable again; writes are serialized across instances again")
		}
		if s.unseen.pending() {
			s.unseen.catchUp(lease, wr.key)
		}
		return nil
	}
	switch {
	case wr.r.Context().Err() != nil:
		return refuseClientGone(err)
	case ctx.Err() != nil:
		// The wait for the lock ran out. (A Redis command's own timeout
		// also reads as a deadline exceeded, but leaves ctx alive: that is
		// Redis failing to answer, not the resource being busy.)
		return refuseBusyShared(time.Duration(h.LockTimeout))
	}
	guardMetrics().storeErrors.Inc()
	// The change of state is worth a line; every write while Redis is away
	// is not, and keys can carry user data.
	first := s.unseen.down.CompareAndSwap(false, true)
	if h.OnStoreError == "local" {
		if first {
			h.logger.Warn("Redis unavailable; writes are guarded by this process alone until it answers (on_store_error local)", zap.Error(err))
		} else if c := h.logger.Check(zapcore.DebugLevel, "Redis unavailable; guarding this write in this process alone"); c != nil {
			c.Write(zap.String("key", wr.key), zap.Error(err))
		}
		wr.shared.degraded = true
		return nil
	}
	if first {
		h.logger.Error("Redis unavailable; writes are refused with 503 until it answers (on_store_error fail)", zap.Error(err))
	} else if c := h.logger.Check(zapcore.DebugLevel, "Redis unavailable; write refused"); c != nil {
		c.Write(zap.String("key", wr.key), zap.Error(err))
	}
	return refuseStoreUnavailable()
}

// found is the version Redis handed over with the lock. A degraded write
// has none: other instances write too, and this process's cache does not
// see their writes.
func (s *redisStore) found(wr *write) (etagcache.Version, bool) {
	if wr.shared.lease == nil {
		return etagcache.Version{}, false
	}
	return wr.shared.lease.Found()
}

func (s *redisStore) commit(wr *write, made *etagcache.Version) {
	if wr.shared.degraded {
		s.unseen.add(s.h.logger, wr.key)
	}
	s.end(wr, true, made)
}

// release puts back the version the write was checked against, when it
// knew one, for the next writer.
func (s *redisStore) release(wr *write) {
	var current *etagcache.Version
	if wr.checkedKnown {
		current = &wr.checked
	}
	s.end(wr, false, current)
}

// unseenWrites lists the resources written while Redis could not be
// reached (on_store_error local): Redis may still hold the versions those
// writes replaced, and must forget them before any instance trusts them
// again. One list belongs to each Redis client, and what keeps offering it
// to Redis stops when the client is closed.
type unseenWrites struct {
	store    *redisstore.Store
	mu       sync.Mutex
	keys     map[string]struct{}
	overflow bool
	any      atomic.Bool
	retrying bool
	// down: the last attempt to take a lock found Redis unreachable.
	down     atomic.Bool
	logger   *zap.Logger
	done     chan struct{}
	stopOnce sync.Once
}

func newUnseenWrites(s *redisstore.Store) *unseenWrites {
	return &unseenWrites{store: s, logger: zap.NewNop(), done: make(chan struct{})}
}

// maxUnseen bounds the list; past it, what Redis holds is trusted again once
// cache_ttl has passed (versions expire), and an error says so.
const maxUnseen = 10_000

// add notes a write Redis did not see, and makes sure something keeps
// trying to tell Redis until it listens.
func (u *unseenWrites) add(logger *zap.Logger, key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.keys == nil {
		u.keys = map[string]struct{}{}
	}
	if len(u.keys) < maxUnseen {
		u.keys[key] = struct{}{}
	} else {
		u.overflow = true
	}
	u.logger = logger
	u.any.Store(true)
	if !u.retrying {
		u.retrying = true
		go u.retry()
	}
}

func (u *unseenWrites) pending() bool { return u.any.Load() }

func (u *unseenWrites) stop() { u.stopOnce.Do(func() { close(u.done) }) }

// unseenRetry is how often the versions of writes Redis did not see are
// offered to it again: other instances trust what Redis holds, so the
// window after Redis comes back, in which they could accept a write naming
// a version replaced meanwhile, lasts about this long.
const unseenRetry = 250 * time.Millisecond

// retry offers the list to Redis until it takes it or the client is closed.
func (u *unseenWrites) retry() {
	for {
		select {
		case <-u.done:
			return
		case <-time.After(unseenRetry):
		}
		if u.catchUp(nil, "") {
			return
		}
	}
}

// catchUp makes Redis forget the versions of the writes it did not see,
// and reports whether it did (or nothing was left to forget). If key is
// one of them, lease must not trust the version it found.
func (u *unseenWrites) catchUp(lease *redisstore.Lease, key string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.keys) == 0 && !u.overflow {
		u.retrying = false
		return true
	}
	if _, ok := u.keys[key]; ok && lease != nil {
		lease.Distrust()
	}
	keys := make([]string, 0, len(u.keys))
	for k := range u.keys {
		keys = append(keys, k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*u.store.Config().Timeout)
	defer cancel()
	if err := u.store.ForgetAll(ctx, keys); err != nil {
		if c := u.logger.Check(zapcore.DebugLevel, "could not yet make Redis forget the versions written while it was unreachable"); c != nil {
			c.Write(zap.Int("resources", len(keys)), zap.Error(err))
		}
		return false
	}
	if u.overflow {
		if c := u.logger.Check(zapcore.ErrorLevel, "more resources were written while Redis was unreachable than could be remembered; Redis may hold stale versions of some until cache_ttl passes"); c != nil {
			c.Write(zap.Int("remembered", maxUnseen))
		}
	}
	u.keys, u.overflow, u.retrying = nil, false, false
	u.any.Store(false)
	if c := u.logger.Check(zapcore.InfoLevel, "Redis reachable again; forgot the versions of the resources written without it"); c != nil {
		c.Write(zap.Int("resources", len(keys)))
	}
	return true
}

// end releases the Redis lock: record says a write was forwarded, and v is
// the version it made (nil if unknown); otherwise v is the current version
// as the write found it, put back for the next one.
func (s *redisStore) end(wr *write, record bool, v *etagcache.Version) {
	lease := wr.shared.lease
	if lease == nil {
		return
	}
	h := s.h
	ctx, cancel := s.storeCtx()
	defer cancel()
	var err error
	if record {
		err = lease.Record(ctx, v)
	} else {
		err = lease.Restore(ctx, v)
	}
	switch {
	case err == nil:
		if lease.Restored() {
			if c := h.logger.Check(zapcore.WarnLevel, "Redis dropped the key of a lock while a write held it (evicted or deleted); it was put back before another instance could take the lock, so nothing was lost. "+
				"Give the guard a Redis with maxmemory-policy noeviction (or no maxmemory), used by nothing else"); c != nil {
				c.Write(zap.String("key", wr.key))
			}
		}
		return
	case errors.Is(err, redisstore.ErrLockLost):
		s.lockLost(wr.key, err)
		return
	}
	if c := h.logger.Check(zapcore.WarnLevel, "could not release a Redis lock; it expires by itself"); c != nil {
		c.Write(zap.String("key", wr.key), zap.Error(err))
	}
	if lease.Lost() {
		// Renewals had found the lock lost, and Redis has not heard of it
		// since: the resource may have been written twice at once.
		s.distrust(wr.key, s.untrustedFor())
	}
}

// lockLost reports a write whose Redis lock was gone, or someone else's,
// when it ended. Another instance may then have taken the lock and written
// the resource while this write ran: one of the two updates may be lost,
// and nothing recorded about the resource's version around them can be
// trusted. The store has marked the resource untrusted already; the mark
// is made to last untrustedFor.
func (s *redisStore) lockLost(key string, err error) {
	h := s.h
	d := s.untrustedFor()
	if d > s.redis.Config().UntrustTTL {
		s.distrust(key, d)
	}
	msg := "Redis lock expired while the write held it: it was not renewed within lock_ttl (Redis unreachable or slow from this instance, or this process stalled). " +
		"Another instance may have written the resource at the same time and an update may be lost; every instance asks the upstream for this resource's version until the mark expires. " +
		"Check the network to Redis and its latency, or raise lock_ttl"
	if errors.Is(err, redisstore.ErrLockVanished) {
		msg = "Redis lost the lock of a write in progress: its key vanished before its TTL ran out (evicted, flushed, or deleted). " +
			"Another instance may have written the resource at the same time and an update may be lost; every instance asks the upstream for this resource's version until the mark expires. " +
			"Give the guard a Redis with maxmemory-policy noeviction (or no maxmemory), used by nothing else, on which nobody runs FLUSHALL or FLUSHDB"
	}
	if c := h.logger.Check(zapcore.ErrorLevel, msg); c != nil {
		c.Write(zap.String("key", key), zap.Duration("untrusted_for", d), zap.Error(err))
	}
}

// untrustedFor is how long a resource stays untrusted after its lock was
// lost: cache_ttl, as long as a version recorded before the loss could
// have been trusted, or write_timeout plus lock_ttl if that is longer.
// Every write that could have overlapped the lost one was checked before
// the holder noticed (at its next renewal, within lock_ttl/3 of the loss,
// or at its release) and gets the upstream's answer within write_timeout:
// all of them have ended before a version is trusted again.
func (s *redisStore) untrustedFor() time.Duration {
	return max(time.Duration(s.h.CacheTTL), time.Duration(s.h.WriteTimeout)+s.redis.Config().LockTTL)
}

// distrust makes every instance ask the upstream for the resource's
// version before each write to it, for d: after a write whose outcome may
// land when versions recorded around it no longer tell the truth (its lock
// was lost, or the upstream may still apply it after the guard stopped
// waiting). If Redis cannot be told, it is made to forget the version once
// it answers again.
func (s *redisStore) distrust(key string, d time.Duration) {
	ctx, cancel := s.storeCtx()
	defer cancel()
	if err := s.redis.Distrust(ctx, key, d); err != nil {
		guardMetrics().storeErrors.Inc()
		if c := s.h.logger.Check(zapcore.WarnLevel, "could not mark a resource untrusted in Redis; its version is forgotten once Redis answers"); c != nil {
			c.Write(zap.String("key", key), zap.Error(err))
		}
		s.unseen.add(s.h.logger, key)
	}
}

// forget makes the resource's version unknown in Redis, for writes that
// are not serialized.
func (s *redisStore) forget(key string) {
	ctx, cancel := s.storeCtx()
	defer cancel()
	if err := s.redis.Forget(ctx, key); err != nil {
		guardMetrics().storeErrors.Inc()
		if c := s.h.logger.Check(zapcore.WarnLevel, "could not forget a version in Redis"); c != nil {
			c.Write(zap.String("key", key), zap.Error(err))
		}
	}
}
