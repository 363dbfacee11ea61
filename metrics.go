package writeguard

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// Outcomes of a guarded request, as counted in
// caddy_write_guard_requests_total and shown in {http.write_guard.outcome}.
const (
	outcomeAllowed      = "allowed"           // forwarded: its precondition held
	outcomeBlind        = "blind"             // 428/409: no precondition
	outcomeStale        = "stale"             // 412: the precondition failed
	outcomeBusy         = "busy"              // 409: lock_timeout or max_waiters
	outcomeProbeFailed  = "probe_failed"      // 502/504: the version could not be checked
	outcomeBadRequest   = "bad_request"       // 400: malformed precondition, method override or body
	outcomeTooLarge     = "too_large"         // 413: body over max_body
	outcomeUnauthorized = "unauthorized"      // the upstream's 401/403 to the version check
	outcomeClientGone   = "client_gone"       // the client left before the write was decided
	outcomeNested       = "outer_guarded"     // an outer guard of the same key decided
	outcomeStoreDown    = "store_unavailable" // 503: Redis could not be reached (on_store_error fail)
)

// Results of a version check, as counted in caddy_write_guard_probes_total.
const (
	probeVersion      = "version"      // the answer named the version (or the resource's absence)
	probeNoVersion    = "no_version"   // the resource exists, but nothing names its version
	probeUnauthorized = "unauthorized" // 401/403
	probeFailed       = "failed"       // another status, a broken answer, or no answer
)

// The collectors exist once per process and are registered with the
// registry of every configuration that uses the guard: Caddy gives each
// config load a fresh registry, and counters must not restart on reload.
var guardMetrics = sync.OnceValue(func() *metricSet {
	const ns, sub = "caddy", "write_guard"
	m := &metricSet{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Guarded requests by outcome: allowed, blind, stale, busy, probe_failed, bad_request, too_large, unauthorized, client_gone, outer_guarded, store_unavailable.",
		}, []string{"outcome"}),
		lockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "lock_wait_seconds",
			Help:    "How long guarded writes waited for their resource's lock.",
			Buckets: []float64{0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30},
		}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "probes_total",
			Help: "Version checks asked of the upstream, by result: version, no_version, unauthorized, failed.",
		}, []string{"result"}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "store_errors_total",
			Help: "Redis commands that failed (store redis): locks not taken, versions not forgotten.",
		}),
		upstreamFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "upstream_failures_total",
			Help: "Forwarded writes that the upstream failed before answering (outcome unknown, version forgotten).",
		}),
	}
	// Every outcome and result is exported from the start, at zero, so that
	// rates over them exist before the first occurrence.
	m.byOutcome = map[string]prometheus.Counter{}
	for _, o := range []string{outcomeAllowed, outcomeBlind, outcomeStale, outcomeBusy, outcomeProbeFailed, outcomeBadRequest, outcomeTooLarge, outcomeUnauthorized, outcomeClientGone, outcomeNested, outcomeStoreDown} {
		m.byOutcome[o] = m.requests.WithLabelValues(o)
	}
	m.byProbe = map[string]prometheus.Counter{}
	for _, r := range []string{probeVersion, probeNoVersion, probeUnauthorized, probeFailed} {
		m.byProbe[r] = m.probes.WithLabelValues(r)
	}
	cacheCounter := func(name, help string, pick func(etagcache.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help},
			func() float64 { return float64(cacheTotals(pick)) })
	}
	m.collectors = []prometheus.Collector{
		m.requests, m.lockWait, m.probes, m.upstreamFailures, m.storeErrors,
		cacheCounter("cache_hits_total", "Version lookups the cache answered.", func(s etagcache.Stats) uint64 { return s.Hits }),
		cacheCounter("cache_misses_total", "Version lookups the cache could not answer.", func(s etagcache.Stats) uint64 { return s.Misses }),
		cacheCounter("cache_evictions_total", "Cached versions evicted for room or expired.", func(s etagcache.Stats) uint64 { return s.Evictions }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "writes_in_flight",
			Help: "Guarded writes holding their resource's lock.",
		}, func() float64 { return float64(processState().locks.Held()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "writes_waiting",
			Help: "Guarded writes waiting for their resource's lock.",
		}, func() float64 { return float64(processState().locks.Waiting()) }),
	}
	return m
})

type metricSet struct {
	requests         *prometheus.CounterVec
	lockWait         prometheus.Histogram
	probes           *prometheus.CounterVec
	upstreamFailures prometheus.Counter
	storeErrors      prometheus.Counter
	collectors       []prometheus.Collector

	byOutcome, byProbe map[string]prometheus.Counter
}

// registerMetrics adds the guard's collectors to a configuration's registry.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range guardMetrics().collectors {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

func countOutcome(outcome string) { count(guardMetrics().requests, guardMetrics().byOutcome, outcome) }

func countProbe(result string) { count(guardMetrics().probes, guardMetrics().byProbe, result) }

// count increments vec's counter for label, found in known without the
// allocations of a lookup by label values when it is one of them.
func count(vec *prometheus.CounterVec, known map[string]prometheus.Counter, label string) {
	if c, ok := known[label]; ok {
		c.Inc()
		return
	}
	vec.WithLabelValues(label).Inc()
}

func observeLockWait(d time.Duration) { guardMetrics().lockWait.Observe(d.Seconds()) }

// retiredCacheStats keeps the counts of caches that were closed (a reload
// changed their settings), so that the counters summed over live caches do
// not go backwards.
var retiredCacheStats struct {
	sync.Mutex
	etagcache.Stats
}

func retireCacheStats(s etagcache.Stats) {
	retiredCacheStats.Lock()
	defer retiredCacheStats.Unlock()
	retiredCacheStats.Hits += s.Hits
	retiredCacheStats.Misses += s.Misses
	retiredCacheStats.Evictions += s.Evictions
}

func cacheTotals(pick func(etagcache.Stats) uint64) uint64 {
	retiredCacheStats.Lock()
	total := pick(retiredCacheStats.Stats)
	retiredCacheStats.Unlock()
	pool.Range(func(_, value any) bool {
		if c, ok := value.(sharedCache); ok {
			total += pick(c.Stats())
		}
		return true
	})
	return total
}
