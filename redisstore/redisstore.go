// Package redisstore keeps write_guard's per-resource locks and current
// versions in Redis, so that several Caddy instances in front of one
// backend serialize their writes to a resource and see each other's writes.
//
// A lock is a key set with SET NX PX to a random token, renewed while its
// holder's write runs and deleted by a script that checks the token. A
// resource's version lives in a hash beside its lock, with a generation
// that every completed write increments. Whoever takes the lock takes the
// version out of the hash in the same script, so that a holder that dies,
// or loses Redis, before it learns its write's outcome leaves the version
// unknown (the next writer asks the upstream), never stale. Releasing puts a
// version back: the one found, when no write was forwarded, or the one the
// write made. Lock and hash share a Redis Cluster hash slot, so each of
// these steps is one atomic script.
//
// A lock is only as good as Redis's keeping of its key. The hash also holds
// a copy of the lock's token and expiry, so that a lock key that vanishes
// alone while its holder's write runs (as an eviction under maxmemory
// drops one key at a time) is put back, by whoever tries to take the lock
// or by the holder. When both vanish (FLUSHALL or FLUSHDB, both evicted, a
// failover to a replica that had neither), another instance can take the
// lock at once and write the same resource: nothing left in Redis can tell
// it otherwise. The holder learns of it at its next renewal or at release,
// whichever comes first, and then marks the resource untrusted: a third
// key in the same slot, with a TTL of its own, while which no version is
// found with the lock or stored at release, so that every instance asks
// the upstream. Deployment reports whether the Redis deployment can evict
// the store's keys at all.
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// Defaults for Config's zero fields.
const (
	DefaultKeyPrefix  = "write_guard:"
	DefaultLockTTL    = 10 * time.Second
	DefaultVersionTTL = 10 * time.Minute
	DefaultTimeout    = time.Second
)

// Config says how to reach Redis and how to lay out the guard's keys.
type Config struct {
	// Addrs is one host:port for a single server, several for a Redis
	// Cluster, or the Sentinels' addresses when MasterName is set.
	Addrs      []string
	MasterName string
	Username   string
	Password   string
	DB         int
	// TLS, when not nil, is used for every connection.
	TLS *tls.Config
	// KeyPrefix starts every key the store writes. It must not contain
	// braces, which Redis Cluster reads as a hash tag.
	KeyPrefix string
	// LockTTL is how long a lock outlives a holder that stopped renewing it
	// (a crashed instance, or one cut off from Redis).
	LockTTL time.Duration
	// VersionTTL is how long a version is kept after it was last written.
	VersionTTL time.Duration
	// UntrustTTL is how long a resource stays untrusted after its lock was
	// lost while held (see Distrust). Default: VersionTTL, how long any
	// version recorded before the loss could otherwise have been trusted.
	UntrustTTL time.Duration
	// Timeout bounds dialling and each command, so that writes fail fast
	// when Redis is unreachable.
	Timeout time.Duration
	// OnCheck, when set, is called with the outcome of every check of the
	// deployment that Redis answered (see Deployment), from the goroutine
	// that checked.
	OnCheck func(Deployment)
}

