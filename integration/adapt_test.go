package integration

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite golden JSON files from the current adapter output")

// TestCaddyfileAdapt checks the Caddyfile-to-JSON translation against the
// golden files in caddyfile_adapt/, in the format of Caddy's own tests: the
// Caddyfile, a line of dashes, the expected JSON.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	split := regexp.MustCompile(`(?m)^-{5,}\s*$`)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			parts := split.Split(string(raw), 2)
			if len(parts) != 2 {
				t.Fatalf("%s: no line of dashes between Caddyfile and JSON", f)
			}
			input, want := strings.TrimSpace(parts[0])+"\n", strings.TrimSpace(parts[1])
			if *update {
				os.WriteFile(f, []byte(input+"----------\n"+adapt(t, input)+"\n"), 0o644)
				return
			}
			caddytest.AssertAdapt(t, input, "caddyfile", want)
		})
	}
}

// TestExamples adapts every Caddyfile in examples/, compares it with the JSON
// beside it, and validates the result as Caddy would before running it.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/Caddyfile*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, ".json") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			got := adapt(t, string(raw))
			golden := f + ".json"
			if *update {
				os.WriteFile(golden, []byte(got+"\n"), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("every example needs its JSON beside it: %v", err)
			}
			if strings.TrimSpace(string(want)) != got {
				t.Errorf("%s adapts to something other than %s:\n%s", f, golden, got)
			}
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(got), &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Errorf("%s does not validate: %v", f, err)
			}
			if !strings.Contains(got, `"handler": "write_guard"`) {
				t.Errorf("%s does not use write_guard", f)
			}
		})
	}
}

func adapt(t *testing.T, caddyfile string) string {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("adapt warning: %s:%d: %s", w.File, w.Line, w.Message)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
