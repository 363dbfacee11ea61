package redisstore

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/idempotency"
	"github.com/writeguard/caddy-writeguard/internal/redistest"
)

func fingerprint(s string) (f idempotency.Fingerprint) {
	copy(f[:], s)
	return f
}

func claim(t *testing.T, i *Idempotency, id string, fp idempotency.Fingerprint) (idempotency.Ticket, idempotency.Record) {
	t.Helper()
	tk, rec, err := i.Claim(context.Background(), id, fp)
	if err != nil {
		t.Fatal(err)
	}
	return tk, rec
}

// Two instances share records: what one claimed, the other finds in
// flight, then finished; a released id can be claimed again.
func TestIdempotencyRecordsAcrossClients(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a := newStore(t, srv, Config{}).Idempotency(time.Second)
	b := newStore(t, srv, Config{}).Idempotency(time.Second)

	tk, _ := claim(t, a, "id1", fingerprint("x"))
	if tk == nil {
		t.Fatal("no ticket for a new id")
	}
	if tk2, rec := claim(t, b, "id1", fingerprint("x")); tk2 != nil || rec.State != idempotency.InFlight || rec.Fingerprint != fingerprint("x") {
		t.Fatalf("the other client: ticket %v, record %+v", tk2, rec)
	}
	answer := &idempotency.Answer{Status: 201, Header: http.Header{"Location": {"/orders/7"}}, Body: []byte(`{"id":7}`)}
	if err := tk.Finish(ctx, idempotency.Finished, answer, time.Hour); err != nil {
		t.Fatal(err)
	}
	_, rec := claim(t, b, "id1", fingerprint("y"))
	if rec.State != idempotency.Finished || rec.Fingerprint != fingerprint("x") || string(rec.Answer.Body) != `{"id":7}` || rec.Answer.Header.Get("Location") != "/orders/7" {
		t.Fatalf("finished record: %+v", rec)
	}
	if got, err := b.Lookup(ctx, "id1"); err != nil || got.State != idempotency.Finished || time.Until(got.Expires) < 59*time.Minute {
		t.Fatalf("lookup: %+v %v", got, err)
	}

	tk, _ = claim(t, a, "id2", fingerprint("x"))
	if err := tk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if tk, _ := claim(t, b, "id2", fingerprint("x")); tk == nil {
		t.Fatal("a released id could not be claimed")
	}

	tk, _ = claim(t, a, "id3", fingerprint("x"))
	tk.Finish(ctx, idempotency.Unknown, nil, time.Hour)
	if _, rec := claim(t, b, "id3", fingerprint("x")); rec.State != idempotency.Unknown {
		t.Fatalf("unknown record: %+v", rec)
	}
	if ok, err := b.Forget(ctx, "id3"); !ok || err != nil {
		t.Fatalf("forget: %v %v", ok, err)
	}
	if got, _ := a.Lookup(ctx, "id3"); got.State != idempotency.Absent {
		t.Fatalf("after forget: %v", got.State)
	}
}

// A claim lives its own TTL, renewed while the request runs, however long
// that is; the finished record lives the replay TTL.
func TestIdempotencyClaimRenewedThenReplayTTL(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client()
	i := newStore(t, srv, Config{}).Idempotency(300 * time.Millisecond)
	tk, _ := claim(t, i, "id", fingerprint("x"))
	key := i.key("id")
	if ttl := rdb.PTTL(ctx, key).Val(); ttl <= 0 || ttl > 300*time.Millisecond {
		t.Fatalf("claim TTL %v", ttl)
	}
	// Three claim TTLs later, the claim is still held.
	time.Sleep(900 * time.Millisecond)
	if rec, _ := i.Lookup(ctx, "id"); rec.State != idempotency.InFlight {
		t.Fatalf("a live claim expired: %v", rec.State)
	}
	if err := tk.Finish(ctx, idempotency.Finished, &idempotency.Answer{Status: 200}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, key).Val(); ttl < 59*time.Minute {
		t.Fatalf("replay TTL %v", ttl)
	}
}

// An instance that dies while its request runs stops renewing: its claim
// expires after the claim TTL and the id can be claimed again.
func TestIdempotencyOrphanClaimExpires(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	i := newStore(t, srv, Config{}).Idempotency(300 * time.Millisecond)
	tk, _ := claim(t, i, "id", fingerprint("x"))
	it := tk.(*idemTicket)
	close(it.stop) // the instance dies: no more renewals
	<-it.done
	deadline := time.Now().Add(5 * time.Second)
	for {
		tk2, rec := claim(t, i, "id", fingerprint("x"))
		if tk2 != nil {
			break
		}
		if rec.State != idempotency.InFlight || time.Now().After(deadline) {
			t.Fatalf("the orphan's claim never expired: %v", rec.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The orphan's late finish does not overwrite the new claim.
	it.stop = make(chan struct{})
	it.done = make(chan struct{})
	close(it.done)
	if err := it.end(ctx, idemFinish, it.fp[:], "{}", "1000"); !errors.Is(err, idempotency.ErrClaimLost) {
		t.Fatalf("the orphan's finish: %v", err)
	}
	if rec, _ := i.Lookup(ctx, "id"); rec.State != idempotency.InFlight {
		t.Fatalf("after the orphan's finish: %v", rec.State)
	}
}

// A renewal that finds the claim gone (forgotten) marks the ticket lost.
func TestIdempotencyClaimLost(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	i := newStore(t, srv, Config{}).Idempotency(300 * time.Millisecond)
	tk, _ := claim(t, i, "id", fingerprint("x"))
	i.Forget(ctx, "id")
	for deadline := time.Now().Add(5 * time.Second); !tk.(*idemTicket).Lost(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the renewals never found the claim gone")
		}
	}
	if err := tk.Release(ctx); !errors.Is(err, idempotency.ErrClaimLost) {
		t.Fatalf("release of a lost claim: %v", err)
	}
}

func TestIdempotencyWait(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	i := newStore(t, srv, Config{}).Idempotency(time.Second)
	if err := i.Wait(ctx, "none"); err != nil {
		t.Fatal(err)
	}
	tk, _ := claim(t, i, "id", fingerprint("x"))
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := i.Wait(short, "id"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for a held claim: %v", err)
	}
	waited := make(chan error)
	go func() { waited <- i.Wait(ctx, "id") }()
	tk.Finish(ctx, idempotency.Finished, &idempotency.Answer{Status: 200}, time.Hour)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
}

// Redis unreachable: every call fails, none hangs.
func TestIdempotencyRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	i := newStore(t, srv, Config{Timeout: 200 * time.Millisecond}).Idempotency(time.Second)
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := i.Claim(ctx, "id", fingerprint("x")); err == nil {
		t.Fatal("claim without Redis")
	}
	if _, err := i.Lookup(ctx, "id"); err == nil {
		t.Fatal("lookup without Redis")
	}
}
