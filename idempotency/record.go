// Package idempotency holds what write_guard keeps of requests that carry
// an Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): the
// parsing of the field, the records of the requests and their answers, the
// interface of the stores that keep them, and the store in memory. The
// Redis store is in package redisstore. It knows nothing of Caddy.
package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// State is where a record stands.
type State uint8

const (
	// Absent: no record; whoever claims the key serves the request.
	Absent State = iota
	// InFlight: a request with the key is being served.
	InFlight
	// Finished: the request's answer is stored, to be replayed.
	Finished
	// Unknown: the request was forwarded and its answer lost; whether it
	// was applied is unknown, and it must not be forwarded again.
	Unknown
)

var stateNames = [...]string{Absent: "absent", InFlight: "in_flight", Finished: "finished", Unknown: "unknown"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "invalid"
}

// Fingerprint is a digest of what a request asks for: a key sent again
// with another fingerprint names another request.
type Fingerprint [32]byte

// Answer is a stored answer: its status, the header fields kept for
// replay, and its body unless BodyOmitted (it was too large to keep).
type Answer struct {
	Status      int         `json:"status"`
	Header      http.Header `json:"header,omitempty"`
	Body        []byte      `json:"body,omitempty"`
	BodyOmitted bool        `json:"body_omitted,omitempty"`
}

// Record is what a store holds under a key's id. Records are values: a
// store never changes an Answer it handed out.
type Record struct {
	State       State
	Fingerprint Fingerprint
	// Answer is set when Finished.
	Answer *Answer
	// Expires is when a Finished or Unknown record is forgotten.
	Expires time.Time
}

// Store keeps records. Its methods are safe for concurrent use.
type Store interface {
	// Claim makes the caller the one request that serves id, recording
	// fp, and returns its ticket; or, when a record holds id already
	// (in flight, finished or unknown), returns that record and no ticket.
	Claim(ctx context.Context, id string, fp Fingerprint) (Ticket, Record, error)
	// Wait returns once id's record is no longer in flight, or ctx ends.
	Wait(ctx context.Context, id string) error
	// Lookup returns id's record; Absent when there is none.
	Lookup(ctx context.Context, id string) (Record, error)
	// Forget removes id's record, and reports whether there was one.
	Forget(ctx context.Context, id string) (bool, error)
}

// Ticket is a claim on an id: exactly one of its methods is called, once.
type Ticket interface {
	// Finish replaces the claim by a record of state (Finished, with
	// answer, or Unknown) kept for ttl.
	Finish(ctx context.Context, state State, answer *Answer, ttl time.Duration) error
	// Release gives the id up: the next request with it is served.
	Release(ctx context.Context) error
}

// ErrClaimLost: the claim was no longer the caller's when it ended (it
// expired unrenewed, or was forgotten): nothing was recorded.
var ErrClaimLost = errors.New("idempotency: the claim was lost before the request ended")

// wireRecord is a finished or unknown record as stores that serialize
// records keep it.
type wireRecord struct {
	State       State   `json:"state"`
	Fingerprint []byte  `json:"fp"`
	Answer      *Answer `json:"answer,omitempty"`
}

// EncodeRecord serializes what a finished or unknown record holds (its
// expiry is the store's business).
func EncodeRecord(state State, fp Fingerprint, answer *Answer) ([]byte, error) {
	return json.Marshal(wireRecord{State: state, Fingerprint: fp[:], Answer: answer})
}

// DecodeRecord reads what EncodeRecord wrote.
func DecodeRecord(data []byte) (Record, error) {
	var w wireRecord
	if err := json.Unmarshal(data, &w); err != nil {
		return Record{}, err
	}
	if len(w.Fingerprint) != len(Fingerprint{}) || (w.State != Finished && w.State != Unknown) || (w.State == Finished) != (w.Answer != nil) {
		return Record{}, errors.New("idempotency: malformed record")
	}
	r := Record{State: w.State, Answer: w.Answer}
	copy(r.Fingerprint[:], w.Fingerprint)
	return r, nil
}

// Size is about how many bytes an answer takes in memory.
func (a *Answer) Size() int64 {
	if a == nil {
		return 0
	}
	n := int64(64 + len(a.Body))
	for k, vs := range a.Header {
		n += int64(len(k)) + 16
		for _, v := range vs {
			n += int64(len(v)) + 16
		}
	}
	return n
}

// WithoutBody returns a copy of the answer without its body, as it is
// kept when the body is too large.
func (a *Answer) WithoutBody() *Answer {
	c := *a
	c.Body, c.BodyOmitted = nil, true
	return &c
}
