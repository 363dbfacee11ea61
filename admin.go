package writeguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/reskey"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the guard's state on Caddy's admin endpoint, with the
// admin endpoint's own protections (listener, origins, remote admin):
//
//	GET    /write_guard/stats              locks held, writers waiting, cache counters, Redis deployments
//	GET    /write_guard/resource?key=<key> what the caches and Redis know of one resource
//	DELETE /write_guard/resource?key=<key> forget it, so the next write asks the upstream
//	DELETE /write_guard/resources          forget every resource's version, here and in Redis
//	GET    /write_guard/idempotency?key=…  the record of an Idempotency-Key (admin_idempotency.go)
//	DELETE /write_guard/idempotency?key=…  forget it: the next request with the key is served
//
// A key is written as the guard builds it, a site part and the path
// ("example.com/notes/1"), but in any spelling that requests may use for
// it: see lookupKeys.
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
		{Pattern: "/write_guard/resources", Handler: caddy.AdminHandlerFunc(a.handleResources)},
		{Pattern: "/write_guard/idempotency", Handler: caddy.AdminHandlerFunc(a.handleIdempotency)}, // admin_idempotency.go
		{Pattern: "/write_guard/etag_sources", Handler: caddy.AdminHandlerFunc(a.handleETagSources)},
	}
}

