package integration

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sendBack is what a client puts in a write's precondition, from the
// answer to the read it edited.
type sendBack int

const (
	// sendBackWhatWasRead sends If-Match with the ETag when the read had
	// one, otherwise If-Unmodified-Since with its Last-Modified: what a
	// client does that uses whichever validator it was given.
	sendBackWhatWasRead sendBack = iota
	// sendBackETag sends If-Match with the ETag, and nothing when the read
	// had none: a client written for APIs that tag their representations.
	sendBackETag
	// sendBackDate always sends If-Unmodified-Since with the Last-Modified,
	// even when there was an ETag, as clients written for file servers do.
	sendBackDate
)

func (s sendBack) String() string {
	switch s {
	case sendBackETag:
		return "If-Match"
	case sendBackDate:
		return "If-Unmodified-Since"
	}
	return "If-Match or If-Unmodified-Since"
}

// counterWidth keeps every version of a counter the same length, so that a
// backend whose ETag is built from mtime and size labels all versions
// written within one second alike.
const counterWidth = 8

func counterBody(n int) string { return fmt.Sprintf("%0*d", counterWidth, n) }

// incrementWorkload is clients doing read-modify-write on a few counters:
// GET, add one, PUT back with the precondition sendBack picks, and on a
// refusal (412, 409, 428) read again and retry. An increment is
// acknowledged when its PUT got a 2xx; a client gives up on an increment
// after maxAttempts attempts, and on all that are left at the deadline.
type incrementWorkload struct {
	// bases are where requests go: a client sends each request to the next
	// of them in turn, so that with two an edit's read and write go through
	// different servers.
	bases       []string
	resources   []string
	clients     int
	perClient   int
	sendBack    sendBack
	maxAttempts int
	deadline    time.Time

	acked map[string]*atomic.Int64
	// refused counts 412 and 409 answers, preconditionRequired 428s,
	// unavailable 503s, errors transport failures and other answers.
	refused, preconditionRequired, unavailable, errors atomic.Int64
	// gaveUp counts clients that stopped short of perClient increments.
	gaveUp atomic.Int64
	turn   atomic.Int64

	mu       sync.Mutex
	statuses map[int]int // of every write
}

func (wl *incrementWorkload) run(t *testing.T) {
	t.Helper()
	if wl.maxAttempts == 0 {
		wl.maxAttempts = 200
	}
	wl.acked = map[string]*atomic.Int64{}
	for _, r := range wl.resources {
		wl.acked[r] = new(atomic.Int64)
	}
	wl.statuses = map[int]int{}
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	for c := range wl.clients {
		wg.Go(func() {
			for i := range wl.perClient {
				res := wl.resources[(c+i)%len(wl.resources)]
				if !wl.increment(client, res) {
					wl.gaveUp.Add(1)
					return
				}
			}
		})
	}
	wg.Wait()
}

