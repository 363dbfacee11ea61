package writeguard

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/writeguard/caddy-writeguard/idempotency"
)

// handleIdempotency looks up (GET) or forgets (DELETE) the record of an
// Idempotency-Key:
//
//	/write_guard/idempotency?key=<key>&method=<method>&resource=<resource key>[&scope=<scope value>]
//	/write_guard/idempotency?record=<id>
//
// key is the key as the client sent it, without the quotes; method the
// request's (default POST); resource the guard's key of the resource, in
// any spelling the resource API takes; scope the value the site's `scope`
// template had for the client (by default its Authorization field, empty
// when it sent none). record is a record's id as stores know it. Every
// store in use is asked: the process's memory and each Redis.
func (adminAPI) handleIdempotency(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		return methodNotAllowed()
	}
	q := r.URL.Query()
	var ids []string
	if id := q.Get("record"); id != "" {
		ids = []string{id}
	} else {
		key, resource := q.Get("key"), q.Get("resource")
		if key == "" || resource == "" {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("give record, or key and resource (and method, scope)")}
		}
		method := strings.ToUpper(q.Get("method"))
		if method == "" {
			method = http.MethodPost
		}
		_, spellings := lookupKeys(resource)
		for _, s := range spellings {
			ids = append(ids, idempotencyRecordID(method, s, q.Get("scope"), key))
		}
	}
	stores := idempotencyStores()
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	var views []idemRecordView
	for _, st := range stores {
		for _, id := range ids {
			rec, err := st.store.Lookup(ctx, id)
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
			}
			if rec.State == idempotency.Absent {
				continue
			}
			if r.Method == http.MethodDelete {
				if _, err := st.store.Forget(ctx, id); err != nil {
					return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
				}
			}
			views = append(views, viewOf(st, id, rec))
			break
		}
	}
	if len(views) == 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		return json.NewEncoder(w).Encode(map[string]any{"error": "no store holds a record of this key", "records_tried": ids})
	}
	if r.Method == http.MethodDelete {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return writeJSON(w, map[string]any{"records": views})
}

// idemRecordView is what the admin API shows of a record.
type idemRecordView struct {
	Store     string     `json:"store"` // memory or redis
	KeyPrefix string     `json:"key_prefix,omitempty"`
	Record    string     `json:"record"`
	State     string     `json:"state"`
	Expires   *time.Time `json:"expires,omitempty"`
	Status    int        `json:"status,omitempty"`
	Location  string     `json:"location,omitempty"`
	BodyBytes int        `json:"body_bytes,omitempty"`
	Omitted   bool       `json:"body_omitted,omitempty"`
}

func viewOf(st namedIdemStore, id string, rec idempotency.Record) idemRecordView {
	v := idemRecordView{Store: st.kind, KeyPrefix: st.prefix, Record: id, State: rec.State.String()}
	if !rec.Expires.IsZero() {
		exp := rec.Expires.UTC().Truncate(time.Second)
		v.Expires = &exp
	}
	if a := rec.Answer; a != nil {
		v.Status, v.Location, v.BodyBytes, v.Omitted = a.Status, a.Header.Get("Location"), len(a.Body), a.BodyOmitted
	}
	return v
}

type namedIdemStore struct {
	kind, prefix string
	store        idempotency.Store
}

// idempotencyStores lists the stores in use: the process's memories and
// every Redis.
func idempotencyStores() []namedIdemStore {
	var stores []namedIdemStore
	pool.Range(func(_, value any) bool {
		switch v := value.(type) {
		case pooledIdemMemory:
			stores = append(stores, namedIdemStore{kind: "memory", store: v.Memory})
		case sharedRedis:
			stores = append(stores, namedIdemStore{kind: "redis", prefix: v.Config().KeyPrefix, store: v.Idempotency(0)})
		}
		return true
	})
	return stores
}
