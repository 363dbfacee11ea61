package reskey

import "testing"

func TestHost(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", ""},
		{"example.com", "example.com"},
		{"Example.COM", "example.com"},
		{"example.com:8080", "example.com:8080"},
		{"example.com:80", "example.com"},
		{"example.com:443", "example.com"},
		{"Example.com:443", "example.com"},
		{"example.com:", "example.com"},
		{"example.com:4430", "example.com:4430"},
		{"example.com:8443", "example.com:8443"},
		{"example.com.", "example.com"},
		{"example.com..", "example.com"},
		{"Example.com.:443", "example.com"},
		{"example.com.:8080", "example.com:8080"},
		{"192.0.2.1:80", "192.0.2.1"},
		{"192.0.2.1:8080", "192.0.2.1:8080"},
		{"[::1]", "[::1]"},
		{"[::1]:8080", "[::1]:8080"},
		{"[::1]:443", "[::1]"},
		{"[2001:DB8::1]:80", "[2001:db8::1]"},
		{"[::1]:", "[::1]"},
		{"[::1].", "[::1]."},
		{"::1", "::1"},
		{"fe80::1:80", "fe80::1:80"},
		{"[::1", "[::1"},
		{"caf\xc3\xa9.example", "caf\xc3\xa9.example"},
		{"\xff.EXAMPLE", "\xff.example"},
	} {
		if got := Host(tc.in); got != tc.want {
			t.Errorf("Host(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := Host(Host(tc.in)); got != Host(tc.in) {
			t.Errorf("Host(Host(%q)) = %q, want %q", tc.in, got, Host(tc.in))
		}
	}
}

func TestHostCanonicalDoesNotAllocate(t *testing.T) {
	for _, in := range []string{"example.com", "example.com:8080", "[::1]:8080"} {
		if n := testing.AllocsPerRun(100, func() { Host(in) }); n != 0 {
			t.Errorf("Host(%q) allocates %v times", in, n)
		}
	}
}

func TestHostName(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":      "example.com",
		"Example.COM:8443": "example.com",
		"example.com.:80":  "example.com",
		"[::1]:8080":       "[::1]",
		"[::1]":            "[::1]",
		"127.0.0.1:9080":   "127.0.0.1",
		"fe80::1":          "fe80::1",
		"example.com:":     "example.com",
	} {
		if got := HostName(in); got != want {
			t.Errorf("HostName(%q) = %q, want %q", in, got, want)
		}
	}
}