// increment retries one increment until it is acknowledged, and reports
// whether it was.
func (wl *incrementWorkload) increment(client *http.Client, res string) bool {
	for attempt := 0; attempt < wl.maxAttempts && time.Now().Before(wl.deadline); attempt++ {
		status := wl.edit(client, res)
		wl.mu.Lock()
		wl.statuses[status]++
		wl.mu.Unlock()
		switch status {
		case http.StatusOK, http.StatusCreated, http.StatusNoContent:
			wl.acked[res].Add(1)
			return true
		case http.StatusPreconditionFailed, http.StatusConflict:
			wl.refused.Add(1)
		case http.StatusPreconditionRequired:
			wl.preconditionRequired.Add(1)
		case http.StatusServiceUnavailable:
			wl.unavailable.Add(1)
			time.Sleep(50 * time.Millisecond)
		default:
			wl.errors.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	}
	return false
}

func (wl *incrementWorkload) next() string {
	return wl.bases[int(wl.turn.Add(1))%len(wl.bases)]
}

// edit performs one read-modify-write and returns the status of the write,
// or 0 when the exchange failed.
func (wl *incrementWorkload) edit(client *http.Client, res string) int {
	resp, err := client.Get(wl.next() + res)
	if err != nil {
		return 0
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	n, err := strconv.Atoi(strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK || err != nil {
		return 0
	}
	req, _ := http.NewRequest(http.MethodPut, wl.next()+res, strings.NewReader(counterBody(n+1)))
	tag, date := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	switch {
	case wl.sendBack == sendBackDate:
		req.Header.Set("If-Unmodified-Since", date)
	case tag != "":
		req.Header.Set("If-Match", tag)
	case wl.sendBack == sendBackWhatWasRead:
		req.Header.Set("If-Unmodified-Since", date)
	}
	return statusOf(client, req)
}

// outcome is what a run of the workload did to the counters.
type outcome struct {
	acked, lost int64
}

// result reads the final counters with read (straight from the backend)
// and compares them with the acknowledged increments; every counter starts
// at 0.
func (wl *incrementWorkload) result(t *testing.T, read func(res string) int) outcome {
	t.Helper()
	var o outcome
	for _, res := range wl.resources {
		acked := wl.acked[res].Load()
		o.acked += acked
		o.lost += acked - int64(read(res))
	}
	return o
}

// summary is the run's numbers for the test log.
func (wl *incrementWorkload) summary(o outcome) string {
	wl.mu.Lock()
	codes := make([]int, 0, len(wl.statuses))
	for code := range wl.statuses {
		codes = append(codes, code)
	}
	sort.Ints(codes)
	var statuses []string
	for _, code := range codes {
		statuses = append(statuses, fmt.Sprintf("%d×%d", wl.statuses[code], code))
	}
	wl.mu.Unlock()
	return fmt.Sprintf("%d of %d acknowledged increments lost; %d refused (412/409), %d 428, %d 503, %d errors; %d of %d clients gave up; writes answered %s",
		o.lost, o.acked, wl.refused.Load(), wl.preconditionRequired.Load(), wl.unavailable.Load(), wl.errors.Load(),
		wl.gaveUp.Load(), wl.clients, strings.Join(statuses, " "))
}

// requireLosses checks a control run, straight at the backend: it must lose
// increments, or the test cannot show what the guard prevents.
func (wl *incrementWorkload) requireLosses(t *testing.T, setup string, read func(res string) int) outcome {
	t.Helper()
	o := wl.result(t, read)
	t.Logf("%s, straight at the backend: %s", setup, wl.summary(o))
	if o.lost == 0 {
		t.Errorf("%s: the control run straight at the backend lost nothing: the test cannot show what the guard prevents", setup)
	}
	return o
}

// requireNoneLost checks a guarded run: nothing lost, every increment
// acknowledged, no client gave up, and the clients contended.
func (wl *incrementWorkload) requireNoneLost(t *testing.T, setup string, read func(res string) int) outcome {
	t.Helper()
	o := wl.result(t, read)
	t.Logf("%s, through write_guard: %s", setup, wl.summary(o))
	switch {
	case o.lost > 0:
		t.Errorf("%s: write_guard lost %d of %d acknowledged increments", setup, o.lost, o.acked)
	case o.lost < 0:
		// Writes whose answer never came were applied; they could hide
		// as many lost ones.
		t.Errorf("%s: the counters hold %d increments more than were acknowledged (%d writes failed without an answer)", setup, -o.lost, wl.errors.Load())
	}
	if n := wl.gaveUp.Load(); n != 0 {
		t.Errorf("%s: %d of %d clients gave up (%d attempts per increment, or the deadline)", setup, n, wl.clients, wl.maxAttempts)
	}
	if want := int64(wl.clients * wl.perClient); o.acked != want {
		t.Errorf("%s: %d of %d increments acknowledged", setup, o.acked, want)
	}
	if wl.refused.Load() == 0 {
		t.Errorf("%s: no write was ever refused: the workload did not contend", setup)
	}
	return o
}

// counterAt reads a counter with a plain GET of base+res.
func counterAt(t *testing.T, base string) func(res string) int {
	return func(res string) int {
		t.Helper()
		r := send(t, http.MethodGet, base+res, "")
		n, err := strconv.Atoi(strings.TrimSpace(r.body))
		if r.status != http.StatusOK || err != nil {
			t.Fatalf("reading the counter %s%s: %d %q", base, res, r.status, r.body)
		}
		return n
	}
}
