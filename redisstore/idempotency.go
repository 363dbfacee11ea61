package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/writeguard/caddy-writeguard/idempotency"
)

// Idempotency keeps the records of requests with an Idempotency-Key in
// Redis, shared by every instance with the same Redis and key prefix: one
// hash per record id, under "<prefix>idem:<id>".
//
// A claim is the hash with s "c", the claimer's random token t and the
// request's fingerprint fp, set only if no record is there (one script), and
// kept for the claim's TTL, which the claimer renews every third of it for
// as long as its request runs: an instance that dies frees its keys one
// claim TTL later, and a live request is never taken for an orphan. Ending
// a claim checks the token: finishing replaces the claim by the record (s
// "f", fp, r: the encoded record) with the replay TTL; releasing deletes
// it.
type Idempotency struct {
	s        *Store
	claimTTL time.Duration
	ms       string // claimTTL in milliseconds
}

// DefaultClaimTTL is the claim TTL when none is given.
const DefaultClaimTTL = 10 * time.Second

// Idempotency returns the store's records of Idempotency-Key requests,
// whose claims live claimTTL (DefaultClaimTTL if 0) unrenewed.
func (s *Store) Idempotency(claimTTL time.Duration) *Idempotency {
	if claimTTL <= 0 {
		claimTTL = DefaultClaimTTL
	}
	return &Idempotency{s: s, claimTTL: claimTTL, ms: strconv.FormatInt(claimTTL.Milliseconds(), 10)}
}

func (i *Idempotency) key(id string) string { return i.s.cfg.KeyPrefix + "idem:" + id }

// idemClaim claims KEYS[1] if no record is there. ARGV: token,
// fingerprint, claim TTL. It returns {"new"}, or the record's s, fp and r.
var idemClaim = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 's', 'fp', 'r')
if v[1] then
  return {v[1], v[2] or '', v[3] or ''}
end
redis.call('HSET', KEYS[1], 's', 'c', 't', ARGV[1], 'fp', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'new'}
`)

// idemRenew extends a claim that is still the caller's. ARGV: token, TTL.
var idemRenew = redis.NewScript(`
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// idemFinish replaces the caller's claim by a record. ARGV: token,
// fingerprint, record, TTL.
var idemFinish = redis.NewScript(`
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'f', 'fp', ARGV[2], 'r', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`)

// idemRelease deletes the caller's claim. ARGV: token.
var idemRelease = redis.NewScript(`
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
`)

// Claim claims id, or returns the record that holds it.
func (i *Idempotency) Claim(ctx context.Context, id string, fp idempotency.Fingerprint) (idempotency.Ticket, idempotency.Record, error) {
	var raw [16]byte
	rand.Read(raw[:])
	token := hex.EncodeToString(raw[:])
	key := i.key(id)
	sent := time.Now()
	res, err := idemClaim.Run(ctx, i.s.rdb, []string{key}, token, fp[:], i.ms).StringSlice()
	if err != nil {
		return nil, idempotency.Record{}, err
	}
	if len(res) == 1 && res[0] == "new" {
		t := &idemTicket{i: i, key: key, token: token, fp: fp, validUntil: sent.Add(i.claimTTL), stop: make(chan struct{}), done: make(chan struct{})}
		go t.renew()
		return t, idempotency.Record{}, nil
	}
	if len(res) != 3 {
		return nil, idempotency.Record{}, errors.New("redisstore: malformed idempotency record")
	}
	rec, err := parseRecord(res[0], res[1], res[2])
	return nil, rec, err
}

func parseRecord(state, fp, encoded string) (idempotency.Record, error) {
	switch state {
	case "c":
		rec := idempotency.Record{State: idempotency.InFlight}
		if len(fp) != len(rec.Fingerprint) {
			return idempotency.Record{}, errors.New("redisstore: malformed idempotency claim")
		}
		copy(rec.Fingerprint[:], fp)
		return rec, nil
	case "f":
		return idempotency.DecodeRecord([]byte(encoded))
	}
	return idempotency.Record{}, errors.New("redisstore: malformed idempotency record")
}

