package idempotency

import (
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		field, key, err string
	}{
		{field: `"8e03978e-40d5-43e8-bc93-6894a57f9324"`, key: "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{field: `  "a b"  `, key: "a b"},
		{field: `"say \"hi\" \\o/"`, key: `say "hi" \o/`},
		{field: `"` + strings.Repeat("k", MaxKeyLength) + `"`, key: strings.Repeat("k", MaxKeyLength)},
		{field: ``, err: "empty"},
		{field: `   `, err: "empty"},
		{field: `abc`, err: "quoted string"},
		{field: `""`, err: "key is empty"},
		{field: `"abc`, err: "closing quote"},
		{field: `"abc\`, err: "closing quote"},
		{field: `"a\nb"`, err: "escaped"},
		{field: `"a` + "\t" + `b"`, err: "printable ASCII"},
		{field: `"ä"`, err: "printable ASCII"},
		{field: `"a";p=1`, err: "parameters"},
		{field: `"a", "b"`, err: "more than one"},
		{field: `"a"b`, err: "follow the closing quote"},
		{field: `"` + strings.Repeat("k", MaxKeyLength+1) + `"`, err: "longer than 255"},
		{field: `"` + strings.Repeat("k", MaxKeyLength+1), err: "longer than 255"},
	} {
		key, err := ParseKey(tc.field)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("ParseKey(%q): %v", tc.field, err)
		case tc.err == "" && key != tc.key:
			t.Errorf("ParseKey(%q) = %q, want %q", tc.field, key, tc.key)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseKey(%q) = %q, %v; want an error about %q", tc.field, key, err, tc.err)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{`"a"`, `"a\"b"`, `""`, `"a";x`, ` "k" `} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, field string) {
		key, err := ParseKey(field)
		if err != nil {
			return
		}
		if key == "" || len(key) > MaxKeyLength {
			t.Fatalf("ParseKey(%q) = %q", field, key)
		}
		// Serializing the key again and parsing it gives the same key.
		quoted := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if again, err := ParseKey(quoted); err != nil || again != key {
			t.Fatalf("round trip of %q: %q, %v", key, again, err)
		}
	})
}
