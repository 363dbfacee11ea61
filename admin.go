package writeguard

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the guard's state on Caddy's admin endpoint, with the
// admin endpoint's own protections (listener, origins, remote admin):
//
//	GET    /write_guard/stats              locks held, writers waiting, cache counters
//	GET    /write_guard/resource?key=<key> what the caches know of one resource
//	DELETE /write_guard/resource?key=<key> forget it, so the next write asks the upstream
//
// A key is written as the guard builds it: by default the lower-cased host
// without a default port, then the canonical path ("example.com/notes/1").
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.write_guard",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes of the guard.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/write_guard/stats", Handler: caddy.AdminHandlerFunc(a.handleStats)},
		{Pattern: "/write_guard/resource", Handler: caddy.AdminHandlerFunc(a.handleResource)},
	}
}

type statsResponse struct {
	// LocksHeld counts resources locked by a write in progress.
	LocksHeld int64 `json:"locks_held"`
	// Waiting counts writes waiting for a resource's lock.
	Waiting int64 `json:"waiting"`
	// Tracked counts resources the lock manager has an entry for (held or
	// waited for); 0 when no write is in progress.
	Tracked int          `json:"tracked"`
	Caches  []cacheStats `json:"caches"`
}

type cacheStats struct {
	ETags      string `json:"etags"`
	MaxEntries int64  `json:"max_entries,omitempty"`
	MaxBytes   int64  `json:"max_bytes,omitempty"`
	TTL        string `json:"ttl"`
	Hits       uint64 `json:"hits"`
	Misses     uint64 `json:"misses"`
	Evictions  uint64 `json:"evictions"`
	Rejections uint64 `json:"rejections"`
	Drops      uint64 `json:"drops"`
	// Cost is the capacity in use, in the unit of the bound: entries, or
	// approximate bytes.
	Cost    int64 `json:"cost"`
	MaxCost int64 `json:"max_cost"`
}

func (adminAPI) handleStats(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed()
	}
	locks := processState().locks
	resp := statsResponse{
		LocksHeld: locks.Held(),
		Waiting:   locks.Waiting(),
		Tracked:   locks.Len(),
		Caches:    []cacheStats{},
	}
	pool.Range(func(key, value any) bool {
		switch v := value.(type) {
		case sharedCache:
			s := v.Stats()
			cfg := v.Config()
			resp.Caches = append(resp.Caches, cacheStats{
				ETags:      v.etags,
				MaxEntries: cfg.MaxEntries, MaxBytes: cfg.MaxBytes, TTL: cfg.TTL.String(),
				Hits: s.Hits, Misses: s.Misses, Evictions: s.Evictions, Rejections: s.Rejections, Drops: s.Drops,
				Cost: s.Cost, MaxCost: s.MaxCost,
			})
		}
		return true
	})
	sort.Slice(resp.Caches, func(i, j int) bool {
		a, b := resp.Caches[i], resp.Caches[j]
		return a.ETags+a.TTL < b.ETags+b.TTL
	})
	return writeJSON(w, resp)
}

// resourceState is what one cache knows of a resource.
type resourceState struct {
	ETags string `json:"etags"`
	TTL   string `json:"cache_ttl"`
	Known bool   `json:"known"`
	// Exists, ETag and LastModified are set when Known.
	Exists       bool       `json:"exists,omitempty"`
	ETag         string     `json:"etag,omitempty"`
	LastModified *time.Time `json:"last_modified,omitempty"`
	// Superseded: tags of versions that writes through the guard replaced;
	// writes naming only these are refused without asking the upstream.
	Superseded []string `json:"superseded,omitempty"`
}

func (adminAPI) handleResource(w http.ResponseWriter, r *http.Request) error {
	key := r.URL.Query().Get("key")
	if key == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("the key query parameter is required")}
	}
	var caches []sharedCache
	pool.Range(func(_, value any) bool {
		if c, ok := value.(sharedCache); ok {
			caches = append(caches, c)
		}
		return true
	})
	switch r.Method {
	case http.MethodGet:
		states := []resourceState{}
		for _, c := range caches {
			s := resourceState{ETags: c.etags, TTL: c.Config().TTL.String()}
			if v, ok := c.Peek(key); ok {
				s.Known, s.Exists, s.ETag, s.Superseded = true, v.Exists, v.ETag, v.Superseded
				if !v.LastModified.IsZero() {
					lm := v.LastModified.UTC()
					s.LastModified = &lm
				}
			}
			states = append(states, s)
		}
		return writeJSON(w, map[string]any{"key": key, "caches": states})
	case http.MethodDelete:
		// Forgetting needs no lock: it can only make a write ask the
		// upstream.
		for _, c := range caches {
			c.Forget(key)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return methodNotAllowed()
}

func methodNotAllowed() error {
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("method not allowed")}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = (*adminAPI)(nil)
