package writeguard

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  Handler
		err   string
	}{
		{name: "bare", input: `write_guard`, want: Handler{}},
		{name: "empty block", input: "write_guard {\n}", want: Handler{}},
		{
			name: "every option",
			input: `write_guard {
				methods put PATCH delete POST
				blind 409
				etag_match strict
				key {http.request.host}{http.request.uri}
				lock_timeout 5s
				cache_size 5000
				cache_ttl 2m
				max_body 1MiB
				etags hash
				hash_max_body 2MiB
				revalidate always
			}`,
			want: Handler{
				Methods:     []string{"PUT", "PATCH", "DELETE", "POST"},
				Blind:       "409",
				ETagMatch:   "strict",
				Key:         "{http.request.host}{http.request.uri}",
				LockTimeout: caddy.Duration(5 * time.Second),
				CacheSize:   5000,
				CacheTTL:    caddy.Duration(2 * time.Minute),
				MaxBody:     1 << 20,
				ETags:       "hash",
				HashMaxBody: 2 << 20,
				Revalidate:  "always",
			},
		},
		{name: "cache size in bytes", input: "write_guard {\ncache_size 64MiB\n}", want: Handler{CacheBytes: 64 << 20}},
		{name: "blind allow", input: "write_guard {\nblind allow\n}", want: Handler{Blind: "allow"}},
		{name: "etag_match default", input: "write_guard {\netag_match default\n}", want: Handler{}},
		{name: "argument on directive", input: `write_guard foo`, err: "wrong argument count"},
		{name: "unknown option", input: "write_guard {\nblindly 428\n}", err: `unrecognized subdirective "blindly"`},
		{name: "option twice", input: "write_guard {\nblind 409\nblind 428\n}", err: "blind given twice"},
		{name: "bad blind", input: "write_guard {\nblind 403\n}", err: "not one of 428, 409, allow"},
		{name: "bad etag_match", input: "write_guard {\netag_match weak\n}", err: "not one of default, strict"},
		{name: "no methods", input: "write_guard {\nmethods\n}", err: "wrong argument count"},
		{name: "missing key", input: "write_guard {\nkey\n}", err: "wrong argument count"},
		{name: "extra argument", input: "write_guard {\nlock_timeout 5s 6s\n}", err: "wrong argument count"},
		{name: "bad duration", input: "write_guard {\nlock_timeout soon\n}", err: "not a positive duration"},
		{name: "zero duration", input: "write_guard {\ncache_ttl 0s\n}", err: "not a positive duration"},
		{name: "bad cache size", input: "write_guard {\ncache_size lots\n}", err: "neither a number of entries nor a size"},
		{name: "negative cache size", input: "write_guard {\ncache_size -5\n}", err: "must be positive"},
		{
			name: "hardening options",
			input: `write_guard {
				max_body_memory 256KiB
				max_waiters 16
				write_timeout 1m
				revalidate_abandoned 2m
				method_override X-Tunnel-Method X-HTTP-Method-Override
				key_trailing_slash keep
				key_case_insensitive
			}`,
			want: Handler{
				MaxBodyMemory:       256 << 10,
				MaxWaiters:          16,
				WriteTimeout:        caddy.Duration(time.Minute),
				RevalidateAbandoned: caddy.Duration(2 * time.Minute),
				MethodOverride:      []string{"X-Tunnel-Method", "X-HTTP-Method-Override"},
				KeyTrailingSlash:    "keep",
				KeyCaseInsensitive:  true,
			},
		},
		{name: "method_override off", input: "write_guard {\nmethod_override off\n}", want: Handler{MethodOverrideOff: true}},
		{name: "key_trailing_slash ignore", input: "write_guard {\nkey_trailing_slash ignore\n}", want: Handler{}},
		{name: "bad key_trailing_slash", input: "write_guard {\nkey_trailing_slash strip\n}", err: "not one of ignore, keep"},
		{name: "key_case_insensitive with argument", input: "write_guard {\nkey_case_insensitive yes\n}", err: "wrong argument count"},
		{name: "bad max_waiters", input: "write_guard {\nmax_waiters 0\n}", err: "not a positive number"},
		{name: "bad method_override", input: "write_guard {\nmethod_override X:Bad\n}", err: "not a header field name"},
		{name: "empty method_override", input: "write_guard {\nmethod_override\n}", err: "wrong argument count"},
		{name: "etags auto", input: "write_guard {\netags auto\nrevalidate miss\n}", want: Handler{}},
		{name: "etags upstream", input: "write_guard {\netags upstream\n}", want: Handler{ETags: "upstream"}},
		{name: "bad etags", input: "write_guard {\netags weak\n}", err: "not one of auto, upstream, hash"},
		{name: "read_freshness upstream", input: "write_guard {\nread_freshness upstream\n}", want: Handler{ReadFreshness: "upstream"}},
		{name: "read_freshness no-cache", input: "write_guard {\nread_freshness no-cache\n}", want: Handler{}},
		{name: "bad read_freshness", input: "write_guard {\nread_freshness max-age\n}", err: "not one of no-cache, upstream"},
		{name: "bad revalidate", input: "write_guard {\nrevalidate sometimes\n}", err: "not one of miss, always"},
		{name: "bad hash_max_body", input: "write_guard {\nhash_max_body big\n}", err: "not a size"},
		{name: "bad max_body", input: "write_guard {\nmax_body huge\n}", err: "not a size"},
		{name: "store memory", input: "write_guard {\nstore memory\n}", want: Handler{Store: &StoreConfig{Backend: "memory"}}},
		{name: "store redis, address inline", input: "write_guard {\nstore redis 127.0.0.1:6379\non_store_error local\n}", want: Handler{
			Store:        &StoreConfig{Backend: "redis", Addresses: []string{"127.0.0.1:6379"}},
			OnStoreError: "local",
		}},
		{
			name: "store redis, every option",
			input: `write_guard {
				store redis {
					address 10.0.0.1:26379 10.0.0.2:26379
					sentinel_master mymaster
					username guard
					password {env.REDIS_PASSWORD}
					db 2
					tls
					tls_server_name redis.internal
					tls_insecure_skip_verify
					key_prefix shop:
					lock_ttl 5s
					timeout 500ms
				}
				on_store_error fail
				lock_timeout 5s
			}`,
			want: Handler{
				Store: &StoreConfig{
					Backend: "redis", Addresses: []string{"10.0.0.1:26379", "10.0.0.2:26379"}, SentinelMaster: "mymaster",
					Username: "guard", Password: "{env.REDIS_PASSWORD}", DB: 2, TLS: true, TLSServerName: "redis.internal",
					TLSInsecureSkipVerify: true, KeyPrefix: "shop:", LockTTL: caddy.Duration(5 * time.Second),
					Timeout: caddy.Duration(500 * time.Millisecond),
				},
				LockTimeout: caddy.Duration(5 * time.Second),
			},
		},
		{name: "store redis without address", input: "write_guard {\nstore redis\n}", err: "at least one address"},
		{name: "store unknown", input: "write_guard {\nstore etcd\n}", err: "not one of memory, redis"},
		{name: "store memory with options", input: "write_guard {\nstore memory {\naddress x:1\n}\n}", err: "takes no options"},
		{name: "store redis unknown option", input: "write_guard {\nstore redis a:1 {\ncluster\n}\n}", err: `unrecognized option "cluster"`},
		{name: "store redis bad db", input: "write_guard {\nstore redis a:1 {\ndb x\n}\n}", err: "not a database number"},
		{name: "bad on_store_error", input: "write_guard {\non_store_error retry\n}", err: "not one of fail, local"},
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
			if !reflect.DeepEqual(h, tc.want) {
				t.Errorf("got %+v\nwant %+v", h, tc.want)
			}
		})
	}
}
