package writeguard

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The idempotency metrics, one set per process (see guardMetrics):
//
//	caddy_write_guard_idempotency_requests_total{result}  requests with a key (or refused for lack of one), by result
//	caddy_write_guard_idempotency_records_stored_total    answers (and lost answers) recorded for replay
//	caddy_write_guard_idempotency_evictions_total         records evicted from memory before they expired
//	caddy_write_guard_idempotency_memory_bytes            what the records in memory take
var idemMetrics = sync.OnceValue(func() *idemMetricSet {
	const ns, sub = "caddy", "write_guard"
	m := &idemMetricSet{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "idempotency_requests_total",
			Help: "Requests that carried an Idempotency-Key (or lacked a required one), by result: new, replayed, in_flight, reused, outcome_unknown, invalid, required.",
		}, []string{"result"}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "idempotency_records_stored_total",
			Help: "Answers recorded for replay, and writes recorded as of unknown outcome (answer lost).",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "idempotency_evictions_total",
			Help: "Records evicted from memory for room before they expired: a retry with such a key is applied again.",
		}),
	}
	for r := range numIdemResults {
		m.byResult[r] = m.requests.WithLabelValues(r.String())
	}
	m.collectors = []prometheus.Collector{
		m.requests, m.stored, m.evicted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "idempotency_memory_bytes",
			Help: "Bytes the records of requests with an Idempotency-Key take in this process's memory.",
		}, idemMemoryBytes),
	}
	return m
})

type idemMetricSet struct {
	requests   *prometheus.CounterVec
	stored     prometheus.Counter
	evicted    prometheus.Counter
	collectors []prometheus.Collector
	byResult   [numIdemResults]prometheus.Counter
}

func countIdemResult(r idemResult) { idemMetrics().byResult[r].Inc() }

func countIdemEviction() { idemMetrics().evicted.Inc() }

func countIdemStored() { idemMetrics().stored.Inc() }

// idemMemoryBytes sums what the pooled memory stores hold.
func idemMemoryBytes() float64 {
	var total int64
	pool.Range(func(_, value any) bool {
		if m, ok := value.(pooledIdemMemory); ok {
			total += m.Stats().Bytes
		}
		return true
	})
	return float64(total)
}
