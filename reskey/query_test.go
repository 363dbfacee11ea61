package reskey

import (
	"net/url"
	"testing"
)

func TestQuery(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", ""},
		{"a=1", "a=1"},
		{"a=1&b=2", "a=1&b=2"},
		{"b=2&a=1", "b=2&a=1"},
		{"id=2&id=1", "id=2&id=1"},
		{"a=%31", "a=1"},
		{"%61=%7e", "a=~"},
		{"q=%c3%a9", "q=%C3%A9"},
		{"q=caf\xc3\xa9", "q=caf%C3%A9"},
		{"q=a b", "q=a%20b"},
		{"q=a+b", "q=a+b"},
		{"q=a%2bb", "q=a%2Bb"},
		{"q=a%26b&c", "q=a%26b&c"},
		{"next=/a/b?c", "next=/a/b?c"},
		{"next=%2Fa", "next=%2Fa"},
		{"q=%", "q=%25"},
		{"q=%zz&r=%4", "q=%25zz&r=%254"},
		{"a&&b&", "a&&b&"},
		{"a=", "a="},
		{"x#y", "x%23y"},
		{"a=[1]", "a=%5B1%5D"},
		{"Q=A", "Q=A"},
	} {
		got := Query(tc.in)
		if got != tc.want {
			t.Errorf("Query(%q) = %q, want %q", tc.in, got, tc.want)
		}
		checkQuery(t, tc.in, got)
	}
}

// checkQuery fails t unless out, the result of Query(in), is a canonical
// query.
func checkQuery(t *testing.T, in, out string) {
	t.Helper()
	if again := Query(out); again != out {
		t.Errorf("Query(%q) = %q, but Query(%q) = %q", in, out, out, again)
	}
	if !canonicalEscapes(out, inQuery, false) {
		t.Errorf("Query(%q) = %q, which is not canonical", in, out)
	}
	if _, err := url.QueryUnescape(out); err != nil {
		t.Errorf("Query(%q) = %q: %v", in, out, err)
	}
	if in == "" && out != "" || in != "" && out == "" {
		t.Errorf("Query(%q) = %q: emptiness changed", in, out)
	}
}

// A bare "?" and no "?" name one resource.
func TestQueryBareQuestionMark(t *testing.T) {
	for _, target := range []string{"/a?", "/a"} {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			t.Fatal(err)
		}
		if got := Query(u.RawQuery); got != "" {
			t.Errorf("Query of %q = %q, want no query", target, got)
		}
	}
}

func TestQueryCanonicalDoesNotAllocate(t *testing.T) {
	in := "a=1&b=%2F&c=d+e"
	if n := testing.AllocsPerRun(100, func() { Query(in) }); n != 0 {
		t.Errorf("Query(%q) allocates %v times", in, n)
	}
}
