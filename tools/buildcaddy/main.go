// Command buildcaddy builds Caddy with the plugins pinned in xcaddy.json,
// so that the demo, CI and container images all run the same binary.
//
// Usage (from the repository root):
//
//	go -C tools run ./buildcaddy -config ../xcaddy.json -output ../bin/caddy
//
// xcaddy.json uses the field names of xcaddy's Builder type; each plugin may
// carry a "replacement" (a local directory, relative to the file) that is
// passed to xcaddy as --with module@version=replacement.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/caddyserver/xcaddy"
)

type plugin struct {
	xcaddy.Dependency
	Replacement string `json:"replacement,omitempty"`
}

type buildFile struct {
	CaddyVersion string   `json:"caddy_version"`
	Plugins      []plugin `json:"plugins"`
}

func main() {
	configPath := flag.String("config", "xcaddy.json", "build description")
	output := flag.String("output", "caddy", "where to write the binary")
	flag.Parse()

	builder, err := load(*configPath)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := builder.Build(ctx, *output); err != nil {
		log.Fatal(err)
	}
}

func load(path string) (xcaddy.Builder, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return xcaddy.Builder{}, err
	}
	var file buildFile
	if err := json.Unmarshal(raw, &file); err != nil {
		return xcaddy.Builder{}, fmt.Errorf("%s: %w", path, err)
	}
	if file.CaddyVersion == "" {
		return xcaddy.Builder{}, fmt.Errorf("%s: caddy_version is required", path)
	}
	base, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return xcaddy.Builder{}, err
	}
	builder := xcaddy.Builder{CaddyVersion: file.CaddyVersion}
	for _, p := range file.Plugins {
		if p.PackagePath == "" {
			return xcaddy.Builder{}, fmt.Errorf("%s: a plugin has no module_path", path)
		}
		builder.Plugins = append(builder.Plugins, p.Dependency)
		if p.Replacement == "" {
			continue
		}
		dir := p.Replacement
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(base, dir)
		}
		// A version on the old side keeps module proxies that refuse
		// this module's path out of the resolution.
		builder.Replacements = append(builder.Replacements,
			xcaddy.NewReplace(p.Dependency.String(), dir))
	}
	return builder, nil
}
