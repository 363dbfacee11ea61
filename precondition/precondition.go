// Package precondition parses the conditional request header fields that
// guard state-changing requests (If-Match, If-None-Match and
// If-Unmodified-Since) and evaluates them against a resource's current
// version in the order RFC 9110 section 13.2.2 prescribes.
//
// It knows nothing of Caddy: it works on header values and versions only.
package precondition

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Limits on what a client may send in one entity-tag list. Real clients send
// one tag; anything near these bounds is an attack or a bug, and evaluating
// it under a resource's lock would let one request stall every writer.
const (
	MaxTags      = 64
	MaxListBytes = 8 << 10
)

// ETag is one entity-tag. Opaque keeps its double quotes, as on the wire.
type ETag struct {
	Weak   bool
	Opaque string
}

// String returns the tag as it is written in a header field.
func (t ETag) String() string {
	if t.Weak {
		return "W/" + t.Opaque
	}
	return t.Opaque
}

// ParseETag parses a single entity-tag (RFC 9110 section 8.8.3), such as an
// ETag response field. Surrounding whitespace is allowed.
func ParseETag(s string) (ETag, bool) {
	t, rest, ok := scanETag(strings.TrimLeft(s, " \t"))
	if !ok || strings.Trim(rest, " \t") != "" {
		return ETag{}, false
	}
	return t, true
}

// scanETag reads one entity-tag at the start of s and returns what follows.
func scanETag(s string) (ETag, string, bool) {
	var t ETag
	if strings.HasPrefix(s, "W/") {
		t.Weak = true
		s = s[2:]
	}
	if len(s) < 2 || s[0] != '"' {
		return ETag{}, s, false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			t.Opaque = s[:i+1]
			return t, s[i+1:], true
		case c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80:
			// etagc
		default:
			return ETag{}, s, false
		}
	}
	return ETag{}, s, false
}

// List is the value of an If-Match or If-None-Match field: either "*" (Any)
// or entity-tags.
type List struct {
	Any  bool
	Tags []ETag
}

// String renders the list as it would be sent.
func (l List) String() string {
	if l.Any {
		return "*"
	}
	parts := make([]string, len(l.Tags))
	for i, t := range l.Tags {
		parts[i] = t.String()
	}
	return strings.Join(parts, ", ")
}

// ParseList parses the field lines of one If-Match or If-None-Match field:
// "*" alone, or a comma-separated list of entity-tags spread over any number
// of lines, with empty list elements ignored (RFC 9110 section 5.6.1).
func ParseList(lines []string) (List, error) {
	return parseList(lines, nil)
}

