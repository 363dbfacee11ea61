package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Deployment is what a check of Redis found about whether it keeps the
// store's keys until their TTLs run out. A lock whose key Redis drops while
// its holder's write runs lets a second write to the resource in at once.
type Deployment struct {
	// Checked is when Redis answered the check; zero if it has not yet.
	Checked time.Time
	// Known: Redis answered CONFIG GET. Managed services often refuse it
	// (no permission, or the command renamed away): Err then says how, and
	// whether keys can be evicted is unknown.
	Known bool
	Err   string
	// Policy is maxmemory-policy, MaxMemory maxmemory in bytes (0: no
	// limit), when Known. On a Cluster, those of a master that evicts, if
	// any does.
	Policy    string
	MaxMemory int64
	// Evicts: when its memory is full, Redis evicts keys, the store's among
	// them: a maxmemory is set and the policy is not noeviction. The
	// volatile-* policies evict only keys with a TTL, which every key of
	// the store has.
	Evicts bool
	// LocksVanished and LocksExpired count the locks lost while held since
	// the store was created, by cause (see Loss); LocksRestored the lock
	// keys that vanished while held and were put back before anyone else
	// took them.
	LocksVanished, LocksExpired, LocksRestored int64
}

// Deployment returns what the last check found (Checked is zero before the
// first one answered), with the current count of lost locks. The store
// checks when it is created and whenever Redis answers again after it could
// not be reached, since a Redis that came back may be another one, or
// configured anew.
func (s *Store) Deployment() Deployment {
	var d Deployment
	if last := s.checks.last.Load(); last != nil {
		d = *last
	}
	d.LocksVanished, d.LocksExpired, d.LocksRestored = s.vanished.Load(), s.expired.Load(), s.restored.Load()
	return d
}

// CheckDeployment asks Redis (every master, on a Cluster) for its
// maxmemory and maxmemory-policy, keeps the answer for Deployment and
// passes it to Config.OnCheck. A refused CONFIG is an answer (Known false);
// an unreachable Redis is an error, and changes nothing.
func (s *Store) CheckDeployment(ctx context.Context) (Deployment, error) {
	var (
		mu sync.Mutex
		d  = Deployment{Known: true}
	)
	err := s.eachServer(ctx, func(ctx context.Context, c redis.Cmdable) error {
		policy, maxMemory, err := evictionOf(ctx, c)
		var reply redis.Error
		if err != nil && (!errors.As(err, &reply) || transient(err)) {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			d.Known, d.Err = false, err.Error()
		case policy == "":
			d.Known, d.Err = false, "CONFIG GET maxmemory-policy answered nothing"
		case maxMemory != 0 && policy != "noeviction":
			d.Evicts, d.Policy, d.MaxMemory = true, policy, maxMemory
		case !d.Evicts && d.Policy == "":
			d.Policy, d.MaxMemory = policy, maxMemory
		}
		return nil
	})
	if err != nil {
		return Deployment{}, err
	}
	if !d.Known && !d.Evicts {
		d.Policy, d.MaxMemory = "", 0
	}
	d.Checked = time.Now()
	s.checks.last.Store(&d)
	if s.cfg.OnCheck != nil {
		s.cfg.OnCheck(d)
	}
	return s.Deployment(), nil
}

// eachServer runs fn on every master of a Cluster, or on the one server.
func (s *Store) eachServer(ctx context.Context, fn func(context.Context, redis.Cmdable) error) error {
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return fn(ctx, c) })
	}
	return fn(ctx, s.rdb)
}

func evictionOf(ctx context.Context, c redis.Cmdable) (policy string, maxMemory int64, err error) {
	vals, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		return "", 0, err
	}
	policy = vals["maxmemory-policy"]
	if vals, err = c.ConfigGet(ctx, "maxmemory").Result(); err != nil {
		return "", 0, err
	}
	if maxMemory, err = strconv.ParseInt(vals["maxmemory"], 10, 64); err != nil {
		return "", 0, fmt.Errorf("CONFIG GET maxmemory answered %q", vals["maxmemory"])
	}
	return policy, maxMemory, nil
}

// transient reports whether a Redis error reply says that Redis cannot
// serve yet (loading its data after a restart, between masters), rather
// than what it refuses.
func transient(err error) bool {
	for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// checker runs the deployment checks: one when the store is created, one
// whenever a command succeeds after one failed for want of Redis. It stops
// when the store is closed.
type checker struct {
	s           *Store
	last        atomic.Pointer[Deployment]
	unreachable atomic.Bool
	// running: a check goroutine runs; again: it must check (once more).
	running, again atomic.Bool

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *checker) init(s *Store) {
	c.s = s
	c.ctx, c.cancel = context.WithCancel(context.Background())
	s.rdb.AddHook(reachability{c})
	c.start()
}

// start runs a check in the background, or another one after the check
// that runs already.
func (c *checker) start() {
	c.again.Store(true)
	if !c.running.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.running.Store(false)
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for c.again.Swap(false) {
			// Two commands per server, each bounded by Timeout.
			ctx, cancel := context.WithTimeout(c.ctx, 3*c.s.cfg.Timeout)
			c.s.CheckDeployment(ctx)
			cancel()
		}
		c.running.Store(false)
		if c.again.Load() {
			c.start() // asked for between the last check and now
		}
	}()
}

func (c *checker) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// observe follows the outcome of every command, run with ctx: a failure
// for want of Redis marks it unreachable, the next answer after that starts
// a check. A timeout is Redis's failure unless ctx itself ended: a dial or
// a read that timed out reads as a deadline exceeded too.
func (c *checker) observe(ctx context.Context, err error) {
	var reply redis.Error
	switch {
	case err == nil || errors.As(err, &reply) && !transient(err):
		if c.unreachable.Load() && c.unreachable.CompareAndSwap(true, false) {
			c.start()
		}
	case errors.Is(err, redis.ErrClosed), ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		// The store is closing, or the caller gave up: nothing learned.
	default:
		c.unreachable.Store(true)
	}
}

// reachability is the client hook that shows the checker every command's
// outcome.
type reachability struct{ c *checker }

func (r reachability) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r reachability) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		r.c.observe(ctx, err)
		return err
	}
}

func (r reachability) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		r.c.observe(ctx, err)
		return err
	}
}
