package precondition

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseList(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  string // rendered list; "" means an error is expected
	}{
		{"star", []string{"*"}, "*"},
		{"star with spaces", []string{"  *  "}, "*"},
		{"one strong", []string{`"abc"`}, `"abc"`},
		{"one weak", []string{`W/"abc"`}, `W/"abc"`},
		{"empty opaque", []string{`""`}, `""`},
		{"list", []string{`"a", W/"b" ,"c"`}, `"a", W/"b", "c"`},
		{"several lines", []string{`"a"`, `"b", "c"`}, `"a", "b", "c"`},
		{"empty elements", []string{`, "a",, "b" ,`}, `"a", "b"`},
		{"comma inside tag", []string{`"a,b"`}, `"a,b"`},
		{"obs-text", []string{"\"caf\xc3\xa9\""}, "\"caf\xc3\xa9\""},
		{"unquoted", []string{`abc`}, ""},
		{"lowercase weak prefix", []string{`w/"abc"`}, ""},
		{"unterminated", []string{`"abc`}, ""},
		{"space inside", []string{`"a b"`}, ""},
		{"control char", []string{"\"a\x01\""}, ""},
		{"missing comma", []string{`"a" "b"`}, ""},
		{"star in list", []string{`*, "a"`}, ""},
		{"star after tag", []string{`"a", *`}, ""},
		{"star on two lines", []string{`*`, `*`}, ""},
		{"star and tag on two lines", []string{`*`, `"a"`}, ""},
		{"empty value", []string{""}, ""},
		{"only commas", []string{" , ,"}, ""},
		{"too many tags", []string{strings.Repeat(`"a",`, MaxTags+1)}, ""},
		{"exactly max tags", []string{strings.TrimSuffix(strings.Repeat(`"a",`, MaxTags), ",")}, strings.TrimSuffix(strings.Repeat(`"a", `, MaxTags), ", ")},
		{"too long", []string{`"` + strings.Repeat("x", MaxListBytes) + `"`}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := ParseList(tc.lines)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ParseList(%q) = %q, want an error", tc.lines, l.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseList(%q): %v", tc.lines, err)
			}
			if got := l.String(); got != tc.want {
				t.Errorf("ParseList(%q) = %q, want %q", tc.lines, got, tc.want)
			}
		})
	}
}

func TestParseETag(t *testing.T) {
	for in, want := range map[string]string{
		`"x"`:      `"x"`,
		` W/"x" `:  `W/"x"`,
		`x`:        "",
		`"x", "y"`: "",
		`W/`:       "",
	} {
		got, ok := ParseETag(in)
		if (want == "") == ok || (ok && got.String() != want) {
			t.Errorf("ParseETag(%q) = %q, %v; want %q", in, got.String(), ok, want)
		}
	}
}

func TestParse(t *testing.T) {
	date := "Sun, 06 Nov 1994 08:49:37 GMT"
	h := http.Header{}
	h.Set("If-Unmodified-Since", date)
	c, err := Parse(h)
	if err != nil || c.IfUnmodifiedSince == nil || c.Blind() {
		t.Fatalf("valid If-Unmodified-Since: %+v, %v", c, err)
	}

	for _, bad := range []string{"yesterday", "Sun, 06 Nov 1994", ""} {
		h := http.Header{"If-Unmodified-Since": {bad}}
		c, err := Parse(h)
		if err != nil {
			t.Fatalf("invalid If-Unmodified-Since %q must be ignored, got %v", bad, err)
		}
		if !c.Blind() {
			t.Errorf("a request whose only precondition is the invalid date %q must count as blind", bad)
		}
	}

	// RFC 850 and asctime forms are HTTP dates too.
	for _, d := range []string{"Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"} {
		c, _ := Parse(http.Header{"If-Unmodified-Since": {d}})
		if c.IfUnmodifiedSince == nil {
			t.Errorf("date %q not accepted", d)
		}
	}

	if c, _ := Parse(http.Header{}); !c.Blind() {
		t.Error("no header: want blind")
	}
	if c, _ := Parse(http.Header{"If-None-Match": {"*"}}); c.Blind() || !c.IfNoneMatch.Any {
		t.Error("If-None-Match: * must count as a precondition")
	}

	_, err = Parse(http.Header{"If-Match": {"abc"}})
	var he *HeaderError
	if err == nil || !asHeaderError(err, &he) || he.Field != "If-Match" {
		t.Errorf("unquoted If-Match: got %v, want a HeaderError for If-Match", err)
	}
	_, err = Parse(http.Header{"If-Match": {`"a"`}, "If-None-Match": {`*, "a"`}})
	if err == nil || !asHeaderError(err, &he) || he.Field != "If-None-Match" {
		t.Errorf("bad If-None-Match: got %v", err)
	}
}

func asHeaderError(err error, target **HeaderError) bool {
	he, ok := err.(*HeaderError)
	*target = he
	return ok
}