func (c *Config) fill() error {
	if len(c.Addrs) == 0 {
		return errors.New("redisstore: no address")
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if strings.ContainsAny(c.KeyPrefix, "{}") {
		return fmt.Errorf("redisstore: key prefix %q contains a brace", c.KeyPrefix)
	}
	if c.LockTTL == 0 {
		c.LockTTL = DefaultLockTTL
	}
	if c.LockTTL < 100*time.Millisecond {
		return fmt.Errorf("redisstore: lock TTL %v is too short to be renewed in time", c.LockTTL)
	}
	if c.VersionTTL == 0 {
		c.VersionTTL = DefaultVersionTTL
	}
	if c.UntrustTTL == 0 {
		c.UntrustTTL = c.VersionTTL
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return nil
}

// Store is a connection to Redis. It is safe for concurrent use.
type Store struct {
	rdb redis.UniversalClient
	cfg Config
	// In milliseconds, as the scripts take them.
	lockTTL, versionTTL, untrustTTL string
	// What the last check of the deployment found, and the checks' state
	// (deployment.go).
	checks checker
	// Locks lost while held, by cause, and lock keys put back after they
	// vanished, since the store was created.
	vanished, expired, restored atomic.Int64
}

// New connects lazily: it fails only on a bad configuration, and Redis
// being down shows in the first command. It starts checking the
// deployment (see Deployment) in the background.
func New(cfg Config) (*Store, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	opts := &redis.UniversalOptions{
		Addrs:        cfg.Addrs,
		MasterName:   cfg.MasterName,
		Username:     cfg.Username,
		Password:     cfg.Password,
		DB:           cfg.DB,
		TLSConfig:    cfg.TLS,
		DialTimeout:  cfg.Timeout,
		ReadTimeout:  cfg.Timeout,
		WriteTimeout: cfg.Timeout,
		// A failed command is answered at once: the guard decides what a
		// failure means, and a retry would only hold the client longer.
		MaxRetries: -1,
		// Redis before 8 answers the handshake of this optional feature
		// with an error that the client would log on every connection.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	s := &Store{
		rdb:        redis.NewUniversalClient(opts),
		cfg:        cfg,
		lockTTL:    strconv.FormatInt(cfg.LockTTL.Milliseconds(), 10),
		versionTTL: strconv.FormatInt(cfg.VersionTTL.Milliseconds(), 10),
		untrustTTL: strconv.FormatInt(cfg.UntrustTTL.Milliseconds(), 10),
	}
	s.checks.init(s)
	return s, nil
}

// Config returns the configuration with defaults filled in.
func (s *Store) Config() Config { return s.cfg }

// Close stops the background checks and closes the connections.
func (s *Store) Close() error {
	s.checks.close()
	return s.rdb.Close()
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

// keys returns the lock, version and untrusted keys of key. The braces make
// them hash to the same Cluster slot.
func (s *Store) keys(key string) []string {
	tag := "{" + key + "}"
	return []string{s.cfg.KeyPrefix + "lock:" + tag, s.cfg.KeyPrefix + "ver:" + tag, s.cfg.KeyPrefix + "untrusted:" + tag}
}

// Version fields in the hash: x (exists: "1" or "0", then "g" for the
// guard's own tag, "c" for a crowded date, "r" for reused upstream tags, "a" for a tag taken from a write's answer, "p" when m is the replaced version's date), e (entity-tag), m
// (Last-Modified, Unix seconds, "" if unknown), s (superseded tags, one per
// line), g (generation). x, e, m and s are present together or not at all.
// While the lock is held, h and hx copy its token and expiry (Redis's
// clock, in milliseconds): a lock key that vanishes alone, as an eviction
// can make it, is put back rather than taken by another holder.
//
// KEYS of every script: lock, version, untrusted (see keys).

// prelude holds the Lua that several scripts share.
const prelude = `
if redis.replicate_commands then redis.replicate_commands() end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- hold copies the lock's token and expiry into the version hash.
local function hold(token, ttl, verTTL)
  redis.call('HSET', KEYS[2], 'h', token, 'hx', now() + tonumber(ttl))
  redis.call('PEXPIRE', KEYS[2], verTTL)
end

-- mine reports whether token holds the lock: its key says so, or the key
-- is gone and the copy still names token, in which case nobody else can
-- have taken it since (whoever tried would have found the copy and put
-- the key back) and it is put back.
local function mine(token, ttl)
  local cur = redis.call('GET', KEYS[1])
  if cur then
    return cur == token, false
  end
  if redis.call('HGET', KEYS[2], 'h') ~= token then
    return false, false
  end
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return true, true
end

-- untrust marks the resource untrusted for ttl milliseconds (never
-- shortening a mark already there) and makes its version unknown: no
-- version recorded before now may be trusted, and the generation tells a
-- holder that found one not to put it back.
local function untrust(ttl, verTTL)
  redis.call('HDEL', KEYS[2], 'x', 'e', 'm', 's')
  redis.call('HINCRBY', KEYS[2], 'g', 1)
  redis.call('PEXPIRE', KEYS[2], verTTL)
  if redis.call('PTTL', KEYS[3]) < tonumber(ttl) then
    redis.call('SET', KEYS[3], '1', 'PX', ttl)
  end
end
`

// acquire takes the lock if it is free, and the version with it, unless the
// resource is untrusted. ARGV: token, lock ttl, version ttl. It returns 1,
// x, e, m, s, g, untrusted; or 0, the lock's remaining TTL, and 1 if the
// lock's key had vanished under a live holder and was put back.
var acquire = redis.NewScript(prelude + `
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1]), 0}
end
local h = redis.call('HMGET', KEYS[2], 'h', 'hx')
if h[1] and h[1] ~= ARGV[1] then
  local left = tonumber(h[2] or '0') - now()
  if left > 0 then
    redis.call('SET', KEYS[1], h[1], 'PX', left)
    return {0, left, 1}
  end
end
hold(ARGV[1], ARGV[2], ARGV[3])
local v = redis.call('HMGET', KEYS[2], 'x', 'e', 'm', 's', 'g')
redis.call('HDEL', KEYS[2], 'x', 'e', 'm', 's')
local untrusted = redis.call('EXISTS', KEYS[3])
if untrusted == 1 then
  v[1] = false
end
return {1, v[1], v[2], v[3], v[4], v[5], untrusted}
`)

// renew extends the lock if the caller still holds it. ARGV: token, lock
// ttl, version ttl, untrust ttl. It returns 1, or 2 if the lock's key had
// vanished and was put back; 0 if the lock is gone or someone else's,
// which makes the resource untrusted: another write may have overlapped
// the caller's.
var renew = redis.NewScript(prelude + `
local held, restored = mine(ARGV[1], ARGV[2])
if not held then
  untrust(ARGV[4], ARGV[3])
  return 0
end
-- PEXPIRE first: a Redis out of memory (noeviction) refuses HSET in a
-- script only until the script has written.
redis.call('PEXPIRE', KEYS[1], ARGV[2])
hold(ARGV[1], ARGV[2], ARGV[3])
if restored then
  return 2
end
return 1
`)

// release ends a hold. ARGV: token, mode, version ttl, generation found,
// x e m s, untrust ttl, lock ttl. Mode "record": a write completed and
// made this version ("" x: nobody knows which); "restore": no write was
// forwarded, put back the version found (if the generation shows nobody
// wrote meanwhile). Nothing is put back while the resource is untrusted.
// It returns 1, or 2 if the lock's key had vanished (and nobody had taken
// it); 0 if the lock was lost.
var release = redis.NewScript(prelude + `
local held, restored = mine(ARGV[1], ARGV[10])
if ARGV[2] == 'record' then
  redis.call('HINCRBY', KEYS[2], 'g', 1)
end
if not held then
  -- The lock vanished or expired and may be someone else's: what this
  -- holder knows may be stale, and what another holder records may be
  -- too, since their writes may have overlapped.
  untrust(ARGV[9], ARGV[3])
  return 0
end
local put = ARGV[5] ~= '' and redis.call('EXISTS', KEYS[3]) == 0
if ARGV[2] == 'restore' and (redis.call('HGET', KEYS[2], 'g') or '') ~= ARGV[4] then
  put = false
end
if put then
  redis.call('HSET', KEYS[2], 'x', ARGV[5], 'e', ARGV[6], 'm', ARGV[7], 's', ARGV[8])
end
redis.call('HDEL', KEYS[2], 'h', 'hx')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
if restored then
  return 2
end
return 1
`)

// forget makes a version unknown without the lock.
var forget = redis.NewScript(`
redis.call('HDEL', KEYS[2], 'x', 'e', 'm', 's')
redis.call('HINCRBY', KEYS[2], 'g', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
`)

// distrust marks a resource untrusted without the lock. ARGV: version ttl,
// untrust ttl.
var distrust = redis.NewScript(prelude + `
untrust(ARGV[2], ARGV[1])
return 1
`)

// Loss says why a lease lost its lock.
type Loss int32

const (
	// NotLost: the lease holds its lock, or released it in time.
	NotLost Loss = iota
	// LostVanished: the lock's key was gone, or someone else's, before its
	// TTL could have run out: Redis evicted it (maxmemory-policy), a
	// FLUSHALL, FLUSHDB or DEL removed it, or a failover lost it.
	LostVanished
	// LostExpired: the lock was not renewed within its TTL, because
	// renewals failed (Redis unreachable or slow from this instance) or
	// came late (this process stalled), and it expired.
	LostExpired
)

// ErrLockLost: the lock was gone or someone else's when its holder
// released it. The error is ErrLockVanished or ErrLockExpired, which say
// why.
var ErrLockLost = errors.New("redisstore: the lock was lost while held")

var (
	ErrLockVanished = fmt.Errorf("%w: its key vanished before its TTL ran out (evicted, flushed or deleted)", ErrLockLost)
	ErrLockExpired  = fmt.Errorf("%w: it was not renewed within its TTL and expired", ErrLockLost)
)

// A Lease is a held lock.
type Lease struct {
	s         *Store
	keys      []string
	token     string
	gen       string // the generation found when the lock was taken
	found     etagcache.Version
	known     bool
	untrusted bool
	// validUntil is the earliest moment the lock can expire by itself: a
	// TTL after the last acquire or renewal that Redis confirmed was sent.
	// Only the renewal goroutine writes it until done is closed.
	validUntil time.Time
	lost       atomic.Int32 // a Loss
	// restored: the lock's key vanished while held and was put back before
	// anyone else took it.
	restored atomic.Bool
	stop     chan struct{}
	done     chan struct{}
	finish   sync.Once
}

// Lock waits until it holds key's lock, ctx ends (ctx.Err()), or Redis
// fails (another error). Waiting backs off from 2 ms to 100 ms between
// attempts, never past the moment the lock expires.
func (s *Store) Lock(ctx context.Context, key string) (*Lease, error) {
	var raw [16]byte
	rand.Read(raw[:])
	l := &Lease{s: s, keys: s.keys(key), token: hex.EncodeToString(raw[:])}
	backoff := 2 * time.Millisecond
	for {
		sent := time.Now()
		res, err := acquire.Run(ctx, s.rdb, l.keys, l.token, s.lockTTL, s.versionTTL).Slice()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		if len(res) > 0 && res[0] == int64(1) {
			l.found, l.known = parseVersion(res[1:5])
			if g, ok := res[5].(string); ok {
				l.gen = g
			}
			l.untrusted = res[6] == int64(1)
			l.validUntil = sent.Add(s.cfg.LockTTL)
			l.stop, l.done = make(chan struct{}), make(chan struct{})
			go l.renew()
			return l, nil
		}
		if len(res) > 2 && res[2] == int64(1) {
			s.restored.Add(1)
		}
		wait := backoff/2 + time.Duration(mathrand.Int64N(int64(backoff)))
		if len(res) > 1 {
			if pttl, ok := res[1].(int64); ok && pttl > 0 {
				wait = min(wait, time.Duration(pttl)*time.Millisecond+time.Millisecond)
			}
		}
		backoff = min(2*backoff, 100*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// renew extends the lock every third of its TTL until the lease ends, or
// Redis says the lock is gone or someone else's (which also makes the
// resource untrusted, in the same script).
func (l *Lease) renew() {
	defer close(l.done)
	period := l.s.cfg.LockTTL / 3
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), period)
		n, err := renew.Run(ctx, l.s.rdb, l.keys, l.token, l.s.lockTTL, l.s.versionTTL, l.s.untrustTTL).Int()
		cancel()
		switch {
		case err == nil && n == 0:
			l.lose(time.Now())
			return
		case err == nil:
			if n == 2 {
				l.restore()
			}
			l.validUntil = sent.Add(l.s.cfg.LockTTL)
		case !time.Now().Before(l.validUntil):
			// Unrenewed for a whole TTL: the lock has expired by now.
			l.lose(time.Now())
			return
		}
	}
}

// lose records that the lock was found lost at now (once): vanished if its
// TTL cannot have run out yet, expired otherwise. The margin keeps a
// slightly fast Redis clock from turning an expiry into a vanishing.
func (l *Lease) lose(now time.Time) {
	cause, counter := LostExpired, &l.s.expired
	if now.Add(l.s.cfg.LockTTL / 50).Before(l.validUntil) {
		cause, counter = LostVanished, &l.s.vanished
	}
	if l.lost.CompareAndSwap(int32(NotLost), int32(cause)) {
		counter.Add(1)
	}
}

// restore notes that the lock's key had vanished and was put back.
func (l *Lease) restore() {
	if l.restored.CompareAndSwap(false, true) {
		l.s.restored.Add(1)
	}
}

// Distrust drops the version found with the lock: the holder knows of a
// write Redis has not seen.
func (l *Lease) Distrust() { l.found, l.known = etagcache.Version{}, false }

// ForgetAll makes the versions of keys unknown, in one round trip.
func (s *Store) ForgetAll(ctx context.Context, keys []string) error {
	pipe := s.rdb.Pipeline()
	for _, k := range keys {
		// Eval, not Run: a pipeline cannot fall back from EVALSHA when the
		// script is not loaded, as on a Redis that has just restarted.
		forget.Eval(ctx, pipe, s.keys(k), s.versionTTL)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Found returns the version Redis held when the lock was taken, if any.
// An untrusted resource has none.
func (l *Lease) Found() (etagcache.Version, bool) { return l.found, l.known }

// Untrusted reports whether the resource was marked untrusted when the
// lock was taken.
func (l *Lease) Untrusted() bool { return l.untrusted }

// Lost reports whether the lock was lost while held (renewal or release
// found another token, or none): writes made since may overlap another
// holder's.
func (l *Lease) Lost() bool { return l.Cause() != NotLost }

// Restored reports whether the lock's key vanished while held (evicted,
// deleted) and was put back before another holder took it: nothing was
// lost, but Redis dropped a key it should have kept.
func (l *Lease) Restored() bool { return l.restored.Load() }

// Cause says why the lock was lost, NotLost if it was not (as far as the
// lease knows yet).
func (l *Lease) Cause() Loss { return Loss(l.lost.Load()) }

// Record releases the lock after a forwarded write: v is the version it
// made, nil if unknown. The generation is incremented either way.
func (l *Lease) Record(ctx context.Context, v *etagcache.Version) error {
	return l.end(ctx, "record", v)
}

// Restore releases the lock when no write was forwarded: v is the current
// version as the holder knows it (found, or asked of the upstream), nil if
// unknown. It is put back unless a write without the lock made the
// resource's version unknown meanwhile.
func (l *Lease) Restore(ctx context.Context, v *etagcache.Version) error {
	return l.end(ctx, "restore", v)
}

// end releases the lock; a lock found lost makes the resource untrusted
// and returns ErrLockVanished or ErrLockExpired.
func (l *Lease) end(ctx context.Context, mode string, v *etagcache.Version) error {
	err := errors.New("redisstore: lease already released")
	l.finish.Do(func() {
		close(l.stop)
		<-l.done
		args := []any{l.token, mode, l.s.versionTTL, l.gen}
		args = append(args, formatVersion(v)...)
		args = append(args, l.s.untrustTTL, l.s.lockTTL)
		var n int
		n, err = release.Run(ctx, l.s.rdb, l.keys, args...).Int()
		if n == 2 {
			l.restore()
		}
		if err == nil && n == 0 {
			l.lose(time.Now())
			err = ErrLockExpired
			if l.Cause() == LostVanished {
				err = ErrLockVanished
			}
		}
	})
	return err
}

// Distrust marks key untrusted for d (or keeps a longer mark already
// there) and makes its version unknown: until the mark expires, Lock finds
// no version for it and releasing stores none, so that every instance asks
// the upstream for the version before each write. It is for events after
// which no version recorded around them can be relied on: a write whose
// lock was lost, one the upstream may still apply after the guard gave up
// on it.
func (s *Store) Distrust(ctx context.Context, key string, d time.Duration) error {
	ms := max(d.Milliseconds(), 1)
	return distrust.Run(ctx, s.rdb, s.keys(key), s.versionTTL, strconv.FormatInt(ms, 10)).Err()
}

// Untrusted returns how much longer key stays untrusted; 0 if it is not.
func (s *Store) Untrusted(ctx context.Context, key string) (time.Duration, error) {
	left, err := s.rdb.PTTL(ctx, s.keys(key)[2]).Result()
	if err != nil || left < 0 { // -2: no key
		return 0, err
	}
	return left, nil
}

// Forget makes key's version unknown, without its lock: for writes the
// guard does not serialize.
func (s *Store) Forget(ctx context.Context, key string) error {
	return forget.Run(ctx, s.rdb, s.keys(key), s.versionTTL).Err()
}

// Peek returns key's version and generation without locking, for looking at
// the store from outside.
func (s *Store) Peek(ctx context.Context, key string) (v etagcache.Version, known bool, gen int64, locked bool, err error) {
	k := s.keys(key)
	pipe := s.rdb.Pipeline()
	fields := pipe.HMGet(ctx, k[1], "x", "e", "m", "s", "g")
	exists := pipe.Exists(ctx, k[0])
	if _, err = pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return v, false, 0, false, err
	}
	vals := fields.Val()
	v, known = parseVersion(vals[:4])
	if g, ok := vals[4].(string); ok {
		gen, _ = strconv.ParseInt(g, 10, 64)
	}
	return v, known, gen, exists.Val() == 1, nil
}

func parseVersion(f []any) (etagcache.Version, bool) {
	x, ok := f[0].(string)
	if !ok {
		return etagcache.Version{}, false
	}
	// The first field is "1" or "0" (exists), followed by a letter for
	// each flag: g, the guard's own tag; c, a crowded date; r, tags the
	// upstream reused; p, m holds the date of the version replaced, not
	// this one's.
	v := etagcache.Version{Exists: strings.HasPrefix(x, "1")}
	if len(x) > 1 {
		v.Guard = strings.IndexByte(x[1:], 'g') >= 0
		v.Crowded = strings.IndexByte(x[1:], 'c') >= 0
		v.TagsReused = strings.IndexByte(x[1:], 'r') >= 0
		v.FromAnswer = strings.IndexByte(x[1:], 'a') >= 0
	}
	v.ETag, _ = f[1].(string)
	if m, _ := f[2].(string); m != "" {
		if sec, err := strconv.ParseInt(m, 10, 64); err == nil {
			if len(x) > 1 && strings.IndexByte(x[1:], 'p') >= 0 {
				v.ReplacedDate = time.Unix(sec, 0).UTC()
			} else {
				v.LastModified = time.Unix(sec, 0).UTC()
			}
		}
	}
	if s, _ := f[3].(string); s != "" {
		v.Superseded = strings.Split(s, "\n")
	}
	return v, true
}

func formatVersion(v *etagcache.Version) []any {
	if v == nil {
		return []any{"", "", "", ""}
	}
	x := "0"
	if v.Exists {
		x = "1"
	}
	if v.Guard {
		x += "g"
	}
	if v.Crowded {
		x += "c"
	}
	if v.TagsReused {
		x += "r"
	}
	if v.FromAnswer {
		x += "a"
	}
	m := ""
	switch {
	case !v.LastModified.IsZero():
		m = strconv.FormatInt(v.LastModified.Unix(), 10)
	case !v.ReplacedDate.IsZero():
		x += "p"
		m = strconv.FormatInt(v.ReplacedDate.Unix(), 10)
	}
	// Entity-tags cannot contain line breaks (RFC 9110, 8.8.3).
	return []any{x, v.ETag, m, strings.Join(v.Superseded, "\n")}
}

// Sites whose upstream entity-tags the guard stopped trusting (etags auto)
// are recorded without expiry, so that every instance, and one that
// starts later, knows: the versions recorded after the switch say so too,
// but only for as long as they are kept.

func (s *Store) siteKey(site string) string { return s.cfg.KeyPrefix + "reused:{" + site + "}" }

// MarkSite records that site's upstream tags do not name versions;
// evidence says why.
func (s *Store) MarkSite(ctx context.Context, site, evidence string) error {
	return s.rdb.Set(ctx, s.siteKey(site), evidence, 0).Err()
}

// SiteMarked returns the evidence recorded for site, if any.
func (s *Store) SiteMarked(ctx context.Context, site string) (string, bool, error) {
	v, err := s.rdb.Get(ctx, s.siteKey(site)).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	return v, err == nil, err
}

// UnmarkSite forgets that site's upstream tags were distrusted.
func (s *Store) UnmarkSite(ctx context.Context, site string) error {
	return s.rdb.Del(ctx, s.siteKey(site)).Err()
}