// parseList is ParseList appending the tags to tags, whose spare capacity
// spares the common single-tag list an allocation.
func parseList(lines []string, tags []ETag) (List, error) {
	l := List{Tags: tags}
	size := 0
	for _, line := range lines {
		size += len(line)
		if size > MaxListBytes {
			return List{}, fmt.Errorf("longer than %d bytes", MaxListBytes)
		}
		s := line
		for {
			s = strings.TrimLeft(s, " \t")
			if s == "" {
				break
			}
			switch {
			case s[0] == ',':
				s = s[1:]
				continue
			case s[0] == '*':
				if l.Any || len(l.Tags) > 0 {
					return List{}, errors.New(`"*" must be the only member`)
				}
				l.Any = true
				s = s[1:]
			default:
				if l.Any {
					return List{}, errors.New(`"*" must be the only member`)
				}
				t, rest, ok := scanETag(s)
				if !ok {
					return List{}, fmt.Errorf("%q is not an entity-tag: tags are quoted, as in \"abc\" or W/\"abc\"", clip(s))
				}
				if len(l.Tags) == MaxTags {
					return List{}, fmt.Errorf("more than %d entity-tags", MaxTags)
				}
				l.Tags = append(l.Tags, t)
				s = rest
			}
			s = strings.TrimLeft(s, " \t")
			if s != "" && s[0] != ',' {
				return List{}, fmt.Errorf("unexpected %q after a list member", clip(s))
			}
		}
	}
	if !l.Any && len(l.Tags) == 0 {
		return List{}, errors.New("no entity-tag")
	}
	if len(l.Tags) == 0 {
		l.Tags = nil
	}
	return l, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// Conditions are the preconditions of one request.
type Conditions struct {
	IfMatch     *List
	IfNoneMatch *List
	// IfUnmodifiedSince is nil when the field is absent or invalid. (A
	// pointer, because a valid date can be the zero time: year 1.)
	IfUnmodifiedSince *time.Time

	// What ParseInto points the fields above at, so that parsing the
	// preconditions of a write allocates nothing of its own. Copies share
	// it, which is harmless: parsed conditions are never modified.
	lists [2]List
	tags  [2]ETag
	date  time.Time
}

// HeaderError reports a syntactically invalid precondition field.
type HeaderError struct {
	Field  string
	Reason string
}

func (e *HeaderError) Error() string { return e.Field + ": " + e.Reason }

// Parse reads the preconditions of a request. An invalid If-Match or
// If-None-Match is an error (the request cannot be evaluated); an invalid
// If-Unmodified-Since is ignored, as RFC 9110 section 13.1.4 requires.
func Parse(h http.Header) (Conditions, error) {
	c := new(Conditions)
	err := c.ParseInto(h)
	return *c, err
}

// ParseInto is Parse into c, which keeps what the fields point to: a
// Conditions that is part of a larger value already allocated costs no
// allocation for lists of one tag each.
func (c *Conditions) ParseInto(h http.Header) error {
	*c = Conditions{}
	for i, name := range [...]string{"If-Match", "If-None-Match"} {
		lines, ok := h[name]
		if !ok {
			continue
		}
		l, err := parseList(lines, c.tags[i:i:i+1])
		if err != nil {
			*c = Conditions{}
			return &HeaderError{Field: name, Reason: err.Error()}
		}
		c.lists[i] = l
		if i == 0 {
			c.IfMatch = &c.lists[0]
		} else {
			c.IfNoneMatch = &c.lists[1]
		}
	}
	if lines := h["If-Unmodified-Since"]; len(lines) == 1 {
		if t, err := http.ParseTime(lines[0]); err == nil {
			c.date = t
			c.IfUnmodifiedSince = &c.date
		}
	}
	return nil
}

// Blind reports whether the request carries no precondition at all: a write
// that would overwrite whatever is there.
func (c Conditions) Blind() bool {
	return c.IfMatch == nil && c.IfNoneMatch == nil && c.IfUnmodifiedSince == nil
}

// Matching selects how a client's entity-tag is compared with the current one
// in If-Match.
type Matching int

const (
	// Lenient compares opaque tags regardless of weakness, and accepts a
	// strong tag that Caddy's encode handler suffixed with its encoding
	// ("abc-gzip" for "abc"). It makes upstreams that emit only weak tags,
	// and sites behind encode, work unchanged.
	Lenient Matching = iota
	// Strict is RFC 9110's strong comparison: both tags strong and
	// character-for-character equal.
	Strict
)

// encodingSuffixes are appended by Caddy's encode handler to strong ETags.
var encodingSuffixes = [...]string{"gzip", "zstd", "br"}

// Match reports whether a client's tag names the current version.
func (m Matching) Match(client, current ETag) bool {
	if m == Strict {
		return !client.Weak && !current.Weak && client.Opaque == current.Opaque
	}
	return weakEqual(client, current)
}

// weakEqual is RFC 9110's weak comparison, widened by encode's suffixes.
func weakEqual(client, current ETag) bool {
	if client.Opaque == current.Opaque {
		return true
	}
	if client.Weak || current.Weak {
		return false
	}
	// client `"abc-gzip"` against current `"abc"`
	c, cur := client.Opaque, current.Opaque
	// An opaque tag is at least its two quotes; the zero ETag is none.
	if len(cur) < 2 || len(c) <= len(cur) || c[:len(cur)-1] != cur[:len(cur)-1] || c[len(cur)-1] != '-' {
		return false
	}
	suffix := c[len(cur) : len(c)-1]
	for _, s := range encodingSuffixes {
		if suffix == s {
			return true
		}
	}
	return false
}

// State is what is known of the target resource when the conditions are
// evaluated.
type State struct {
	Exists       bool
	ETag         string    // as the upstream sent it; "" if none
	LastModified time.Time // zero if unknown
}

// Outcome is the result of an evaluation.
type Outcome int

const (
	// Pass: every precondition holds; perform the method.
	Pass Outcome = iota
	// FailedIfMatch: If-Match names no current version (or "*" and the
	// resource does not exist).
	FailedIfMatch
	// FailedIfUnmodifiedSince: the resource changed after the given date,
	// does not exist, or has no known modification date to compare.
	FailedIfUnmodifiedSince
	// FailedIfNoneMatch: the resource exists ("*") or has a listed version.
	FailedIfNoneMatch
)

// Field names the header whose condition failed.
func (o Outcome) Field() string {
	switch o {
	case FailedIfMatch:
		return "If-Match"
	case FailedIfUnmodifiedSince:
		return "If-Unmodified-Since"
	case FailedIfNoneMatch:
		return "If-None-Match"
	}
	return ""
}

// Evaluate applies the conditions to the resource's state in the order of
// RFC 9110 section 13.2.2 (steps 1 to 3; steps 4 and 5 concern GET and HEAD).
func (c Conditions) Evaluate(s State, m Matching) Outcome {
	current, hasTag := ETag{}, false
	if s.Exists && s.ETag != "" {
		current, hasTag = ParseETag(s.ETag)
	}
	if c.IfMatch != nil {
		if !s.Exists {
			return FailedIfMatch
		}
		if !c.IfMatch.Any && !(hasTag && anyMatch(c.IfMatch.Tags, current, m.Match)) {
			return FailedIfMatch
		}
	} else if c.IfUnmodifiedSince != nil {
		// HTTP dates have one-second resolution.
		if !s.Exists || s.LastModified.IsZero() ||
			s.LastModified.Truncate(time.Second).After(*c.IfUnmodifiedSince) {
			return FailedIfUnmodifiedSince
		}
	}
	if c.IfNoneMatch != nil && s.Exists {
		if c.IfNoneMatch.Any {
			return FailedIfNoneMatch
		}
		match := Lenient.Match
		if m == Strict {
			match = func(a, b ETag) bool { return a.Opaque == b.Opaque }
		}
		if hasTag && anyMatch(c.IfNoneMatch.Tags, current, match) {
			return FailedIfNoneMatch
		}
	}
	return Pass
}

// NamesOnly reports whether the conditions include an If-Match list (not
// "*") whose every entity-tag matches one of tags. With tags the versions
// that writes have replaced, such a write is certainly stale.
func (c Conditions) NamesOnly(tags []string, m Matching) bool {
	if c.IfMatch == nil || c.IfMatch.Any || len(c.IfMatch.Tags) == 0 || len(tags) == 0 {
		return false
	}
	for _, client := range c.IfMatch.Tags {
		found := false
		for _, s := range tags {
			if t, ok := ParseETag(s); ok && m.Match(client, t) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func anyMatch(tags []ETag, current ETag, match func(client, current ETag) bool) bool {
	for _, t := range tags {
		if match(t, current) {
			return true
		}
	}
	return false
}