func TestMatching(t *testing.T) {
	tag := func(s string) ETag {
		e, ok := ParseETag(s)
		if !ok {
			t.Fatalf("bad tag %q", s)
		}
		return e
	}
	for _, tc := range []struct {
		client, current string
		lenient, strict bool
	}{
		{`"a"`, `"a"`, true, true},
		{`"a"`, `"b"`, false, false},
		{`W/"a"`, `W/"a"`, true, false},
		{`"a"`, `W/"a"`, true, false},
		{`W/"a"`, `"a"`, true, false},
		{`W/"a"`, `W/"b"`, false, false},
		{`"a-gzip"`, `"a"`, true, false},
		{`"a-zstd"`, `"a"`, true, false},
		{`"a-br"`, `"a"`, true, false},
		{`"a-deflate"`, `"a"`, false, false},
		{`"a-gzip"`, `W/"a"`, false, false},
		{`W/"a-gzip"`, `"a"`, false, false},
		{`"ab-gzip"`, `"a"`, false, false},
		{`"a"`, `"a-gzip"`, false, false},
		{`"-gzip"`, `""`, true, false},
	} {
		if got := Lenient.Match(tag(tc.client), tag(tc.current)); got != tc.lenient {
			t.Errorf("Lenient.Match(%s, %s) = %v", tc.client, tc.current, got)
		}
		if got := Strict.Match(tag(tc.client), tag(tc.current)); got != tc.strict {
			t.Errorf("Strict.Match(%s, %s) = %v", tc.client, tc.current, got)
		}
	}
}

func TestEvaluate(t *testing.T) {
	lm := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	existing := State{Exists: true, ETag: `"v2"`, LastModified: lm}
	weakOnly := State{Exists: true, ETag: `W/"v2"`}
	noValidators := State{Exists: true}
	absent := State{}
	httpDate := func(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

	for _, tc := range []struct {
		name   string
		header http.Header
		state  State
		mode   Matching
		want   Outcome
	}{
		{"if-match current", http.Header{"If-Match": {`"v2"`}}, existing, Lenient, Pass},
		{"if-match old", http.Header{"If-Match": {`"v1"`}}, existing, Lenient, FailedIfMatch},
		{"if-match one of list", http.Header{"If-Match": {`"v1", "v2"`}}, existing, Lenient, Pass},
		{"if-match star exists", http.Header{"If-Match": {"*"}}, existing, Lenient, Pass},
		{"if-match star absent", http.Header{"If-Match": {"*"}}, absent, Lenient, FailedIfMatch},
		{"if-match tag absent", http.Header{"If-Match": {`"v2"`}}, absent, Lenient, FailedIfMatch},
		{"if-match weak upstream lenient", http.Header{"If-Match": {`W/"v2"`}}, weakOnly, Lenient, Pass},
		{"if-match weak upstream strict", http.Header{"If-Match": {`W/"v2"`}}, weakOnly, Strict, FailedIfMatch},
		{"if-match encode suffix", http.Header{"If-Match": {`"v2-gzip"`}}, existing, Lenient, Pass},
		{"if-match encode suffix strict", http.Header{"If-Match": {`"v2-gzip"`}}, existing, Strict, FailedIfMatch},
		{"if-match no upstream tag", http.Header{"If-Match": {`"v2"`}}, noValidators, Lenient, FailedIfMatch},
		{"if-match star no upstream tag", http.Header{"If-Match": {`*`}}, noValidators, Lenient, Pass},
		{"if-match wins over ius", http.Header{"If-Match": {`"v2"`}, "If-Unmodified-Since": {httpDate(lm.Add(-time.Hour))}}, existing, Lenient, Pass},
		{"ius not modified", http.Header{"If-Unmodified-Since": {httpDate(lm)}}, existing, Lenient, Pass},
		{"ius subsecond lm", http.Header{"If-Unmodified-Since": {httpDate(lm)}}, State{Exists: true, LastModified: lm.Add(500 * time.Millisecond)}, Lenient, Pass},
		{"ius modified", http.Header{"If-Unmodified-Since": {httpDate(lm.Add(-time.Second))}}, existing, Lenient, FailedIfUnmodifiedSince},
		{"ius absent", http.Header{"If-Unmodified-Since": {httpDate(lm)}}, absent, Lenient, FailedIfUnmodifiedSince},
		{"ius unknown lm", http.Header{"If-Unmodified-Since": {httpDate(lm)}}, State{Exists: true, ETag: `"v2"`}, Lenient, FailedIfUnmodifiedSince},
		{"inm star absent", http.Header{"If-None-Match": {"*"}}, absent, Lenient, Pass},
		{"inm star exists", http.Header{"If-None-Match": {"*"}}, existing, Lenient, FailedIfNoneMatch},
		{"inm other tag", http.Header{"If-None-Match": {`"v1"`}}, existing, Lenient, Pass},
		{"inm current tag", http.Header{"If-None-Match": {`"v1", W/"v2"`}}, existing, Lenient, FailedIfNoneMatch},
		{"inm current tag strict uses weak comparison", http.Header{"If-None-Match": {`W/"v2"`}}, existing, Strict, FailedIfNoneMatch},
		{"if-match passes then inm star fails", http.Header{"If-Match": {"*"}, "If-None-Match": {"*"}}, existing, Lenient, FailedIfNoneMatch},
		{"if-match fails first", http.Header{"If-Match": {`"v1"`}, "If-None-Match": {"*"}}, existing, Lenient, FailedIfMatch},
		{"ius fails before inm", http.Header{"If-Unmodified-Since": {httpDate(lm.Add(-time.Hour))}, "If-None-Match": {"*"}}, existing, Lenient, FailedIfUnmodifiedSince},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.header)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Evaluate(tc.state, tc.mode); got != tc.want {
				t.Errorf("Evaluate = %v (%s), want %v (%s)", got, got.Field(), tc.want, tc.want.Field())
			}
		})
	}
}

