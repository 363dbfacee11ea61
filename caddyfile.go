package writeguard

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	wg := new(Handler)
	err := wg.UnmarshalCaddyfile(h.Dispenser)
	return wg, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	write_guard [<matcher>] {
//		methods         <method...>       # default: PUT PATCH DELETE
//		blind           428|409|allow     # default: 428
//		etag_match      default|strict    # default: default
//		key             <template>        # default: {http.write_guard.site}{http.request.uri.path}
//		lock_timeout    <duration>        # default: 30s
//		cache_size      <entries>|<size>  # default: 1000000 (entries); a size such as 64MiB bounds memory
//		cache_ttl       <duration>        # default: 10m
//		max_body        <size>            # default: 10MiB
//		etags           auto|upstream|hash # default: auto
//		hash_max_body   <size>            # default: 16MiB (etags auto and hash)
//		read_freshness  no-cache|upstream # default: no-cache
//		revalidate      miss|always       # default: miss
//		max_body_memory <size>            # default: 1MiB (the rest of a body goes to a temporary file)
//		max_waiters     <n>               # default: 128
//		write_timeout   <duration>        # default: 30s
//		revalidate_abandoned <duration>   # default: 10m
//		method_override <field...>|off    # default: X-HTTP-Method-Override X-HTTP-Method X-Method-Override
//		key_trailing_slash ignore|keep    # default: ignore
//		key_case_insensitive              # default: off
//		refusals        problem|handle_errors # default: problem
//		store           memory|redis      # default: memory; redis takes a block:
//		store redis [<address...>] {
//			address        <host:port...>   # one server, Cluster nodes, or Sentinels
//			sentinel_master <name>
//			username       <name>
//			password       <password>       # {env.REDIS_PASSWORD} reads the environment
//			db             <n>
//			tls
//			tls_server_name <name>
//			tls_insecure_skip_verify
//			key_prefix     <prefix>         # default: write_guard:
//			lock_ttl       <duration>       # default: 10s
//			timeout        <duration>       # default: 1s
//		}
//		on_store_error  fail|local        # default: fail
//		idempotency {                     # off by default; see unmarshalIdempotency
//			...
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s given twice", opt)
		}
		seen[opt] = true
		switch opt {
		case "blind", "etag_match", "etags", "read_freshness", "revalidate", "key_trailing_slash", "refusals", "on_store_error":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if err := checkChoice(opt, d.Val()); err != nil {
				return d.Err(err.Error())
			}
			value := d.Val()
			if value == choices[opt][0] {
				value = "" // the default stays out of the JSON
			}
			*h.choice(opt) = value
		case "methods":
			h.Methods = d.RemainingArgs()
			if len(h.Methods) == 0 {
				return d.ArgErr()
			}
			for i, m := range h.Methods {
				h.Methods[i] = strings.ToUpper(m)
			}
		case "key":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Key = d.Val()
		case "lock_timeout":
			dur, err := parseDuration(d)
			if err != nil {
				return err
			}
			h.LockTimeout = dur
		case "cache_ttl":
			dur, err := parseDuration(d)
			if err != nil {
				return err
			}
			h.CacheTTL = dur
		case "cache_size":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if n, err := strconv.ParseInt(d.Val(), 10, 64); err == nil {
				if n <= 0 {
					return d.Errf("cache_size: must be positive")
				}
				h.CacheSize = n
			} else {
				size, err := humanize.ParseBytes(d.Val())
				if err != nil || size == 0 {
					return d.Errf("cache_size: %q is neither a number of entries nor a size such as 64MiB", d.Val())
				}
				h.CacheBytes = int64(size)
			}
		case "max_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil || size == 0 {
				return d.Errf("max_body: %q is not a size such as 10MiB", d.Val())
			}
			h.MaxBody = int64(size)
		case "hash_max_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil || size == 0 {
				return d.Errf("hash_max_body: %q is not a size such as 16MiB", d.Val())
			}
			h.HashMaxBody = int64(size)
		case "key_case_insensitive":
			h.KeyCaseInsensitive = true
		case "max_body_memory":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil || size == 0 {
				return d.Errf("max_body_memory: %q is not a size such as 1MiB", d.Val())
			}
			h.MaxBodyMemory = int64(size)
		case "max_waiters":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 {
				return d.Errf("max_waiters: %q is not a positive number", d.Val())
			}
			h.MaxWaiters = n
		case "write_timeout":
			dur, err := parseDuration(d)
			if err != nil {
				return err
			}
			h.WriteTimeout = dur
		case "revalidate_abandoned":
			dur, err := parseDuration(d)
			if err != nil {
				return err
			}
			h.RevalidateAbandoned = dur
		case "method_override":
			fields := d.RemainingArgs()
			switch {
			case len(fields) == 0:
				return d.ArgErr()
			case len(fields) == 1 && fields[0] == "off":
				h.MethodOverrideOff = true
			default:
				for _, f := range fields {
					if !validFieldName(f) {
						return d.Errf("method_override: %q is not a header field name", f)
					}
				}
				h.MethodOverride = fields
			}
		case "store":
			if err := h.unmarshalStore(d); err != nil {
				return err
			}
			continue // the block has been consumed
		case "idempotency":
			if err := h.unmarshalIdempotency(d); err != nil {
				return err
			}
			continue
		default:
			return d.Errf("unrecognized subdirective %q", opt)
		}
		if opt != "methods" && opt != "method_override" && d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func parseDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	opt := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: %q is not a positive duration", opt, d.Val())
	}
	return caddy.Duration(dur), nil
}

func (h *Handler) unmarshalStore(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	s := &StoreConfig{Backend: d.Val()}
	h.Store = s
	switch s.Backend {
	case "memory":
		if d.NextArg() {
			return d.ArgErr()
		}
		if d.NextBlock(d.Nesting()) {
			return d.Err("store memory takes no options")
		}
		return nil
	case "redis":
	default:
		return d.Errf("store: %q is not one of memory, redis", s.Backend)
	}
	s.Addresses = d.RemainingArgs()
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("store redis: %s given twice", opt)
		}
		seen[opt] = true
		one := func() (string, error) {
			if !d.NextArg() {
				return "", d.ArgErr()
			}
			v := d.Val()
			if d.NextArg() {
				return "", d.ArgErr()
			}
			return v, nil
		}
		var err error
		switch opt {
		case "address":
			addrs := d.RemainingArgs()
			if len(addrs) == 0 {
				return d.ArgErr()
			}
			s.Addresses = append(s.Addresses, addrs...)
		case "sentinel_master":
			s.SentinelMaster, err = one()
		case "username":
			s.Username, err = one()
		case "password":
			s.Password, err = one()
		case "db":
			var v string
			if v, err = one(); err == nil {
				if s.DB, err = strconv.Atoi(v); err != nil || s.DB < 0 {
					return d.Errf("store redis: db %q is not a database number", v)
				}
			}
		case "tls":
			s.TLS = true
		case "tls_server_name":
			s.TLSServerName, err = one()
		case "tls_insecure_skip_verify":
			s.TLSInsecureSkipVerify = true
		case "key_prefix":
			s.KeyPrefix, err = one()
		case "lock_ttl":
			s.LockTTL, err = parseDuration(d)
		case "timeout":
			s.Timeout, err = parseDuration(d)
		default:
			return d.Errf("store redis: unrecognized option %q", opt)
		}
		if err != nil {
			return err
		}
		if (opt == "tls" || opt == "tls_insecure_skip_verify") && d.NextArg() {
			return d.ArgErr()
		}
	}
	if len(s.Addresses) == 0 {
		return d.Err("store redis: at least one address is required")
	}
	return nil
}