// Wait polls id's record until it is no longer in flight, backing off
// from 5 ms to 100 ms.
func (i *Idempotency) Wait(ctx context.Context, id string) error {
	key := i.key(id)
	backoff := 5 * time.Millisecond
	for {
		s, err := i.s.rdb.HGet(ctx, key, "s").Result()
		if errors.Is(err, redis.Nil) || err == nil && s != "c" {
			return nil
		}
		if err != nil {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// Lookup returns id's record, with when it expires.
func (i *Idempotency) Lookup(ctx context.Context, id string) (idempotency.Record, error) {
	key := i.key(id)
	pipe := i.s.rdb.Pipeline()
	fields := pipe.HMGet(ctx, key, "s", "fp", "r")
	ttl := pipe.PTTL(ctx, key)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return idempotency.Record{}, err
	}
	v := fields.Val()
	state, _ := v[0].(string)
	if state == "" {
		return idempotency.Record{}, nil
	}
	fp, _ := v[1].(string)
	encoded, _ := v[2].(string)
	rec, err := parseRecord(state, fp, encoded)
	if err == nil && ttl.Val() > 0 {
		rec.Expires = time.Now().Add(ttl.Val())
	}
	return rec, err
}

// Forget deletes id's record.
func (i *Idempotency) Forget(ctx context.Context, id string) (bool, error) {
	n, err := i.s.rdb.Del(ctx, i.key(id)).Result()
	return n > 0, err
}

// idemTicket is a claim in Redis, renewed until it ends.
type idemTicket struct {
	i          *Idempotency
	key, token string
	fp         idempotency.Fingerprint
	// validUntil is the earliest the claim can expire unrenewed; only the
	// renewal goroutine writes it until done is closed.
	validUntil time.Time
	lost       bool // read after done
	stop, done chan struct{}
	once       sync.Once
}

// renew extends the claim every third of its TTL until it ends, or Redis
// says it is no longer the ticket's, or it went unrenewed for a whole TTL.
func (t *idemTicket) renew() {
	defer close(t.done)
	period := t.i.claimTTL / 3
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), period)
		n, err := idemRenew.Run(ctx, t.i.s.rdb, []string{t.key}, t.token, t.i.ms).Int()
		cancel()
		switch {
		case err == nil && n == 0, err != nil && !time.Now().Before(t.validUntil):
			t.lost = true
			return
		case err == nil:
			t.validUntil = sent.Add(t.i.claimTTL)
		}
	}
}

// end stops the renewals and runs the script that ends the claim.
func (t *idemTicket) end(ctx context.Context, script *redis.Script, args ...any) error {
	err := errors.New("redisstore: idempotency claim already ended")
	t.once.Do(func() {
		close(t.stop)
		<-t.done
		var n int
		n, err = script.Run(ctx, t.i.s.rdb, []string{t.key}, append([]any{t.token}, args...)...).Int()
		if err == nil && n == 0 {
			err = idempotency.ErrClaimLost
		}
	})
	return err
}

// Finish replaces the claim by the record, kept for ttl.
func (t *idemTicket) Finish(ctx context.Context, state idempotency.State, answer *idempotency.Answer, ttl time.Duration) error {
	encoded, err := idempotency.EncodeRecord(state, t.fp, answer)
	if err != nil {
		return err
	}
	return t.end(ctx, idemFinish, t.fp[:], encoded, strconv.FormatInt(max(ttl.Milliseconds(), 1), 10))
}

// Release deletes the claim.
func (t *idemTicket) Release(ctx context.Context) error { return t.end(ctx, idemRelease) }

// Lost reports whether the renewals found the claim lost (gone, or
// someone else's) before it ended.
func (t *idemTicket) Lost() bool {
	select {
	case <-t.done:
		return t.lost
	default:
		return false
	}
}

var _ idempotency.Store = (*Idempotency)(nil)
