// Package writeguard is a Caddy HTTP handler that stops lost updates in front
// of backends that apply writes last-writer-wins. It requires preconditions
// (If-Match, If-Unmodified-Since, If-None-Match) on writes, checks them
// against the upstream's current version while holding a per-resource lock,
// and forwards only the writes whose preconditions hold.
package writeguard

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/writeguard/caddy-writeguard/etagcache"
	"github.com/writeguard/caddy-writeguard/lockmgr"
	"github.com/writeguard/caddy-writeguard/precondition"
	"github.com/writeguard/caddy-writeguard/reskey"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("write_guard", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("write_guard", httpcaddyfile.Before, "reverse_proxy")
}

// Defaults of the handler's options.
const (
	DefaultLockTimeout  = 30 * time.Second
	DefaultCacheSize    = 1_000_000
	DefaultCacheTTL     = 10 * time.Minute
	DefaultMaxBody      = 10 << 20
	DefaultMaxWaiters   = 128
	DefaultWriteTimeout = 30 * time.Second
	defaultKey          = "{http.write_guard.site}{http.request.uri.path}"
)

var defaultMethods = []string{http.MethodPut, http.MethodPatch, http.MethodDelete}

var defaultMethodOverride = []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"}

// queryPlaceholders are the placeholders through which a key can depend on
// the query string (the Caddyfile's {uri} and {query} expand to them).
var queryPlaceholders = []string{"{http.request.uri}", "{http.request.uri.query", "{http.request.orig_uri}", "{http.request.orig_uri.query"}

