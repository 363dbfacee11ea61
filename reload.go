package writeguard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/writeguard/caddy-writeguard/redisstore"
)

// A reload provisions the new configuration while the old one still serves
// the requests under way, and both share the process's locks and caches.
// When a reload changes how a site's resources are named (its key, its key
// options, or its names), one resource has one key in the old configuration
// and another in the new one:
//
//   - during the overlap, two writes to one resource through the two
//     configurations would take two different locks, and each
//     configuration's cached versions miss the other's writes;
//   - after it, the versions cached under the old keys are never updated
//     again, and a later reload back to the old naming would find them
//     still trusted.
//
// So while more than one configuration lives, every guarded write also takes
// a fence lock named after its path alone, which every naming shares; writes
// whose naming is not shared by all live configurations ask the upstream for
// the version instead of trusting the cache; and whenever the namings in use
// change, everything cached is forgotten. A reload that changes nothing of
// this costs only the fence locks of its overlap.
var reloads configRegistry

type configRegistry struct {
	mu   sync.Mutex
	live []*liveConfig
	// lastNamings are the namings of the configuration that most recently
	// began to serve.
	lastNamings map[string]struct{}
	// overlap: more than one configuration lives, writes take the fence.
	overlap atomic.Bool
	// forgetAll makes every cache forget what it holds; set once.
	forgetAll func()
}

// liveConfig is one loaded configuration's set of guards.
type liveConfig struct {
	done     <-chan struct{}
	handlers []*Handler
	// active: a request reached one of its guards, so its provisioning is
	// complete and it serves.
	active  atomic.Bool
	namings map[string]struct{}
	// unfenced counts writes under way that took no fence lock; writes is
	// all writes under way, from their first byte of body on, or
	// writesClosed once the configuration has stopped and they are done.
	unfenced atomic.Int64
	writes   atomic.Int64
}

// join registers h, provisioned with ctx, with its configuration. done is
// the configuration's context's: it ends when the configuration is stopped.
func (reg *configRegistry) join(done <-chan struct{}, h *Handler, forgetAll func()) *liveConfig {
	if done == nil {
		return nil // not run by Caddy (a bare test harness): nothing reloads
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if reg.forgetAll == nil {
		reg.forgetAll = forgetAll
	}
	for _, cfg := range reg.live {
		if cfg.done == done {
			cfg.handlers = append(cfg.handlers, h)
			return cfg
		}
	}
	cfg := &liveConfig{done: done, handlers: []*Handler{h}}
	reg.live = append(reg.live, cfg)
	reg.overlap.Store(len(reg.live) > 1)
	go reg.watch(cfg)
	return cfg
}

// drainLimit bounds how long a stopped configuration's writes are waited for
// before its namings stop counting: each write is bounded by lock_timeout and
// write_timeout, and a configuration rarely outlives its grace period.
const drainLimit = 5 * time.Minute

// writesClosed is far enough below zero that no count of writes under way
// brings it back up.
const writesClosed = math.MinInt64 / 2

// watch waits for cfg to stop and its writes to end, then lets it go. Caddy
// stops a configuration as soon as the next one serves: its requests under
// way, the writes still sending their body among them, go on.
func (reg *configRegistry) watch(cfg *liveConfig) {
	<-cfg.done
	for deadline := time.Now().Add(drainLimit); !cfg.writes.CompareAndSwap(0, writesClosed); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			cfg.writes.Add(writesClosed)
			break
		}
	}
	reg.leave(cfg)
}

// enter counts a write in, from its first byte on; false once cfg has
// stopped and let go: nothing would serialize the write with the
// configuration that replaced it.
func (cfg *liveConfig) enter() bool {
	if cfg == nil {
		return true // not run by Caddy: nothing reloads
	}
	if cfg.writes.Add(1) < 0 {
		cfg.writes.Add(-1)
		return false
	}
	return true
}

func (cfg *liveConfig) exit() {
	if cfg != nil {
		cfg.writes.Add(-1)
	}
}

func (reg *configRegistry) leave(cfg *liveConfig) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	mixed := false
	for i, c := range reg.live {
		if c == cfg {
			reg.live = append(reg.live[:i], reg.live[i+1:]...)
			break
		}
	}
	for _, c := range reg.live {
		for _, h := range c.handlers {
			mixed = mixed || h.unsettled.Load()
		}
	}
	for _, h := range cfg.handlers {
		mixed = mixed || h.unsettled.Load()
	}
	reg.overlap.Store(len(reg.live) > 1)
	reg.settle()
	if mixed && reg.forgetAll != nil {
		// What was learned while two namings wrote may be stale under either.
		reg.forgetAll()
	}
}

// activate marks cfg as serving, the first time one of its guards sees a
// request: all its guards are provisioned by then, and their sites known;
// and nothing it serves has been learned yet.
func (reg *configRegistry) activate(cfg *liveConfig) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if cfg.active.Load() || !slices.Contains(reg.live, cfg) {
		return // a configuration that stopped unseen says nothing of now
	}
	cfg.namings = make(map[string]struct{}, len(cfg.handlers))
	for _, h := range cfg.handlers {
		h.naming = h.namingScheme()
		cfg.namings[h.naming] = struct{}{}
	}
	changed := reg.lastNamings != nil && !sameSet(reg.lastNamings, cfg.namings)
	reg.lastNamings = cfg.namings
	cfg.active.Store(true)
	reg.settle()
	claimSharedNamings(cfg)
	if changed && reg.forgetAll != nil {
		// Versions cached under the namings that went out of use were not
		// updated by the writes made since; they must not come back.
		reg.forgetAll()
	}
}

