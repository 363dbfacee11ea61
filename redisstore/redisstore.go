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
	// Timeout bounds dialling and each command, so that writes fail fast
	// when Redis is unreachable.
	Timeout time.Duration
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
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return nil
}

// Store is a connection to Redis. It is safe for concurrent use.
type Store struct {
	rdb                 redis.UniversalClient
	cfg                 Config
	lockTTL, versionTTL string // in milliseconds, as the scripts take them
}

// New connects lazily: it fails only on a bad configuration, and Redis
// being down shows in the first command.
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
	return &Store{
		rdb:        redis.NewUniversalClient(opts),
		cfg:        cfg,
		lockTTL:    strconv.FormatInt(cfg.LockTTL.Milliseconds(), 10),
		versionTTL: strconv.FormatInt(cfg.VersionTTL.Milliseconds(), 10),
	}, nil
}

// Config returns the configuration with defaults filled in.
func (s *Store) Config() Config { return s.cfg }

// Close closes the connections.
func (s *Store) Close() error { return s.rdb.Close() }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

func (s *Store) keys(key string) []string {
	// The braces make both keys hash to the same Cluster slot.
	return []string{s.cfg.KeyPrefix + "lock:{" + key + "}", s.cfg.KeyPrefix + "ver:{" + key + "}"}
}

// Version fields in the hash: x (exists: "1" or "0"), e (entity-tag), m
// (Last-Modified, Unix seconds, "" if unknown), s (superseded tags, one per
// line), g (generation). x, e, m and s are present together or not at all.

// acquire takes the lock if it is free, and the version with it.
var acquire = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local v = redis.call('HMGET', KEYS[2], 'x', 'e', 'm', 's', 'g')
  redis.call('HDEL', KEYS[2], 'x', 'e', 'm', 's')
  return {1, v[1], v[2], v[3], v[4], v[5]}
end
return {0, redis.call('PTTL', KEYS[1])}
`)

// renew extends the lock if the caller still holds it.
var renew = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// release ends a hold. ARGV: token, mode, version ttl, generation found,
// then x e m s. Mode "record": a write completed and made this version
// ("" x: nobody knows which); "restore": no write was forwarded, put back
// the version found (if the generation shows nobody wrote meanwhile).
var release = redis.NewScript(`
local held = redis.call('GET', KEYS[1]) == ARGV[1]
if ARGV[2] == 'record' then
  redis.call('HINCRBY', KEYS[2], 'g', 1)
end
if not held then
  -- The lock expired and may be someone else's: what this holder knows
  -- may be stale, so the version becomes unknown.
  redis.call('HDEL', KEYS[2], 'x', 'e', 'm', 's')
  return 0
end
local put = ARGV[5] ~= ''
if ARGV[2] == 'restore' and (redis.call('HGET', KEYS[2], 'g') or '') ~= ARGV[4] then
  put = false
end
if put then
  redis.call('HSET', KEYS[2], 'x', ARGV[5], 'e', ARGV[6], 'm', ARGV[7], 's', ARGV[8])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
`)

// forget makes a version unknown without the lock.
var forget = redis.NewScript(`
redis.call('HDEL', KEYS[2], 'x', 'e', 'm', 's')
redis.call('HINCRBY', KEYS[2], 'g', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
`)

// A Lease is a held lock.
type Lease struct {
	s      *Store
	keys   []string
	token  string
	gen    string // the generation found when the lock was taken
	found  etagcache.Version
	known  bool
	lost   atomic.Bool
	stop   chan struct{}
	done   chan struct{}
	finish sync.Once
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
		res, err := acquire.Run(ctx, s.rdb, l.keys, l.token, s.lockTTL).Slice()
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
			l.stop, l.done = make(chan struct{}), make(chan struct{})
			go l.renew()
			return l, nil
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
// Redis says the lock is someone else's.
func (l *Lease) renew() {
	defer close(l.done)
	period := l.s.cfg.LockTTL / 3
	t := time.NewTicker(period)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), period)
		n, err := renew.Run(ctx, l.s.rdb, l.keys[:1], l.token, l.s.lockTTL).Int()
		cancel()
		switch {
		case err == nil && n == 0:
			l.lost.Store(true)
			return
		case err == nil:
			renewed = time.Now()
		case time.Since(renewed) >= l.s.cfg.LockTTL:
			// Unrenewed for a whole TTL: the lock has expired by now.
			l.lost.Store(true)
			return
		}
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
func (l *Lease) Found() (etagcache.Version, bool) { return l.found, l.known }

// Lost reports whether the lock expired while held (renewal found another
// token, or none): writes made since may overlap another holder's.
func (l *Lease) Lost() bool { return l.lost.Load() }

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

func (l *Lease) end(ctx context.Context, mode string, v *etagcache.Version) error {
	err := errors.New("redisstore: lease already released")
	l.finish.Do(func() {
		close(l.stop)
		<-l.done
		args := []any{l.token, mode, l.s.versionTTL, l.gen}
		args = append(args, formatVersion(v)...)
		var n int
		n, err = release.Run(ctx, l.s.rdb, l.keys, args...).Int()
		if err == nil && n == 0 {
			l.lost.Store(true)
			err = ErrLockLost
		}
	})
	return err
}

// ErrLockLost: the lock had expired when its holder released it.
var ErrLockLost = errors.New("redisstore: the lock expired while held")

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
	v := etagcache.Version{Exists: x == "1"}
	v.ETag, _ = f[1].(string)
	if m, _ := f[2].(string); m != "" {
		if sec, err := strconv.ParseInt(m, 10, 64); err == nil {
			v.LastModified = time.Unix(sec, 0).UTC()
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
	m := ""
	if !v.LastModified.IsZero() {
		m = strconv.FormatInt(v.LastModified.Unix(), 10)
	}
	// Entity-tags cannot contain line breaks (RFC 9110, 8.8.3).
	return []any{x, v.ETag, m, strings.Join(v.Superseded, "\n")}
}