// handleResources forgets every version this process's caches and the Redis
// stores in use hold, so that every next write asks the upstream: after
// writes that bypassed the guard, or a key changed on one instance after
// another.
func (adminAPI) handleResources(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodDelete {
		return methodNotAllowed()
	}
	processState().generations.AdvanceAll()
	var forgot int64
	var failed []error
	pool.Range(func(_, value any) bool {
		if s, ok := value.(sharedRedis); ok {
			ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
			n, err := s.ForgetEveryVersion(ctx)
			cancel()
			forgot += n
			if err != nil {
				failed = append(failed, err)
			}
		}
		return true
	})
	if len(failed) > 0 {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("the caches forgot every version, but Redis could not be made to: %v", errors.Join(failed...))}
	}
	return writeJSON(w, map[string]int64{"redis_versions_forgotten": forgot})
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
	// Redis reports, for each Redis store in use, whether that deployment
	// can evict the guard's keys (which loses updates) and how many locks
	// were lost.
	Redis []redisReport `json:"redis"`
	// ETagSources lists the sites whose upstream entity-tags the guard
	// stopped trusting (etags auto), with the evidence.
	ETagSources []tagReuse `json:"etag_sources"`
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
		Redis:     redisStoreReports(),
	}
	resp.ETagSources = []tagReuse{}
	if reused := currentReusedTags(); reused != nil {
		resp.ETagSources = reused.list()
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

// resourceState is what one cache, or one Redis store, knows of a
// resource.
type resourceState struct {
	ETags string `json:"etags,omitempty"`
	TTL   string `json:"cache_ttl,omitempty"`
	// KeyPrefix tells Redis stores apart.
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Key is the spelling under which the state was found.
	Key   string `json:"key,omitempty"`
	Known bool   `json:"known"`
	// Locked: a write holds the resource's Redis lock, and with it the
	// version it found, which it puts back unless forgotten meanwhile.
	Locked bool `json:"locked,omitempty"`
	// Exists, ETag and LastModified are set when Known.
	Exists       bool       `json:"exists,omitempty"`
	ETag         string     `json:"etag,omitempty"`
	LastModified *time.Time `json:"last_modified,omitempty"`
	// Superseded: tags of versions that writes through the guard replaced;
	// writes naming only these are refused without asking the upstream.
	Superseded []string `json:"superseded,omitempty"`
	// GuardTag: the ETag is the guard's own; Crowded: Last-Modified names
	// more than this version (dates.go); TagsReused: recorded after the
	// upstream's tags were found reused (auto_sites.go).
	GuardTag   bool `json:"guard_tag,omitempty"`
	Crowded    bool `json:"crowded,omitempty"`
	TagsReused bool `json:"tags_reused,omitempty"`
}

func (adminAPI) handleResource(w http.ResponseWriter, r *http.Request) error {
	given := r.URL.Query().Get("key")
	if given == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("the key query parameter is required")}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		return methodNotAllowed()
	}
	canonical, keys := lookupKeys(given)
	var caches []sharedCache
	var stores []sharedRedis
	pool.Range(func(_, value any) bool {
		switch v := value.(type) {
		case sharedCache:
			caches = append(caches, v)
		case sharedRedis:
			stores = append(stores, v)
		}
		return true
	})
	sort.Slice(caches, func(i, j int) bool {
		a, b := caches[i], caches[j]
		return a.etags+a.Config().TTL.String() < b.etags+b.Config().TTL.String()
	})

	cacheStates := make([]resourceState, 0, len(caches))
	for _, c := range caches {
		s := resourceState{ETags: c.etags, TTL: c.Config().TTL.String()}
		for _, k := range keys {
			if v, ok := c.Peek(k); ok {
				s.Key = k
				s.setVersion(v)
				break
			}
		}
		cacheStates = append(cacheStates, s)
	}
	storeStates, err := lookupStores(r.Context(), stores, keys)

	if r.Method == http.MethodGet {
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
		}
		resp := map[string]any{"key": canonical, "caches": cacheStates}
		if len(stores) > 0 {
			resp["stores"] = storeStates
		}
		return writeJSON(w, resp)
	}

	// Forgetting needs no lock: it can only make a write ask the upstream.
	forgot := false
	for i, s := range cacheStates {
		if s.Key != "" {
			caches[i].Forget(s.Key)
			forgot = true
		}
	}
	if err == nil {
		for i, s := range storeStates {
			if s.Key == "" {
				continue
			}
			ctx, cancel := context.WithTimeout(r.Context(), 2*stores[i].Config().Timeout)
			err = stores[i].Forget(ctx, s.Key)
			cancel()
			if err != nil {
				break
			}
			forgot = true
		}
	}
	if err != nil {
		if forgot {
			err = fmt.Errorf("forgot what this process knew of %s, but not what Redis knows: %v", canonical, err)
		}
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err}
	}
	if !forgot {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		return json.NewEncoder(w).Encode(map[string]any{
			"error": "nothing is known of this resource, so nothing was forgotten",
			"key":   canonical,
			"tried": keys,
		})
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *resourceState) setVersion(v etagcache.Version) {
	s.Known, s.Exists, s.ETag, s.Superseded = true, v.Exists, v.ETag, v.Superseded
	s.GuardTag, s.Crowded, s.TagsReused = v.Guard, v.Crowded, v.TagsReused
	if !v.LastModified.IsZero() {
		lm := v.LastModified.UTC()
		s.LastModified = &lm
	}
}

// lookupStores finds, in each Redis store, the first of keys under which it
// holds a version or a write holds the lock.
func lookupStores(ctx context.Context, stores []sharedRedis, keys []string) ([]resourceState, error) {
	states := make([]resourceState, 0, len(stores))
	for _, st := range stores {
		s := resourceState{KeyPrefix: st.Config().KeyPrefix}
		for _, k := range keys {
			c, cancel := context.WithTimeout(ctx, 2*st.Config().Timeout)
			v, known, _, locked, err := st.Peek(c, k)
			cancel()
			if err != nil {
				return states, fmt.Errorf("looking %s up in Redis: %v", k, err)
			}
			if known || locked {
				s.Key, s.Locked = k, locked
				if known {
					s.setVersion(v)
				}
				break
			}
		}
		states = append(states, s)
	}
	return states, nil
}