// settle marks the guards whose naming some serving configuration lacks.
func (reg *configRegistry) settle() {
	var active []*liveConfig
	for _, c := range reg.live {
		if c.active.Load() {
			active = append(active, c)
		}
	}
	for _, c := range reg.live {
		for _, h := range c.handlers {
			unsettled := false
			for _, other := range active {
				if _, ok := other.namings[h.naming]; !ok && c.active.Load() {
					unsettled = true
				}
			}
			h.unsettled.Store(unsettled)
		}
	}
}

func sameSet(a, b map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// namingScheme describes how h names resources, and which writes reach it:
// two guards with the same scheme give a request the same key and see the
// same writes.
func (h *Handler) namingScheme() string {
	var b strings.Builder
	b.WriteString(strconv.Quote(h.keyTemplate))
	b.WriteString(strconv.FormatBool(h.keyOptions.KeepTrailingSlash))
	b.WriteString(strconv.FormatBool(h.keyOptions.CaseInsensitive))
	if h.server != nil {
		if h.keyTemplate == "" || h.keyHasSite {
			b.WriteString(h.sites.lookup(h.server, h).describe())
		}
		b.WriteString(scopeOf(h.server, h))
	}
	return b.String()
}

// fence is what a guarded write holds besides its resource's lock.
type fence struct {
	cfg  *liveConfig
	key  string // the fence lock's key; "" when none is held
	none bool   // counted among cfg's unfenced writes
}

// enterFence counts a write in and, while configurations overlap, takes the
// lock that serializes it with writes named by other configurations. A
// non-nil error is the lock's (timeout, too many waiters, client gone).
func (h *Handler) enterFence(ctx context.Context, path string) (fence, error) {
	cfg := h.config
	if cfg == nil {
		return fence{}, nil
	}
	f := fence{cfg: cfg}
	if !h.reg.overlap.Load() {
		cfg.unfenced.Add(1)
		// Checked again after counting in: a configuration joining now
		// either sees this write counted or is seen here.
		if !h.reg.overlap.Load() {
			f.none = true
			return f, nil
		}
		cfg.unfenced.Add(-1)
	}
	key := fenceKey(path)
	if outer, _ := ctx.Value(fencedCtxKey{}).(string); outer == key {
		return f, nil // an outer guard holds it for this request
	}
	waitCtx, cancel := context.WithTimeout(ctx, time.Duration(h.LockTimeout))
	err := h.reg.awaitUnfenced(waitCtx, cfg)
	cancel()
	if err != nil {
		return fence{}, err
	}
	if err := h.lock(ctx, key); err != nil {
		return fence{}, err
	}
	f.key = key
	return f, nil
}

// leave ends what enterFence began.
func (f fence) leave(h *Handler) {
	if f.cfg == nil {
		return
	}
	if f.key != "" {
		h.locks.Unlock(f.key)
	}
	if f.none {
		f.cfg.unfenced.Add(-1)
	}
}

// awaitUnfenced waits until no other configuration has a write under way
// that took no fence lock: those began before the overlap did.
func (reg *configRegistry) awaitUnfenced(ctx context.Context, self *liveConfig) error {
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		busy := false
		reg.mu.Lock()
		for _, c := range reg.live {
			busy = busy || (c != self && c.unfenced.Load() > 0)
		}
		reg.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// fenceKey names a path's fence lock: its coarsest canonical form (as
// abandoned writes are remembered by), so that every naming of one resource
// meets there, and a prefix no key has.
func fenceKey(path string) string {
	return "\x00fence:" + markOf(path)
}

// serverOf is the server ctx provisions a handler for.
func serverOf(ctx context.Context) *caddyhttp.Server {
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return srv
}

// claimSharedNamings tells each Redis store cfg's guards use how they name
// resources. Redis outlives this process and is shared with other
// instances: if the naming changed since it was last claimed (by this
// configuration's predecessor, another instance, or a process before a
// restart), every version it holds is forgotten. Until that is done, those
// guards ask the upstream for every version.
func claimSharedNamings(cfg *liveConfig) {
	byStore := map[*redisstore.Store][]*Handler{}
	for _, h := range cfg.handlers {
		if s := h.store.shared(); s != nil {
			byStore[s] = append(byStore[s], h)
		}
	}
	for store, handlers := range byStore {
		namings := make([]string, 0, len(handlers))
		for _, h := range handlers {
			namings = append(namings, h.naming)
			h.redisUnsettled.Store(true)
		}
		sort.Strings(namings)
		go claimNamings(cfg, store, handlers, strings.Join(namings, "\n"))
	}
}

// claimNamings runs until the store has adopted the namings, or cfg stops.
func claimNamings(cfg *liveConfig, store *redisstore.Store, handlers []*Handler, namings string) {
	sum := sha256.Sum256([]byte(namings))
	fingerprint := hex.EncodeToString(sum[:16])
	logger := handlers[0].logger
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			changed, n, err := store.AdoptNamings(ctx, fingerprint)
			if err == nil && changed {
				logger.Info("resources are named otherwise than Redis last knew; forgot every version it held", zap.Int64("versions", n))
			}
			return err
		}()
		if err == nil {
			for _, h := range handlers {
				h.redisUnsettled.Store(false)
			}
			return
		}
		if c := logger.Check(zapcore.WarnLevel, "could not yet tell Redis how resources are named; writes ask the upstream for versions until it answers"); c != nil {
			c.Write(zap.Error(err))
		}
		select {
		case <-cfg.done:
			return
		case <-time.After(wait):
		}
	}
}
