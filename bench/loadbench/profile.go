package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// guardShare asks a Caddy's admin endpoint for a CPU profile of d and
// returns the share of its samples spent in the guard: a figure from within
// one process, which the noise between runs on a shared machine does not
// touch.
//
// keep, when not empty, is a directory where the profile is kept, named
// after name.
func guardShare(adminAddr, caddyBin, dir string, d time.Duration, keep, name string) (profileResult, error) {
	var r profileResult
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", adminAddr, int(d.Seconds())))
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("profile: %s", resp.Status)
	}
	file := dir + "/cpu.prof"
	f, err := os.Create(file)
	if err != nil {
		return r, err
	}
	_, err = io.Copy(f, resp.Body)
	f.Close()
	if err != nil {
		return r, err
	}
	if keep != "" {
		name = strings.NewReplacer(":", "_", "/", "_", " ", "_", "(", "", ")", "").Replace(name)
		if err := os.MkdirAll(keep, 0o755); err != nil {
			return r, err
		}
		if err := exec.Command("cp", file, keep+"/cpu-"+name+".prof").Run(); err != nil {
			return r, err
		}
	}
	out, err := exec.Command("go", "tool", "pprof", "-traces", caddyBin, file).Output()
	if err != nil {
		return r, fmt.Errorf("go tool pprof: %v", err)
	}
	r = attribute(string(out))
	if r.total == 0 {
		return r, fmt.Errorf("empty profile")
	}
	return r, nil
}

// profileResult is a profile's samples (in seconds of CPU), those spent in
// the guard, and those by the first frame of the guard above the sample.
type profileResult struct {
	guard, total float64
	byFunc       map[string]float64
}

func (r profileResult) share() float64 {
	if r.total == 0 {
		return 0
	}
	return r.guard / r.total
}

type funcShare struct {
	name  string
	share float64
}

// top lists the n functions of the guard with the most samples, as shares
// of all samples.
func (r profileResult) top(n int) []funcShare {
	var fs []funcShare
	for name, v := range r.byFunc {
		fs = append(fs, funcShare{name, v / r.total})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].share > fs[j].share })
	return fs[:min(n, len(fs))]
}

// attribute sums the samples of `pprof -traces` output, and those of them
// spent in the guard. A sample is the guard's when, walking its stack from
// the leaf up, a frame of the guard (or of its cache library) comes before
// any frame of the handler it wraps or of the response writer underneath:
// so allocation and scheduling done on the guard's behalf count, and the
// work of reverse_proxy and of Caddy's response writers, even when called
// through the guard, does not.
func attribute(traces string) (r profileResult) {
	r.byFunc = map[string]float64{}
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
		r.total += v
	walk:
		for _, fr := range frames {
			fr = strings.TrimSpace(fr)
			switch {
			case strings.HasPrefix(fr, "github.com/writeguard/caddy-writeguard"),
				strings.HasPrefix(fr, "github.com/dgraph-io/ristretto"):
				r.guard += v
				r.byFunc[strings.TrimPrefix(fr, "github.com/writeguard/caddy-writeguard.")] += v
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
	return r
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
