package precondition

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Field lines travel in one fuzz string, separated by newlines, which no
// field line can contain.
func splitLines(s string) []string { return strings.Split(s, "\n") }

// listSeeds are field values worth mutating: the interesting cases of
// TestParseList, with newlines separating field lines.
var listSeeds = []string{
	"*", "  *  ", `"abc"`, `W/"abc"`, `""`, `"a", W/"b" ,"c"`, "\"a\"\n\"b\", \"c\"",
	`, "a",, "b" ,`, `"a,b"`, "\"caf\xc3\xa9\"", `abc`, `w/"abc"`, `"abc`, `"a b"`,
	"\"a\x01\"", `"a" "b"`, `*, "a"`, `"a", *`, "*\n*", "*\n\"a\"", "", " , ,",
	"W/\n\"a\"", "\"a\n\"", "\t\"a\"\t,\tW/\"b\"\t",
	strings.TrimSuffix(strings.Repeat(`"a",`, MaxTags), ","),
	strings.Repeat(`"a",`, MaxTags+1),
	`"` + strings.Repeat("x", MaxListBytes-2) + `"`,
	`"` + strings.Repeat("x", MaxListBytes-1) + `"`,
}

func FuzzParseList(f *testing.F) {
	for _, s := range listSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lines := splitLines(s)
		l, err := ParseList(lines)
		if len(s)-(len(lines)-1) > MaxListBytes && err == nil {
			t.Fatalf("ParseList accepted %d bytes, more than %d", len(s)-(len(lines)-1), MaxListBytes)
		}

		// Field lines combine into one, separated by ", ", without changing
		// the value (RFC 9110 section 5.3). A space cannot be part of a
		// tag, so no tag can span two lines.
		if joined := strings.Join(lines, ", "); len(joined) <= MaxListBytes {
			j, jerr := ParseList([]string{joined})
			if (err == nil) != (jerr == nil) || err == nil && !reflect.DeepEqual(l, j) {
				t.Errorf("ParseList(%q) = %q, %v, but on one line %q, %v", lines, l.String(), err, j.String(), jerr)
			}
		}

		if err != nil {
			return
		}
		if l.Any == (len(l.Tags) > 0) {
			t.Fatalf("ParseList(%q) = %+v: want either * or tags", lines, l)
		}
		if len(l.Tags) > MaxTags {
			t.Fatalf("ParseList(%q) gave %d tags, more than %d", lines, len(l.Tags), MaxTags)
		}
		for _, tag := range l.Tags {
			if got, ok := ParseETag(tag.String()); !ok || got != tag {
				t.Errorf("tag %+v of ParseList(%q) reparses as %+v, %v", tag, lines, got, ok)
			}
		}
		// A list is sent as String renders it: what ParseList accepted, it
		// must accept again in that form, unless the ", " between members
		// takes it over the size limit.
		out := l.String()
		if len(out) > MaxListBytes {
			return
		}
		again, err := ParseList([]string{out})
		if err != nil {
			t.Fatalf("ParseList(%q) = %q, which does not parse: %v", lines, out, err)
		}
		if !reflect.DeepEqual(again, l) {
			t.Errorf("ParseList(%q) = %+v, but its rendering %q parses as %+v", lines, l, out, again)
		}
	})
}

func FuzzParseETag(f *testing.F) {
	for _, s := range []string{
		`"x"`, ` W/"x" `, `x`, `"x", "y"`, `W/`, `W/""`, `""`, `"`, "\"\xff\x80\"",
		"\t\"a\"\t", `"a"b`, `w/"a"`, `W/W/"a"`, `"a"""`, "\"\x7f\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tag, ok := ParseETag(s)
		if !ok {
			if tag != (ETag{}) {
				t.Errorf("ParseETag(%q) failed but returned %+v", s, tag)
			}
			return
		}
		// Only blanks surround the tag, and the tag is all that is left.
		if got := strings.Trim(s, " \t"); got != tag.String() {
			t.Errorf("ParseETag(%q) = %q, want %q", s, tag.String(), got)
		}
		o := tag.Opaque
		if len(o) < 2 || o[0] != '"' || o[len(o)-1] != '"' {
			t.Fatalf("ParseETag(%q): opaque %q is not quoted", s, o)
		}
		for i := 1; i < len(o)-1; i++ {
			if c := o[i]; c != 0x21 && (c < 0x23 || c == 0x7f) {
				t.Errorf("ParseETag(%q): opaque %q contains %#x", s, o, c)
			}
		}
		if again, ok := ParseETag(tag.String()); !ok || again != tag {
			t.Errorf("ParseETag(%q) = %+v, whose rendering parses as %+v, %v", s, tag, again, ok)
		}
		if len(s) <= MaxListBytes {
			l, err := ParseList([]string{s})
			if err != nil || !reflect.DeepEqual(l, List{Tags: []ETag{tag}}) {
				t.Errorf("ParseETag(%q) = %+v, but ParseList gives %+v, %v", s, tag, l, err)
			}
		}
	})
}