// Handler enforces preconditions on writes before they reach the next
// handler (normally reverse_proxy), so that a write based on an old version
// of a resource is refused instead of silently overwriting a newer one.
//
// For every guarded request it parses If-Match, If-None-Match and
// If-Unmodified-Since; refuses writes that carry none of them (428 by
// default); waits for the resource's lock; looks up the resource's current
// version in its cache, or asks the upstream with a HEAD (GET where HEAD is
// refused) through the next handler; evaluates the preconditions as RFC 9110
// section 13.2.2 prescribes (412 when they fail); forwards the write; and
// records the version the upstream answered with before releasing the lock.
// GET and HEAD responses passing through teach the cache the current
// versions. Errors are application/problem+json (RFC 9457).
type Handler struct {
	// Methods that are guarded. Default: PUT, PATCH and DELETE.
	Methods []string `json:"methods,omitempty"`

	// Blind is what happens to a guarded request that carries no
	// precondition at all: "428" answers 428 Precondition Required, "409"
	// answers 409 Conflict, "allow" lets it through (still serialized by
	// the resource's lock). Default: "428".
	Blind string `json:"blind,omitempty"`

	// ETagMatch selects how If-Match is compared with the current ETag.
	// "default" accepts weak ETags (as emitted by Express and many
	// frameworks) and strong ETags suffixed by Caddy's encode handler
	// ("abc-gzip" for "abc"); "strict" is RFC 9110's strong comparison,
	// under which a weak ETag never matches. Default: "default".
	ETagMatch string `json:"etag_match,omitempty"`

	// Key identifies the resource a request targets: requests with the same
	// key share one lock and one cached version, across the whole server.
	// Placeholders are expanded; {http.write_guard.site} is the site the
	// request belongs to: the first host name of the site's host matcher
	// whichever of its names the request used (with the port when the server
	// listens on another than 80 or 443), the request's own host when only a
	// wildcard matched it, and the server's listen address for a site that
	// matches every host. Default:
	// "{http.write_guard.site}{http.request.uri.path}".
	Key string `json:"key,omitempty"`

	// LockTimeout is how long a write may wait for another write to the
	// same resource before it is answered 409 Conflict with Retry-After.
	// Default: 30s.
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`

	// CacheSize bounds the cache of upstream versions by number of
	// resources. Default: 1000000 (when CacheBytes is not set).
	CacheSize int64 `json:"cache_size,omitempty"`

	// CacheBytes bounds the cache of upstream versions by approximate
	// memory instead. Default: unset.
	CacheBytes int64 `json:"cache_bytes,omitempty"`

	// CacheTTL is how long a learned version is trusted. Default: 10m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	// MaxBody is the largest request body a guarded write may carry, in
	// bytes. The body is read in full before the resource's lock is taken,
	// so that a slow upload cannot hold the lock; larger bodies are answered
	// 413. Default: 10485760 (10 MiB).
	MaxBody int64 `json:"max_body,omitempty"`

	// ETags selects who names versions. "auto" uses the upstream's ETag
	// where it is evidence of a version and the guard's own tag where it
	// is not: a representation without an ETag gets the guard's tag, and
	// once a write shows that the upstream gave a new version a tag an
	// earlier one had, the guard tags every representation of that site
	// itself (see README, "Where versions come from"). "upstream" always
	// uses the ETag and Last-Modified the upstream sends. "hash" always
	// tags: every 2xx GET response gets a SHA-256 digest of its body
	// (replacing the upstream's ETag), writes are checked against the
	// digest of the current representation, and a successful write's
	// answer carries the new tag. Default: "auto".
	ETags string `json:"etags,omitempty"`

	// HashMaxBody is the largest representation the guard tags itself, in
	// bytes (etags hash and auto). Larger responses pass untagged; writes
	// to such resources can use If-Unmodified-Since. Default: 16777216
	// (16 MiB).
	HashMaxBody int64 `json:"hash_max_body,omitempty"`

	// ReadFreshness says what answers to reads of guarded resources tell
	// caches. "no-cache" adds Cache-Control: no-cache to those that carry
	// neither Cache-Control nor Expires, so that browsers and client
	// libraries ask again (a 304 with a validator) instead of serving a
	// version the guard refuses writes on. "upstream" leaves answers as
	// the upstream sent them. Default: "no-cache".
	ReadFreshness string `json:"read_freshness,omitempty"`

	// Revalidate selects when a write's preconditions are checked against
	// the upstream itself rather than the cache: "miss" when the cache does
	// not know the resource's version, "always" before every write, which
	// costs one upstream request per write but also catches changes made by
	// writers that do not go through this proxy. Default: "miss".
	Revalidate string `json:"revalidate,omitempty"`

	// MaxBodyMemory is how much of a guarded write's body is held in
	// memory; the rest of a larger body (up to MaxBody) goes to a temporary
	// file in the system's temporary directory, removed when the request is
	// done. Default: 1048576 (1 MiB).
	MaxBodyMemory int64 `json:"max_body_memory,omitempty"`

	// MaxWaiters bounds how many writes may wait for one resource's lock;
	// a write beyond it is answered 409 Conflict with Retry-After at once
	// instead of joining an ever longer queue. Default: 128.
	MaxWaiters int `json:"max_waiters,omitempty"`

	// WriteTimeout bounds how long a guarded write holds its resource's
	// lock waiting for the upstream: the version check and the write
	// itself, until the upstream's response header arrives. When it
	// elapses the write is abandoned, the client gets 504 Gateway Timeout,
	// and the version is forgotten (the write may have been applied).
	// Default: 30s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// RevalidateAbandoned is how long, after a write was abandoned (at
	// write_timeout, or because the upstream or the client broke off before
	// the upstream answered), every write of that resource is checked
	// against the upstream instead of the cache: the upstream may still
	// apply the abandoned write, and a version learned before it did must
	// not be trusted. When the time is over, what was learned during it is
	// forgotten. Default: 10m.
	RevalidateAbandoned caddy.Duration `json:"revalidate_abandoned,omitempty"`

	// MethodOverride lists the request header fields through which a
	// client can ask a backend to treat a request as another method
	// (X-HTTP-Method-Override: PUT on a POST). A request is guarded when
	// its own method or the one such a field names is guarded, so that it
	// cannot slip past the guard under another name. Default:
	// X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override.
	MethodOverride []string `json:"method_override,omitempty"`

	// MethodOverrideOff turns method override fields into ordinary
	// fields, for backends that ignore them. Default: false.
	MethodOverrideOff bool `json:"method_override_off,omitempty"`

	// Refusals selects how refused requests are answered: "problem" writes
	// an application/problem+json body (RFC 9457); "handle_errors" hands
	// the refusal to the server's handle_errors routes as an error with the
	// refusal's status, and the problem's fields in the placeholders
	// {http.write_guard.problem.type}, .title, .detail, .header and .json
	// (the whole body), so that a site can answer in its own words.
	// Default: "problem".
	Refusals string `json:"refusals,omitempty"`

	// KeyTrailingSlash says whether a trailing slash makes another
	// resource: "ignore" gives "/doc/" and "/doc" one key, as most
	// frameworks route them alike or redirect one to the other; "keep"
	// keeps them apart, for backends that serve different things there.
	// Default: "ignore".
	KeyTrailingSlash string `json:"key_trailing_slash,omitempty"`

	// KeyCaseInsensitive gives paths that differ only in the case of ASCII
	// letters one key, for backends on case-insensitive file systems (IIS,
	// ASP.NET). Default: false.
	KeyCaseInsensitive bool `json:"key_case_insensitive,omitempty"`

	// Store says where locks and versions live: in this process (the
	// default), or in Redis, shared by several Caddy instances.
	Store *StoreConfig `json:"store,omitempty"`

	// OnStoreError is what happens to a guarded write when the store
	// (Redis) cannot be reached: "fail" refuses it with 503 and
	// Retry-After; "local" guards it with this process's own lock, asking
	// the upstream for the version every time, and no longer against
	// writes through other instances. Reads are never affected. Default:
	// "fail".
	OnStoreError string `json:"on_store_error,omitempty"`

	// Idempotency makes requests that carry an Idempotency-Key apply at
	// most once, and answers their retries with the first answer
	// (idempotency.go). Default: off.
	Idempotency *IdempotencyConfig `json:"idempotency,omitempty"`

	methods map[string]struct{}
	// revalidateAlways caches Revalidate == "always".
	revalidateAlways bool
	// revalidateReads: read_freshness no-cache (freshness.go).
	revalidateReads bool
	// keyTemplate is Key with canonical placeholders; "" for the default.
	keyTemplate string
	keyOptions  reskey.Options
	// overrideFields are the canonical names of the method override fields
	// in force.
	overrideFields []string
	matching       precondition.Matching
	// keyHasQuery tells whether the key depends on the query string; when it
	// does not, responses to requests with a query are no evidence of the
	// keyed resource's version.
	keyHasQuery bool
	// keyHasSite tells whether the key template names the site.
	keyHasSite bool
	sites      *siteCache
	// server is the server the handler was provisioned for, config its
	// configuration's guards, naming how it names resources (set once the
	// configuration serves), and unsettled whether another configuration
	// that serves names them otherwise (see reload.go).
	server    *caddyhttp.Server
	config    *liveConfig
	naming    string
	unsettled *atomic.Bool
	// redisUnsettled: Redis may still hold versions named otherwise.
	redisUnsettled *atomic.Bool
	// abandoned lists the resources whose write was abandoned lately;
	// forgetAll makes every cache of the process forget everything.
	abandoned *abandonedWrites
	// reused lists the sites whose upstream tags are distrusted
	// (auto_sites.go); with etags auto only.
	reused    *reusedTags
	forgetAll func()
	// reg is the process's live configurations.
	reg   *configRegistry
	locks *lockmgr.Manager
	// cache holds the versions learned and recorded in this process; store
	// holds the locks and versions that decide writes (store.go), versions
	// names them (versions.go).
	cache    *etagcache.Cache
	store    store
	versions versionSource
	timeouts *writeTimeouts
	// idem is the idempotency step, nil without `idempotency`.
	idem     *idempotent
	poolKeys []string
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.write_guard",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler and attaches it to the process-wide locks
// and version cache.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if len(h.Methods) == 0 {
		h.Methods = defaultMethods
	}
	h.methods = make(map[string]struct{}, len(h.Methods))
	for _, m := range h.Methods {
		h.methods[strings.ToUpper(m)] = struct{}{}
	}
	if h.Blind == "" {
		h.Blind = "428"
	}
	if h.ETagMatch == "strict" {
		h.matching = precondition.Strict
	}
	if h.LockTimeout == 0 {
		h.LockTimeout = caddy.Duration(DefaultLockTimeout)
	}
	if h.CacheSize == 0 && h.CacheBytes == 0 {
		h.CacheSize = DefaultCacheSize
	}
	if h.CacheTTL == 0 {
		h.CacheTTL = caddy.Duration(DefaultCacheTTL)
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.MaxBodyMemory == 0 {
		h.MaxBodyMemory = DefaultMaxBodyMemory
	}
	if h.MaxWaiters == 0 {
		h.MaxWaiters = DefaultMaxWaiters
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = caddy.Duration(DefaultWriteTimeout)
	}
	if h.RevalidateAbandoned == 0 {
		h.RevalidateAbandoned = caddy.Duration(DefaultRevalidateAbandoned)
	}
	h.overrideFields = nil
	if !h.MethodOverrideOff {
		fields := h.MethodOverride
		if len(fields) == 0 {
			fields = defaultMethodOverride
		}
		for _, f := range fields {
			h.overrideFields = append(h.overrideFields, http.CanonicalHeaderKey(f))
		}
	}
	if h.ETags != "upstream" && h.HashMaxBody == 0 {
		h.HashMaxBody = DefaultHashMaxBody
	}
	h.revalidateReads = h.ReadFreshness != "upstream"
	h.revalidateAlways = h.Revalidate == "always"
	if h.Key == defaultKey {
		h.Key = ""
	}
	for _, p := range queryPlaceholders {
		h.keyHasQuery = h.keyHasQuery || strings.Contains(h.Key, p)
	}
	h.keyTemplate = canonicalKeyTemplate(h.Key)
	h.keyHasSite = strings.Contains(h.keyTemplate, "{http.write_guard.site}")
	h.sites = new(siteCache)
	h.keyOptions = reskey.Options{
		KeepTrailingSlash: h.KeyTrailingSlash == "keep",
		CaseInsensitive:   h.KeyCaseInsensitive,
	}
	// Check before building anything: a bad option should be reported as
	// such, not as whatever failed while acting on it.
	if err := h.Validate(); err != nil {
		return err
	}

	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("write_guard metrics: %v", err)
	}

	shared := processState()
	h.locks = shared.locks
	// Set beforehand only by tests, which keep their handlers apart.
	if h.abandoned == nil {
		abandoned, key, err := attachAbandoned()
		if err != nil {
			return err
		}
		h.poolKeys = append(h.poolKeys, key)
		h.abandoned = abandoned
	}
	if h.reg == nil {
		h.reg = &reloads
	}
	h.forgetAll = shared.generations.AdvanceAll
	h.server = serverOf(ctx)
	h.unsettled = new(atomic.Bool)
	h.redisUnsettled = new(atomic.Bool)
	h.config = h.reg.join(ctx.Done(), h, h.forgetAll)

	cacheCfg := etagcache.Config{
		MaxEntries:  h.CacheSize,
		MaxBytes:    h.CacheBytes,
		TTL:         time.Duration(h.CacheTTL),
		Generations: shared.generations,
	}
	// Tags of the upstream and the guard's own never share a cache.
	etags := h.ETags
	switch etags {
	case "upstream":
		h.versions = upstreamVersions{h}
	case "hash":
		h.versions = &hashVersions{h: h, limit: h.HashMaxBody}
	default:
		etags = "auto"
		// Set beforehand only by tests, which keep their handlers apart.
		if h.reused == nil {
			reused, key, err := attachReusedTags()
			if err != nil {
				return err
			}
			h.poolKeys = append(h.poolKeys, key)
			h.reused = reused
		}
		h.versions = &autoVersions{h: h, up: upstreamVersions{h}, hash: &hashVersions{h: h, limit: h.HashMaxBody}, reused: h.reused}
	}
	cache, key, err := attachCache(cacheCfg, etags)
	if err != nil {
		return fmt.Errorf("write_guard cache: %v", err)
	}
	h.poolKeys = append(h.poolKeys, key)
	h.cache = cache
	h.timeouts = &writeTimeouts{d: time.Duration(h.WriteTimeout)}

	h.store = memoryStore{h.cache}
	if h.Store.redis() {
		shared, key, err := attachRedis(*h.Store, time.Duration(h.CacheTTL))
		if err != nil {
			return fmt.Errorf("write_guard store: %v", err)
		}
		h.poolKeys = append(h.poolKeys, key)
		h.store = &redisStore{h: h, redis: shared.Store, unseen: shared.unseen}
	}
	return h.provisionIdempotency()
}

// choices lists the words each option of a few words takes, its default
// first; "" is the default too.
var choices = map[string][]string{
	"blind":              {"428", "409", "allow"},
	"etag_match":         {"default", "strict"},
	"etags":              {"auto", "upstream", "hash"},
	"read_freshness":     {"no-cache", "upstream"},
	"revalidate":         {"miss", "always"},
	"key_trailing_slash": {"ignore", "keep"},
	"refusals":           {"problem", "handle_errors"},
	"on_store_error":     {"fail", "local"},
}

// checkChoice says whether value is one of option's words: the one check
// of them, for the Caddyfile and JSON alike.
func checkChoice(option, value string) error {
	if value == "" || slices.Contains(choices[option], value) {
		return nil
	}
	return fmt.Errorf("%s: %q is not one of %s", option, value, strings.Join(choices[option], ", "))
}

// choice is the field of one of the options in choices.
func (h *Handler) choice(option string) *string {
	switch option {
	case "blind":
		return &h.Blind
	case "etag_match":
		return &h.ETagMatch
	case "etags":
		return &h.ETags
	case "read_freshness":
		return &h.ReadFreshness
	case "revalidate":
		return &h.Revalidate
	case "key_trailing_slash":
		return &h.KeyTrailingSlash
	case "refusals":
		return &h.Refusals
	case "on_store_error":
		return &h.OnStoreError
	}
	panic("write_guard: no option " + option)
}

// Validate rejects configurations that cannot guard anything. Provision
// calls it too, before it builds any state from the options.
func (h *Handler) Validate() error {
	for m := range h.methods {
		switch m {
		case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodConnect:
			return fmt.Errorf("methods: %s is not a write and cannot be guarded", m)
		}
		if m == "" || strings.ContainsAny(m, " \t") {
			return fmt.Errorf("methods: %q is not a method name", m)
		}
	}
	for option := range choices {
		if err := checkChoice(option, *h.choice(option)); err != nil {
			return err
		}
	}
	if h.HashMaxBody < 0 {
		return fmt.Errorf("hash_max_body must not be negative")
	}
	if h.HashMaxBody > 0 && h.ETags == "upstream" {
		return fmt.Errorf("hash_max_body does not apply with etags upstream: the guard tags nothing itself")
	}
	if h.LockTimeout < 0 {
		return fmt.Errorf("lock_timeout must not be negative")
	}
	if h.CacheSize < 0 || h.CacheBytes < 0 {
		return fmt.Errorf("cache size must not be negative")
	}
	if h.CacheSize > 0 && h.CacheBytes > 0 {
		return fmt.Errorf("cache_size and cache_bytes are exclusive")
	}
	if h.CacheTTL < 0 {
		return fmt.Errorf("cache_ttl must not be negative")
	}
	if h.MaxBody < 0 || h.MaxBodyMemory < 0 {
		return fmt.Errorf("max_body and max_body_memory must not be negative")
	}
	if h.MaxWaiters < 0 {
		return fmt.Errorf("max_waiters must not be negative")
	}
	if h.WriteTimeout < 0 {
		return fmt.Errorf("write_timeout must not be negative")
	}
	if h.RevalidateAbandoned < 0 {
		return fmt.Errorf("revalidate_abandoned must not be negative")
	}
	if err := h.Store.validate(); err != nil {
		return err
	}
	if h.OnStoreError != "" && !h.Store.redis() {
		return fmt.Errorf("on_store_error applies only with store redis")
	}
	if err := h.Idempotency.validate(); err != nil {
		return err
	}
	if h.MethodOverrideOff && len(h.MethodOverride) > 0 {
		return fmt.Errorf("method_override: fields listed and turned off at once")
	}
	for _, f := range h.MethodOverride {
		if !validFieldName(f) {
			return fmt.Errorf("method_override: %q is not a header field name", f)
		}
	}
	return nil
}

// Cleanup detaches the handler from the shared state; the state itself
// lives on while another configuration (the one a reload brings) uses it.
func (h *Handler) Cleanup() error {
	for _, key := range h.poolKeys {
		if _, err := pool.Delete(key); err != nil {
			return err
		}
	}
	h.poolKeys = nil
	return nil
}

// ServeHTTP guards writes and learns versions from reads.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.config != nil && !h.config.active.Load() {
		h.reg.activate(h.config)
	}
	// Methods are case-sensitive, but many backends upper-case them
	// (Django, Flask, PHP frameworks): "put" is a PUT to them.
	method := upperMethod(r.Method)
	if len(h.overrideFields) > 0 {
		m, err := h.overriddenMethod(r, method)
		if err != nil {
			return h.refuse(w, r, refuseMethodOverride(err))
		}
		method = m
	}
	if h.idem != nil && h.idem.applies(method) {
		return h.serveIdempotent(w, r, next, method)
	}
	return h.serveMethod(w, r, next, method)
}

// serveMethod serves a request as its method (method, after any override)
// says: guarded, a read, or passed through.
func (h *Handler) serveMethod(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, method string) error {
	switch _, guarded := h.methods[method]; {
	case guarded:
		return h.serveWrite(w, r, next, method)
	case method == http.MethodGet || method == http.MethodHead:
		return h.versions.serveRead(w, r, next, method)
	case method == http.MethodOptions || method == http.MethodTrace:
		return next.ServeHTTP(w, r)
	}
	return h.serveUnguarded(w, r, next)
}

// serveUnguarded passes a method the guard lets through. It may still
// change the resource (a POST that updates it): whatever version was known
// may be old once the upstream answers, so it is forgotten. It is not
// serialized; guard the method to serialize it.
func (h *Handler) serveUnguarded(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.config.enter() {
		return h.refuse(w, r, refuseStopped())
	}
	defer h.config.exit()
	fw := &forgettingWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, h: h, key: h.resourceKey(r)}
	defer fw.forget()
	return next.ServeHTTP(fw, r)
}

// forgettingWriter forgets a resource's version when an unguarded write's
// answer arrives, and at the latest when the request is done.
type forgettingWriter struct {
	caddyhttp.ResponseWriterWrapper
	h    *Handler
	key  string
	done bool
}

func (fw *forgettingWriter) forget() {
	if !fw.done {
		fw.done = true
		fw.h.cache.Forget(fw.key)
		fw.h.store.forget(fw.key)
	}
}

func (fw *forgettingWriter) WriteHeader(status int) {
	if status >= 200 || status == http.StatusSwitchingProtocols {
		fw.forget()
	}
	fw.ResponseWriterWrapper.WriteHeader(status)
}

func (fw *forgettingWriter) Write(p []byte) (int, error) {
	fw.forget()
	return fw.ResponseWriterWrapper.Write(p)
}

func (fw *forgettingWriter) ReadFrom(r io.Reader) (int64, error) {
	fw.forget()
	return fw.ResponseWriterWrapper.ReadFrom(r)
}

// Interface guards
var (
	_ caddy.Module                = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