// Year 1 is a valid HTTP date and parses to the zero time: it must still
// count as a precondition, and fail against any real resource.
func TestIfUnmodifiedSinceYearOne(t *testing.T) {
	c, err := Parse(http.Header{"If-Unmodified-Since": {"Mon, 01 Jan 0001 00:00:00 GMT"}})
	if err != nil || c.Blind() {
		t.Fatalf("Parse: %+v, %v; blind %v", c, err, c.Blind())
	}
	s := State{Exists: true, LastModified: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
	if got := c.Evaluate(s, Lenient); got != FailedIfUnmodifiedSince {
		t.Errorf("Evaluate = %v", got)
	}
}

// Match is exported: a zero current tag (what ParseETag returns on
// failure) must not crash it.
func TestMatchZeroCurrent(t *testing.T) {
	for _, m := range []Matching{Lenient, Strict} {
		if m.Match(ETag{Opaque: `"a"`}, ETag{}) {
			t.Errorf("%v: a tag matches the zero ETag", m)
		}
	}
}

func TestNamesOnly(t *testing.T) {
	superseded := []string{`"a"`, `"b"`}
	for _, tc := range []struct {
		ifMatch string
		m       Matching
		want    bool
	}{
		{`"a"`, Lenient, true},
		{`"a", "b"`, Lenient, true},
		{`"a", "c"`, Lenient, false}, // "c" may be current
		{`*`, Lenient, false},
		{`W/"a"`, Lenient, true},
		{`W/"a"`, Strict, false},
		{`"a-gzip"`, Lenient, true}, // encode's suffix on a replaced tag
		{`"a-gzip"`, Strict, false},
		{``, Lenient, false},
	} {
		h := http.Header{}
		if tc.ifMatch != "" {
			h.Set("If-Match", tc.ifMatch)
		}
		c, err := Parse(h)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.NamesOnly(superseded, tc.m); got != tc.want {
			t.Errorf("If-Match %s (matching %d): NamesOnly = %v, want %v", tc.ifMatch, tc.m, got, tc.want)
		}
	}
	c, _ := Parse(http.Header{"If-Match": {`"a"`}})
	if c.NamesOnly(nil, Lenient) {
		t.Error("NamesOnly of no tags")
	}
}

// A write's preconditions are parsed into a Conditions the write already
// holds: one tag per list and a date cost no allocation, and what the
// fields point to is the Conditions' own.
func TestParseIntoAllocatesNothing(t *testing.T) {
	h := http.Header{
		"If-Match":            {`"a"`},
		"If-None-Match":       {`W/"b"`},
		"If-Unmodified-Since": {"Mon, 01 Jan 2024 00:00:00 GMT"},
	}
	var c Conditions
	allocs := testing.AllocsPerRun(100, func() {
		if err := c.ParseInto(h); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("ParseInto allocated %v times, want 0", allocs)
	}
	if c.IfMatch.Tags[0].Opaque != `"a"` || !c.IfNoneMatch.Tags[0].Weak || c.IfUnmodifiedSince.Year() != 2024 {
		t.Errorf("parsed %+v", c)
	}
	// Two tags outgrow the inline room and still parse.
	h["If-Match"] = []string{`"a", "b"`}
	if err := c.ParseInto(h); err != nil || len(c.IfMatch.Tags) != 2 || c.IfMatch.Tags[1].Opaque != `"b"` || c.IfNoneMatch.Tags[0].Opaque != `W/"b"`[2:] {
		t.Errorf("two tags: %+v, %v", c.IfMatch, err)
	}
	// A failed parse leaves nothing behind.
	h["If-Match"] = []string{`nope`}
	if err := c.ParseInto(h); err == nil || c.IfMatch != nil || c.IfNoneMatch != nil {
		t.Errorf("invalid: %+v, %v", c, err)
	}
}