func FuzzParse(f *testing.F) {
	const date = "Sun, 06 Nov 1994 08:49:37 GMT"
	for _, s := range []struct {
		ifMatch, ifNoneMatch, ifUnmodifiedSince string
		present                                 uint8 // bits 0, 1, 2: which fields are sent
	}{
		{`"a"`, "", "", 1},
		{"", "*", "", 2},
		{"", "", date, 4},
		{"", "", "Sunday, 06-Nov-94 08:49:37 GMT", 4},
		{"", "", "Sun Nov  6 08:49:37 1994", 4},
		{"", "", "yesterday", 4},
		{"", "", date + "\n" + date, 4},
		{`"a"`, `*, "a"`, date, 7},
		{"abc", "*", "", 3},
		{`"a"`, "abc", "", 3},
		{"abc", "def", "", 3},
		{"", "", "", 7},
		{"", "", "", 0},
		{"*\n\"a\"", `W/"b"`, "", 3},
	} {
		f.Add(s.ifMatch, s.ifNoneMatch, s.ifUnmodifiedSince, s.present)
	}
	f.Fuzz(func(t *testing.T, ifMatch, ifNoneMatch, ifUnmodifiedSince string, present uint8) {
		h := http.Header{}
		fields := []struct{ name, value string }{
			{"If-Match", ifMatch}, {"If-None-Match", ifNoneMatch}, {"If-Unmodified-Since", ifUnmodifiedSince},
		}
		for i, fl := range fields {
			if present&(1<<i) != 0 {
				h[fl.name] = splitLines(fl.value)
			}
		}
		c, err := Parse(h)

		// The first list field that ParseList rejects is the one reported.
		wantField := ""
		for _, name := range []string{"If-Match", "If-None-Match"} {
			if lines, ok := h[name]; ok {
				if _, err := ParseList(lines); err != nil {
					wantField = name
					break
				}
			}
		}
		if err != nil {
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("Parse(%q) error %v is not a *HeaderError", h, err)
			}
			if he.Field != wantField {
				t.Errorf("Parse(%q) blames %s, want %q", h, he.Field, wantField)
			}
			if he.Reason == "" || err.Error() != he.Field+": "+he.Reason {
				t.Errorf("Parse(%q): error %q, field %q, reason %q", h, err, he.Field, he.Reason)
			}
			return
		}
		if wantField != "" {
			t.Fatalf("Parse(%q) accepted an invalid %s", h, wantField)
		}

		for _, l := range []struct {
			name string
			got  *List
		}{{"If-Match", c.IfMatch}, {"If-None-Match", c.IfNoneMatch}} {
			lines, ok := h[l.name]
			if !ok {
				if l.got != nil {
					t.Errorf("Parse(%q): %s absent but parsed as %q", h, l.name, l.got.String())
				}
				continue
			}
			want, _ := ParseList(lines)
			if l.got == nil || !reflect.DeepEqual(*l.got, want) {
				t.Errorf("Parse(%q): %s = %v, want %q", h, l.name, l.got, want.String())
			}
		}

		// A valid date in the one field line the field may have is a
		// precondition; anything else is ignored.
		var want time.Time
		valid := false
		if lines := h["If-Unmodified-Since"]; len(lines) == 1 {
			if d, err := http.ParseTime(lines[0]); err == nil {
				want, valid = d, true
			}
		}
		if (c.IfUnmodifiedSince != nil) != valid || valid && !c.IfUnmodifiedSince.Equal(want) {
			t.Errorf("Parse(%q): If-Unmodified-Since = %v, want %v (valid: %v)", h, c.IfUnmodifiedSince, want, valid)
		}
		blind := c.IfMatch == nil && c.IfNoneMatch == nil && !valid
		if c.Blind() != blind {
			t.Errorf("Parse(%q): Blind() = %v, want %v", h, c.Blind(), blind)
		}
	})
}

