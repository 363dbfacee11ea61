package writeguard

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/writeguard/caddy-writeguard/etagcache"
)

// outcome is what became of a guarded request, as counted in
// caddy_write_guard_requests_total and shown in {http.write_guard.outcome}.
// A small integer, so that it goes into the placeholder without an
// allocation; it prints as its name.
type outcome uint8

const (
	outcomeAllowed      outcome = iota // forwarded: its precondition held
	outcomeBlind                       // 428/409: no precondition
	outcomeStale                       // 412: the precondition failed
	outcomeBusy                        // 409: lock_timeout or max_waiters
	outcomeProbeFailed                 // 502/504: the version could not be checked
	outcomeBadRequest                  // 400: malformed precondition, method override or body
	outcomeTooLarge                    // 413: body over max_body
	outcomeUnauthorized                // the upstream's 401/403 to the version check
	outcomeClientGone                  // the client left before the write was decided
	outcomeNested                      // an outer guard of the same key decided
	outcomeStoreDown                   // 503: Redis could not be reached (on_store_error fail)
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	outcomeAllowed:      "allowed",
	outcomeBlind:        "blind",
	outcomeStale:        "stale",
	outcomeBusy:         "busy",
	outcomeProbeFailed:  "probe_failed",
	outcomeBadRequest:   "bad_request",
	outcomeTooLarge:     "too_large",
	outcomeUnauthorized: "unauthorized",
	outcomeClientGone:   "client_gone",
	outcomeNested:       "outer_guarded",
	outcomeStoreDown:    "store_unavailable",
}

func (o outcome) String() string { return outcomeNames[o] }

// probeResult is what a version check asked of the upstream found, as
// counted in caddy_write_guard_probes_total.
type probeResult uint8

const (
	probeVersion      probeResult = iota // the answer named the version (or the resource's absence)
	probeNoVersion                       // the resource exists, but nothing names its version
	probeUnauthorized                    // 401/403
	probeFailed                          // another status, a broken answer, or no answer
	numProbeResults
)

var probeResultNames = [numProbeResults]string{
	probeVersion:      "version",
	probeNoVersion:    "no_version",
	probeUnauthorized: "unauthorized",
	probeFailed:       "failed",
}

func (p probeResult) String() string { return probeResultNames[p] }

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
		etagSwitches: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "etags_switches_total",
			Help: "Sites whose upstream entity-tags the guard stopped trusting (etags auto), because a write showed a tag an earlier version had.",
		}),
		dateWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "date_waits_total",
			Help: "Date-validated writes held under their lock until the second of the version they were checked against had passed.",
		}),
		hashed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "hashed_responses_total",
			Help: "Representations the guard hashed to tag them itself: reads and version checks (etags hash, and etags auto where the upstream's tags name no version).",
		}),
	}
	// Every outcome and result is exported from the start, at zero, so that
	// rates over them exist before the first occurrence.
	for o := range numOutcomes {
		m.byOutcome[o] = m.requests.WithLabelValues(o.String())
	}
	for p := range numProbeResults {
		m.byProbe[p] = m.probes.WithLabelValues(p.String())
	}
	cacheCounter := func(name, help string, pick func(etagcache.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help},
			func() float64 { return float64(cacheTotals(pick)) })
	}
	m.collectors = []prometheus.Collector{
		m.requests, m.lockWait, m.probes, m.upstreamFailures, m.storeErrors, m.etagSwitches, m.hashed, m.dateWaits,
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
	m.collectors = append(m.collectors, idemMetrics().collectors...) // idempotency_metrics.go
	return m
})

type metricSet struct {
	etagSwitches     prometheus.Counter
	dateWaits        prometheus.Counter
	hashed           prometheus.Counter
	requests         *prometheus.CounterVec
	lockWait         prometheus.Histogram
	probes           *prometheus.CounterVec
	upstreamFailures prometheus.Counter
	storeErrors      prometheus.Counter
	collectors       []prometheus.Collector

	byOutcome [numOutcomes]prometheus.Counter
	byProbe   [numProbeResults]prometheus.Counter
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

func countOutcome(o outcome) { guardMetrics().byOutcome[o].Inc() }

func countProbe(p probeResult) { guardMetrics().byProbe[p].Inc() }

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

func countDateWait() { guardMetrics().dateWaits.Inc() }