// lookupKeys returns the canonical form of a key given to the admin API,
// and the spellings to look it up under, best first.
//
// The guard builds keys from canonical parts of the request (key.go), so a
// key copied from a URL or typed by hand may differ from it in spelling
// only: "Example.COM:443/notes//1/". The admin API knows no site's options,
// and the key template is each site's own, so it canonicalizes generically:
// up to the first "/" the site part, lower-cased without trailing dot and
// without a default port (reskey.Host); from there the path, by
// reskey.Path, and a query after "?", by reskey.Query. The canonical form
// is the one with the default path options.
//
// The first spelling found is the one GET shows and DELETE forgets. Those
// that keep what was given come first, as no site builds them for another
// resource: the key as given (templates whose literal parts are not in
// canonical form); the path with its trailing slash, which sites that drop
// it never build; its letters in their case, which key_case_insensitive
// sites never build in upper case. Then those that drop something, for
// sites configured so: the trailing slash (the default), the case of
// letters, any port (as the default key takes the host), the site part
// (sites keyed by path alone, as the README advises for sites that accept
// any host). One of these can name a neighbour in a site configured
// otherwise ("/dir" where "/dir/" was meant and is not known): forgetting
// it costs that neighbour one version check, and GET shows the spelling
// found before anything is forgotten.
func lookupKeys(given string) (canonical string, keys []string) {
	site, path := given, ""
	if i := strings.IndexByte(given, '/'); i >= 0 {
		site, path = given[:i], given[i:]
	}
	path, query, hasQuery := strings.Cut(path, "?")
	if hasQuery {
		if query = reskey.Query(query); query != "" {
			query = "?" + query
		}
	}
	var paths []string
	for _, o := range [...]reskey.Options{
		{KeepTrailingSlash: true},
		{},
		{KeepTrailingSlash: true, CaseInsensitive: true},
		{CaseInsensitive: true},
	} {
		paths = append(paths, reskey.Path(path, o)+query)
	}
	sites := []string{reskey.Host(site), reskey.HostName(site)}
	canonical = sites[0] + paths[1]
	if name, ok := reloads.siteNameOf(reskey.HostName(site)); ok {
		// One of a site's names: the guard keys the site by its first.
		sites = append([]string{name}, sites...)
		canonical = name + paths[1]
	}
	if site != "" {
		sites = append(sites, "")
	}
	keys = []string{given}
	seen := map[string]bool{given: true}
	for _, s := range sites {
		for _, p := range paths {
			if k := s + p; !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	return canonical, keys
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

// handleETagSources lists the sites whose upstream tags the guard stopped
// trusting (GET), or trusts a site's tags again (DELETE ?site=), for an
// operator who has fixed the upstream: in this process, and in the marks
// of the Redis stores it uses. Other instances keep their switch until
// they restart, and versions recorded as TagsReused switch a site back on
// the next write that finds one, until they are replaced or expire.
func (adminAPI) handleETagSources(w http.ResponseWriter, r *http.Request) error {
	reused := currentReusedTags()
	switch r.Method {
	case http.MethodGet:
		list := []tagReuse{}
		if reused != nil {
			list = reused.list()
		}
		return writeJSON(w, list)
	case http.MethodDelete:
		site := r.URL.Query().Get("site")
		if site == "" {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("the site query parameter is required")}
		}
		var names []string
		if reused != nil {
			names = reused.names(site)
		}
		if len(names) == 0 || !reused.trust(site) {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("the guard tags no site %q itself", site)}
		}
		// Every instance sharing a Redis store would switch again on
		// reading its mark.
		var stores []sharedRedis
		pool.Range(func(_, value any) bool {
			if v, ok := value.(sharedRedis); ok {
				stores = append(stores, v)
			}
			return true
		})
		for _, st := range stores {
			ctx, cancel := context.WithTimeout(r.Context(), 2*st.Config().Timeout)
			for _, name := range names {
				if err := st.UnmarkSite(ctx, name); err != nil {
					cancel()
					return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("trusted again in this process, but the Redis store of key prefix %q still marks the site: %v", st.Config().KeyPrefix, err)}
				}
			}
			cancel()
		}
		if processState().generations != nil {
			// Versions learned with the guard's tags must not decide
			// writes named by the upstream's again.
			processState().generations.AdvanceAll()
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return methodNotAllowed()
}