// encodings are those whose suffix Caddy's encode handler appends to a
// strong entity-tag.
var encodings = []string{"gzip", "zstd", "br"}

// fuzzTag makes an entity-tag of s: s itself if it is one, else s quoted.
func fuzzTag(s string, weak bool) (ETag, bool) {
	t, ok := ParseETag(s)
	if !ok {
		t, ok = ParseETag(`"` + s + `"`)
	}
	t.Weak = weak
	return t, ok
}

func FuzzMatch(f *testing.F) {
	for _, s := range []struct {
		client, current         string
		clientWeak, currentWeak bool
	}{
		{`"a"`, `"a"`, false, false},
		{`"a"`, `"a"`, true, false},
		{`"a"`, `"a"`, true, true},
		{`"a"`, `"b"`, false, false},
		{`"a-gzip"`, `"a"`, false, false},
		{`"a-zstd"`, `"a"`, false, true},
		{`"a-br"`, `"a"`, true, false},
		{`"a-deflate"`, `"a"`, false, false},
		{`"a"`, `"a-gzip"`, false, false},
		{`"ab-gzip"`, `"a"`, false, false},
		{`"-gzip"`, `""`, false, false},
		{"caf\xc3\xa9-gzip", "caf\xc3\xa9", false, false},
		{`"a-gzip-gzip"`, `"a-gzip"`, false, false},
		{`"a-gzip-gzip"`, `"a"`, false, false},
	} {
		f.Add(s.client, s.current, s.clientWeak, s.currentWeak)
	}
	f.Fuzz(func(t *testing.T, client, current string, clientWeak, currentWeak bool) {
		c, ok1 := fuzzTag(client, clientWeak)
		cur, ok2 := fuzzTag(current, currentWeak)
		if !ok1 || !ok2 {
			return
		}
		strict, lenient := Strict.Match(c, cur), Lenient.Match(c, cur)

		// Strict is RFC 9110's strong comparison, exactly.
		if want := !c.Weak && !cur.Weak && c.Opaque == cur.Opaque; strict != want {
			t.Errorf("Strict.Match(%s, %s) = %v, want %v", c, cur, strict, want)
		}
		if strict != Strict.Match(cur, c) {
			t.Errorf("Strict.Match is not symmetric for %s and %s", c, cur)
		}
		if strict && !lenient {
			t.Errorf("Strict.Match(%s, %s) but not Lenient", c, cur)
		}
		// Lenient compares opaque tags whatever their weakness, and accepts
		// a strong client tag that encode suffixed from the strong current
		// one; nothing else.
		suffixed := false
		for _, e := range encodings {
			if !c.Weak && !cur.Weak && c.Opaque == strings.TrimSuffix(cur.Opaque, `"`)+"-"+e+`"` {
				suffixed = true
			}
		}
		if want := c.Opaque == cur.Opaque || suffixed; lenient != want {
			t.Errorf("Lenient.Match(%s, %s) = %v, want %v", c, cur, lenient, want)
		}
		if lenient && Lenient.Match(cur, c) && c.Opaque != cur.Opaque {
			t.Errorf("Lenient.Match(%s, %s) both ways with different opaque tags", c, cur)
		}

		// Every tag names its own version; under Strict only a strong one.
		for _, tag := range []ETag{c, cur} {
			if !Lenient.Match(tag, tag) {
				t.Errorf("Lenient.Match(%s, %s) = false", tag, tag)
			}
			if Strict.Match(tag, tag) == tag.Weak {
				t.Errorf("Strict.Match(%s, %s) = %v", tag, tag, !tag.Weak)
			}
		}

		// What encode makes of the strong current tag matches it leniently
		// only, and only in that direction.
		strong := ETag{Opaque: cur.Opaque}
		for _, e := range encodings {
			enc := ETag{Opaque: strings.TrimSuffix(cur.Opaque, `"`) + "-" + e + `"`}
			if !Lenient.Match(enc, strong) || Strict.Match(enc, strong) {
				t.Errorf("%s against %s: want a lenient match only", enc, strong)
			}
			if Lenient.Match(strong, enc) {
				t.Errorf("Lenient.Match(%s, %s): the unsuffixed client tag matches", strong, enc)
			}
			if weak := (ETag{Weak: true, Opaque: enc.Opaque}); Lenient.Match(weak, strong) {
				t.Errorf("Lenient.Match(%s, %s): encode never suffixes a weak tag", weak, strong)
			}
		}
	})
}
