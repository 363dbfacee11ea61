package idempotency

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"
)

// clock is a settable time for the store.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func fp(s string) (f Fingerprint) {
	copy(f[:], s)
	return f
}

func answer(body string) *Answer {
	return &Answer{Status: 201, Header: map[string][]string{"Location": {"/orders/1"}}, Body: []byte(body)}
}

func mustClaim(t *testing.T, s Store, id string, f Fingerprint) Ticket {
	t.Helper()
	tk, rec, err := s.Claim(context.Background(), id, f)
	if err != nil || tk == nil {
		t.Fatalf("claim of %s: ticket %v, record %v, %v", id, tk, rec.State, err)
	}
	return tk
}

func TestMemoryLifeOfARecord(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	m := NewMemory(MemoryConfig{MaxBytes: 1 << 20, Now: c.now})
	tk := mustClaim(t, m, "k", fp("a"))

	// In flight: a second claim gets the record, not a ticket.
	if tk2, rec, _ := m.Claim(ctx, "k", fp("a")); tk2 != nil || rec.State != InFlight || rec.Fingerprint != fp("a") {
		t.Fatalf("claim while in flight: ticket %v, state %v", tk2, rec.State)
	}
	if err := tk.Finish(ctx, Finished, answer("{}"), time.Hour); err != nil {
		t.Fatal(err)
	}
	_, rec, _ := m.Claim(ctx, "k", fp("b"))
	if rec.State != Finished || rec.Fingerprint != fp("a") || string(rec.Answer.Body) != "{}" || rec.Answer.Header.Get("Location") != "/orders/1" {
		t.Fatalf("claim after finish: %+v", rec)
	}
	if got, _ := m.Lookup(ctx, "k"); got.State != Finished {
		t.Fatalf("lookup: %v", got.State)
	}

	// Expired: the key is free again.
	c.advance(time.Hour)
	if got, _ := m.Lookup(ctx, "k"); got.State != Absent {
		t.Fatalf("lookup after ttl: %v", got.State)
	}
	mustClaim(t, m, "k", fp("b"))
}

func TestMemoryRelease(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(MemoryConfig{MaxBytes: 1 << 20})
	tk := mustClaim(t, m, "k", fp("a"))
	if err := tk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.Records != 0 || s.Bytes != 0 {
		t.Fatalf("after release: %+v", s)
	}
	mustClaim(t, m, "k", fp("a"))
}

