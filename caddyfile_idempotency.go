package writeguard

import (
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// unmarshalIdempotency reads the idempotency block. Syntax:
//
//	idempotency {
//		methods        <method...>  # default: POST PUT PATCH DELETE
//		require        <method...>  # default: none
//		ttl            <duration>   # default: 24h
//		max_body       <size>       # default: 1MiB
//		scope          <template>   # default: {http.request.header.Authorization}
//		wait           <duration>   # default: 0 (409 at once)
//		fingerprint    <field...>   # default: none besides Content-Type, Content-Encoding, Content-Language
//		replay_headers <field...>   # default: none besides ETag, Location, Content-Type, ...
//		max_memory     <size>       # default: 64MiB
//		forward_key                 # default: off (the upstream does not see the field)
//		claim_ttl      <duration>   # default: 10s (store redis)
//	}
//
// `idempotency` without a block turns it on with the defaults.
func (h *Handler) unmarshalIdempotency(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	c := &IdempotencyConfig{}
	h.Idempotency = c
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("idempotency: %s given twice", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "methods", "require", "fingerprint", "replay_headers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			switch opt {
			case "methods":
				c.Methods = upperAll(args)
			case "require":
				c.Require = upperAll(args)
			case "fingerprint":
				c.Fingerprint = args
			case "replay_headers":
				c.ReplayHeaders = args
			}
			continue
		case "ttl":
			c.TTL, err = parseDuration(d)
		case "wait":
			c.Wait, err = parseDuration(d)
		case "claim_ttl":
			c.ClaimTTL, err = parseDuration(d)
		case "max_body", "max_memory":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, perr := humanize.ParseBytes(d.Val())
			if perr != nil || size == 0 {
				return d.Errf("idempotency %s: %q is not a size such as 1MiB", opt, d.Val())
			}
			if opt == "max_body" {
				c.MaxBody = int64(size)
			} else {
				c.MaxMemory = int64(size)
			}
		case "forward_key":
			c.ForwardKey = true
		case "scope":
			if !d.NextArg() {
				return d.ArgErr()
			}
			c.Scope = d.Val()
		default:
			return d.Errf("idempotency: unrecognized option %q", opt)
		}
		if err != nil {
			return err
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func upperAll(ms []string) []string {
	for i, m := range ms {
		ms[i] = strings.ToUpper(m)
	}
	return ms
}
