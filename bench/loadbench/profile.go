package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// guardShare asks a Caddy's admin endpoint for a CPU profile of d and
// returns the share of its samples spent in the guard: a figure from within
// one process, which the noise between runs on a shared machine does not
// touch.
//
// keep, when not empty, is a directory where the profile is kept.
func guardShare(adminAddr, caddyBin, dir string, d time.Duration, keep string) (float64, error) {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", adminAddr, int(d.Seconds())))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("profile: %s", resp.Status)
	}
	file := dir + "/cpu.prof"
	f, err := os.Create(file)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(f, resp.Body)
	f.Close()
	if err != nil {
		return 0, err
	}
	if keep != "" {
		name := strings.NewReplacer(":", "_", "/", "_").Replace(adminAddr)
		if err := os.MkdirAll(keep, 0o755); err != nil {
			return 0, err
		}
		if err := exec.Command("cp", file, keep+"/cpu-"+name+".prof").Run(); err != nil {
			return 0, err
		}
	}
	out, err := exec.Command("go", "tool", "pprof", "-traces", caddyBin, file).Output()
	if err != nil {
		return 0, fmt.Errorf("go tool pprof: %v", err)
	}
	guard, total := attribute(string(out))
	if total == 0 {
		return 0, fmt.Errorf("empty profile")
	}
	return guard / total, nil
}

// attribute sums the samples of `pprof -traces` output, and those of them
// spent in the guard. A sample is the guard's when, walking its stack from
// the leaf up, a frame of the guard (or of its cache library) comes before
// any frame of the handler it wraps or of the response writer underneath:
// so allocation and scheduling done on the guard's behalf count, and the
// work of reverse_proxy and of Caddy's response writers, even when called
// through the guard, does not.
func attribute(traces string) (guard, total float64) {
	for _, block := range strings.Split(traces, "-----------+-------------------------------------------------------") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) == 0 {
			continue
		}
		fields := strings.Fields(lines[0])
		if len(fields) < 2 {
			continue
		}
		v, ok := duration(fields[0])
		if !ok {
			continue
		}
		frames := append([]string{fields[1]}, lines[1:]...)
		total += v
	walk:
		for _, fr := range frames {
			fr = strings.TrimSpace(fr)
			switch {
			case strings.HasPrefix(fr, "github.com/writeguard/caddy-writeguard"),
				strings.HasPrefix(fr, "github.com/dgraph-io/ristretto"):
				guard += v
				break walk
			case strings.Contains(fr, "reverseproxy.(*Handler).ServeHTTP"),
				strings.Contains(fr, "caddyhttp.(*ResponseWriterWrapper)"),
				strings.Contains(fr, "caddyhttp.(*responseRecorder)"),
				strings.HasPrefix(fr, "net/http.(*response)"),
				strings.HasPrefix(fr, "net/http.(*chunkWriter)"):
				break walk
			}
		}
	}
	return guard, total
}

func duration(s string) (float64, bool) {
	for _, u := range []struct {
		suffix string
		scale  float64
	}{{"ms", 1e-3}, {"us", 1e-6}, {"µs", 1e-6}, {"ns", 1e-9}, {"s", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			f, err := strconv.ParseFloat(strings.TrimSuffix(s, u.suffix), 64)
			return f * u.scale, err == nil
		}
	}
	return 0, false
}
