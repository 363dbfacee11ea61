package writeguard

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalIdempotency(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        *IdempotencyConfig
		err         string
	}{
		{name: "bare", input: "write_guard {\nidempotency\n}", want: &IdempotencyConfig{}},
		{name: "empty block", input: "write_guard {\nidempotency {\n}\n}", want: &IdempotencyConfig{}},
		{
			name: "every option",
			input: `write_guard {
				idempotency {
					methods post PUT patch DELETE
					require POST
					ttl 24h
					max_body 1MiB
					scope {http.request.header.Authorization}
					wait 5s
					fingerprint Accept X-Tenant
					replay_headers Set-Cookie
					max_memory 128MiB
					forward_key
					claim_ttl 20s
				}
				lock_timeout 5s
			}`,
			want: &IdempotencyConfig{
				Methods: []string{"POST", "PUT", "PATCH", "DELETE"}, Require: []string{"POST"},
				TTL: caddy.Duration(24 * time.Hour), MaxBody: 1 << 20, Scope: "{http.request.header.Authorization}",
				Wait: caddy.Duration(5 * time.Second), Fingerprint: []string{"Accept", "X-Tenant"},
				ReplayHeaders: []string{"Set-Cookie"}, MaxMemory: 128 << 20, ForwardKey: true, ClaimTTL: caddy.Duration(20 * time.Second),
			},
		},
		{name: "argument", input: "write_guard {\nidempotency on\n}", err: "wrong argument count"},
		{name: "twice", input: "write_guard {\nidempotency\nidempotency\n}", err: "idempotency given twice"},
		{name: "option twice", input: "write_guard {\nidempotency {\nttl 1h\nttl 2h\n}\n}", err: "ttl given twice"},
		{name: "unknown option", input: "write_guard {\nidempotency {\nkeys 10\n}\n}", err: `unrecognized option "keys"`},
		{name: "no methods", input: "write_guard {\nidempotency {\nmethods\n}\n}", err: "wrong argument count"},
		{name: "bad ttl", input: "write_guard {\nidempotency {\nttl forever\n}\n}", err: "not a positive duration"},
		{name: "bad size", input: "write_guard {\nidempotency {\nmax_body lots\n}\n}", err: "not a size"},
		{name: "scope without value", input: "write_guard {\nidempotency {\nscope\n}\n}", err: "wrong argument count"},
		{name: "forward_key with argument", input: "write_guard {\nidempotency {\nforward_key yes\n}\n}", err: "wrong argument count"},
		{name: "two scopes", input: "write_guard {\nidempotency {\nscope a b\n}\n}", err: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h.Idempotency, tc.want) {
				t.Errorf("got %+v\nwant %+v", h.Idempotency, tc.want)
			}
		})
	}
}