func TestMemoryForgetLosesTheClaim(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(MemoryConfig{MaxBytes: 1 << 20})
	tk := mustClaim(t, m, "k", fp("a"))
	if ok, _ := m.Forget(ctx, "k"); !ok {
		t.Fatal("forget found nothing")
	}
	tk2 := mustClaim(t, m, "k", fp("a"))
	if err := tk.Finish(ctx, Finished, answer("old"), time.Hour); !errors.Is(err, ErrClaimLost) {
		t.Fatalf("finish of a forgotten claim: %v", err)
	}
	if err := tk2.Finish(ctx, Finished, answer("new"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if rec, _ := m.Lookup(ctx, "k"); string(rec.Answer.Body) != "new" {
		t.Fatalf("the forgotten claim overwrote the new record: %q", rec.Answer.Body)
	}
	if ok, _ := m.Forget(ctx, "nothing"); ok {
		t.Fatal("forget of an unknown id reported a record")
	}
}

// The bound evicts finished records oldest first, never one in flight.
func TestMemoryEvictsOldestFinished(t *testing.T) {
	ctx := context.Background()
	evictions := 0
	body := string(bytes.Repeat([]byte("x"), 1000))
	one := entryOverhead + int64(len("k0")) + answer(body).Size()
	m := NewMemory(MemoryConfig{MaxBytes: 3*one + 2*(entryOverhead+2), OnEvict: func() { evictions++ }})

	inFlight := mustClaim(t, m, "f0", fp("f"))
	_ = inFlight
	inFlight2 := mustClaim(t, m, "f1", fp("f"))
	_ = inFlight2
	for i := range 5 {
		id := "k" + strconv.Itoa(i)
		if err := mustClaim(t, m, id, fp("a")).Finish(ctx, Finished, answer(body), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if evictions != 2 {
		t.Errorf("%d evictions, want 2", evictions)
	}
	for i, want := range []State{Absent, Absent, Finished, Finished, Finished} {
		if rec, _ := m.Lookup(ctx, "k"+strconv.Itoa(i)); rec.State != want {
			t.Errorf("k%d: %v, want %v", i, rec.State, want)
		}
	}
	for _, id := range []string{"f0", "f1"} {
		if rec, _ := m.Lookup(ctx, id); rec.State != InFlight {
			t.Errorf("%s, in flight, was evicted: %v", id, rec.State)
		}
	}
	if s := m.Stats(); s.Bytes > s.MaxBytes || s.Evicted != 2 || s.Records != 5 {
		t.Errorf("stats %+v", s)
	}
}

// A record that cannot fit beside the records in flight is kept without
// its body: never forgotten at once, since the key could be applied again.
func TestMemoryKeepsLastRecordWithoutBody(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(MemoryConfig{MaxBytes: 2000})
	for i := range 5 {
		mustClaim(t, m, "f"+strconv.Itoa(i), fp("f"))
	}
	tk := mustClaim(t, m, "k", fp("a"))
	if err := tk.Finish(ctx, Finished, answer(string(bytes.Repeat([]byte("x"), 4000))), time.Hour); err != nil {
		t.Fatal(err)
	}
	rec, _ := m.Lookup(ctx, "k")
	if rec.State != Finished || !rec.Answer.BodyOmitted || rec.Answer.Body != nil || rec.Answer.Status != 201 || rec.Answer.Header.Get("Location") == "" {
		t.Fatalf("record: %+v", rec.Answer)
	}
}

func TestMemoryExpiredRecordsLeave(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	m := NewMemory(MemoryConfig{MaxBytes: 1 << 20, Now: c.now})
	mustClaim(t, m, "old", fp("a")).Finish(ctx, Unknown, nil, time.Second)
	c.advance(2 * time.Second)
	mustClaim(t, m, "new", fp("a")).Finish(ctx, Finished, answer("{}"), time.Hour)
	if s := m.Stats(); s.Records != 1 || s.Evicted != 0 {
		t.Fatalf("an expired record stayed, or counted as evicted: %+v", s)
	}
}

func TestMemoryWait(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(MemoryConfig{MaxBytes: 1 << 20})
	if err := m.Wait(ctx, "none"); err != nil {
		t.Fatal(err)
	}
	tk := mustClaim(t, m, "k", fp("a"))
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := m.Wait(short, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for a claim that stays: %v", err)
	}
	waited := make(chan error)
	go func() { waited <- m.Wait(ctx, "k") }()
	tk.Finish(ctx, Finished, answer("{}"), time.Hour)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, "k"); err != nil {
		t.Fatal(err)
	}
}

func TestRecordEncoding(t *testing.T) {
	a := answer("body")
	data, err := EncodeRecord(Finished, fp("x"), a)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := DecodeRecord(data)
	if err != nil || rec.State != Finished || rec.Fingerprint != fp("x") || string(rec.Answer.Body) != "body" || rec.Answer.Header.Get("Location") != "/orders/1" {
		t.Fatalf("%+v %v", rec, err)
	}
	data, _ = EncodeRecord(Unknown, fp("y"), nil)
	if rec, err := DecodeRecord(data); err != nil || rec.State != Unknown {
		t.Fatalf("%+v %v", rec, err)
	}
	for _, bad := range []string{`{}`, `{"state":2,"fp":"AA=="}`, `nonsense`} {
		if _, err := DecodeRecord([]byte(bad)); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}
