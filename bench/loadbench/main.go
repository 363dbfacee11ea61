// Command loadbench compares Caddy with write_guard in front of a fast
// backend against plain reverse_proxy, on loopback: throughput, latency and
// CPU per request for GETs and conditional PUTs (wrk), alternating the two
// setups A/B/B/A and printing medians and ratios; then 64 writers on one
// resource, the lost-update workload with and without the guard, and
// writes validated by If-Unmodified-Since on one resource without an ETag.
//
//	go run ./bench/loadbench -caddy bin/caddy
//
// Every phase is bounded in time; everything listens on 127.0.0.1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "backend" {
		serveBackend(os.Args[2:])
		return
	}
	caddyBin := flag.String("caddy", "bin/caddy", "Caddy built with write_guard")
	duration := flag.Duration("duration", 5*time.Second, "length of one wrk run")
	reps := flag.Int("reps", 3, "A/B/B/A rounds per workload")
	conns := flag.Int("conns", 16, "wrk connections (at most 32: Caddy keeps 32 idle upstream connections)")
	serverCPU := flag.String("server-cpus", "0", "CPUs for Caddy and the backend (taskset list)")
	loadCPU := flag.String("load-cpus", "1", "CPUs for wrk")
	writerCounts := flag.String("writers", "1,8,64", "writer counts for the contention runs (comma-separated)")
	writeDelays := flag.String("write-delays", "5ms,20ms", "how long the backend takes to apply a write to the contended resource (comma-separated)")
	writeDelay := flag.Duration("write-delay", 5*time.Millisecond, "how long the backend takes to apply the lost-update workload's writes")
	contention := flag.Duration("contention", 10*time.Second, "length of the contention and lost-update runs")
	memLimit := flag.String("gc-memlimit", "256MiB", "run every process with GOGC=off and this GOMEMLIMIT (empty: Go's defaults)")
	profile := flag.Duration("profile", 20*time.Second, "length of the profiled run after each workload (0: none)")
	phases := flag.String("phases", "wrk,contention,lost,dates", "what to run: wrk (the A/B/B/A runs), contention, lost (the lost-update workload), dates (writes validated by If-Unmodified-Since on one resource)")
	keep := flag.String("keep-profiles", "", "directory to keep each profiled run's CPU profile in, named after its setup (empty: none kept)")
	only := flag.String("workloads", "", "run only the A/B/B/A workloads whose name contains this (empty: all)")
	beforeBin := flag.String("before-caddy", "", "a Caddy built from an earlier commit: its plain reverse_proxy and write_guard run beside this build's in the GET workloads, interleaved, and its write_guard in the date-validated runs (empty: none)")
	untaggedSizes := flag.String("untagged-sizes", "1KiB,100KiB,5MiB", "body sizes of the GET workloads in front of resources without an ETag (comma-separated; empty: none)")
	dateClients := flag.Int("date-clients", 8, "clients of the date-validated write runs")
	dateDuration := flag.Duration("date-duration", 15*time.Second, "length of each date-validated write run")
	profileRounds := flag.Int("profile-rounds", 1, "profiled runs of each guarded setup per workload, alternating between setups when there are two")
	profileTop := flag.Int("profile-top", 6, "how many of the guard's functions to list with their share of the samples (the first frame of the guard above each sample)")
	flag.Parse()
	run := func(phase string) bool { return slices.Contains(strings.Split(*phases, ","), phase) }

	for _, tool := range []string{"wrk", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			log.Fatalf("%s is needed (Debian: apt-get install %s)", tool, map[string]string{"wrk": "wrk", "taskset": "util-linux"}[tool])
		}
	}
	dir, err := os.MkdirTemp("", "loadbench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
	start := func(cpus string, name string, args ...string) *exec.Cmd {
		cmd := exec.Command("taskset", append([]string{"-c", cpus, name}, args...)...)
		cmd.Stderr = os.Stderr
		if *memLimit != "" {
			cmd.Env = append(os.Environ(), "GOGC=off", "GOMEMLIMIT="+*memLimit)
		}
		if err := cmd.Start(); err != nil {
			log.Fatal(err)
		}
		procs = append(procs, cmd)
		return cmd
	}

	start(*serverCPU, self, "backend", "-listen", backendAddr, "-write-delay", writeDelay.String())
	setups := []*setup{
		{name: "reverse_proxy", port: 18091, guard: ""},
		{name: "write_guard", port: 18092, guard: "write_guard"},
		// Every write asks the upstream for the version under the lock,
		// exactly as a write whose version the cache does not know.
		{name: "write_guard (check)", port: 18093, guard: "write_guard {\n\t\trevalidate always\n\t}"},
	}
	// With redis-server at hand, a guard whose locks and versions are in
	// Redis, on the same CPUs as the rest of the server side.
	var redisSetup *setup
	if _, err := exec.LookPath("redis-server"); err == nil {
		start(*serverCPU, "redis-server", "--port", "18094", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		redisSetup = &setup{name: "write_guard (redis)", port: 18095, guard: "write_guard {\n\t\tstore redis 127.0.0.1:18094\n\t}"}
		setups = append(setups, redisSetup)
		time.Sleep(200 * time.Millisecond) // Redis is dialled on the first write
	} else {
		fmt.Println("redis-server not found: store redis is not measured (Debian: apt-get install redis-server)")
	}
	// The earlier build's pair, on ports of their own, started last so
	// that the setups above keep their ports whatever is measured.
	var plainBefore, guardedBefore *setup
	if *beforeBin != "" {
		plainBefore = &setup{name: "reverse_proxy (before)", port: 18096, guard: "", bin: *beforeBin}
		guardedBefore = &setup{name: "write_guard (before)", port: 18097, guard: "write_guard", bin: *beforeBin}
		setups = append(setups, plainBefore, guardedBefore)
	}
	for _, s := range setups {
		if s.bin == "" {
			s.bin = *caddyBin
		}
		cfg := filepath.Join(dir, strconv.Itoa(s.port)+".Caddyfile")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	log default {
		level ERROR
	}
}
:%d {
	%s
	reverse_proxy %s
}
`, s.admin(), s.port, s.guard, backendAddr)), 0o644)
		s.cmd = start(*serverCPU, s.bin, "run", "--config", cfg, "--adapter", "caddyfile")
	}
	for _, s := range setups {
		waitUp(s.url() + "/r/1")
	}
	fmt.Printf("pinning: Caddy (every setup) and the backend on CPUs %s, wrk on CPUs %s; %d connections, %v per run, %d A/B/B/A rounds\n",
		*serverCPU, *loadCPU, *conns, *duration, *reps)
	if plainBefore != nil {
		fmt.Printf("earlier build: %s, measured in the GET workloads in A/B/C/D/D/C/B/A order with this one's\n", *beforeBin)
	}
	if *memLimit != "" {
		// Go collects garbage when the heap has grown by GOGC percent of the
		// live heap. The guard's cache makes the live heap larger, so left
		// alone the guarded Caddy collects less often than the plain one
		// and looks cheaper than it is.
		fmt.Printf("garbage collection: GOGC=off GOMEMLIMIT=%s for every process, so that heap size does not decide how often each collects\n", *memLimit)
	}
	perf := perfWorks()
	if perf {
		fmt.Println("CPU cost: user-space instructions per request (perf stat -e instructions:u)")
	} else {
		fmt.Println("CPU cost: CPU time per request from /proc/<pid>/stat (perf's counter is not available here)")
	}

	if run("wrk") {
		workloads := []workload{
			{name: "GET, version known", script: getScript, guarded: setups[1], before: true},
		}
		for _, size := range strings.Split(*untaggedSizes, ",") {
			if size == "" {
				continue
			}
			n, err := parseSize(size)
			if err != nil {
				log.Fatal(err)
			}
			workloads = append(workloads, workload{
				name:    fmt.Sprintf("GET without an ETag (Last-Modified only), %s body: etags auto tags it", size),
				script:  fmt.Sprintf(untaggedGetScript, n),
				guarded: setups[1],
			})
		}
		workloads = append(workloads,
			workload{name: "PUT, If-Match naming the version the previous write made (cache hit but for a resource's first write)", script: putScript, guarded: setups[1]},
			workload{name: "PUT, If-Match, version asked of the upstream under the lock (as on a cache miss)", script: putScript, guarded: setups[2]},
		)
		if redisSetup != nil {
			workloads = append(workloads, workload{name: "PUT as above, store redis against store memory", script: putScript, plain: setups[1], guarded: redisSetup})
		}
		for wi, wl := range workloads {
			if !strings.Contains(wl.name, *only) {
				continue
			}
			luaFile := filepath.Join(dir, "load.lua")
			os.WriteFile(luaFile, []byte(wl.script), 0o644)
			plain, guarded := setups[0], wl.guarded
			if wl.plain != nil {
				plain = wl.plain
			}
			// A/B/B/A, or with the earlier build A/B/C/D/D/C/B/A: every
			// setup is measured as often early as late in a round.
			order := []*setup{plain, guarded}
			profiled := []*setup{guarded}
			if wl.before && guardedBefore != nil {
				order = append(order, guardedBefore, plainBefore)
				profiled = append(profiled, guardedBefore)
			}
			results := map[*setup][]result{}
			for _, s := range order { // warm up: connections, the guard's cache
				runWrk(*loadCPU, 2, *conns, 2*time.Second, luaFile, s, false)
			}
			for range *reps {
				for _, s := range order {
					results[s] = append(results[s], runWrk(*loadCPU, 2, *conns, *duration, luaFile, s, true))
				}
				for _, s := range slices.Backward(order) {
					results[s] = append(results[s], runWrk(*loadCPU, 2, *conns, *duration, luaFile, s, true))
				}
			}
			report(wl.name, plain.name, guarded.name, results[plain], results[guarded], perf)
			if len(profiled) > 1 {
				report(wl.name+", earlier build", plainBefore.name, guardedBefore.name, results[plainBefore], results[guardedBefore], perf)
				now := median(costs(results[guarded])) / median(costs(results[plain]))
				then := median(costs(results[guardedBefore])) / median(costs(results[plainBefore]))
				fmt.Printf("  CPU per request, write_guard over reverse_proxy: %.3f now, %.3f before; write_guard now over before: %.3f\n",
					now, then, median(costs(results[guarded]))/median(costs(results[guardedBefore])))
			}
			// Profiled runs of the guarded setups: at 100 samples a second,
			// a share of a few percent needs a long one.
			if *profile > 0 {
				shares := map[*setup][]float64{}
				for round := range *profileRounds {
					seq := profiled
					if round%2 == 1 {
						seq = slices.Clone(profiled)
						slices.Reverse(seq)
					}
					for _, s := range seq {
						p := make(chan profileResult, 1)
						go func() {
							name := fmt.Sprintf("w%d-%s-%d", wi, s.name, round)
							r, err := guardShare(s.admin(), s.bin, dir, *profile, *keep, name)
							if err != nil {
								log.Printf("profile: %v", err)
							}
							p <- r
						}()
						runWrk(*loadCPU, 2, *conns, *profile+time.Second, luaFile, s, false)
						r := <-p
						if r.total == 0 {
							continue
						}
						shares[s] = append(shares[s], r.share())
						fmt.Printf("  the guard's share of %s's CPU samples (pprof, %v): %.1f%% of %.0f samples, so a throughput ratio of about %.3f where Caddy is the bottleneck\n",
							s.name, *profile, r.share()*100, r.total*100, 1-r.share())
						for _, f := range r.top(*profileTop) {
							fmt.Printf("      %5.2f%%  %s\n", f.share*100, f.name)
						}
					}
				}
				if len(profiled) > 1 && len(shares[guarded]) > 0 && len(shares[guardedBefore]) > 0 {
					fmt.Printf("  the guard's share, medians: %.2f%% now, %.2f%% before: %+.2f points\n",
						median(shares[guarded])*100, median(shares[guardedBefore])*100, (median(shares[guarded])-median(shares[guardedBefore]))*100)
				}
			}
		}
	}
	if run("contention") {
		fmt.Printf("\nwriters on one resource, each reading it and writing it back with If-Match, %v per run\n  (worst wait: longest time a writer went without a successful write; fewest, mean: successful writes per writer)\n", *contention)
		fmt.Printf("  %-14s %-9s %-7s %-8s %10s %7s %7s %9s %11s %8s %8s %9s\n", "through", "write", "writers", "retry", "writes/s", "bound", "ratio", "refused", "worst wait", "fewest", "mean", "Caddy CPU")
		for _, delay := range strings.Split(*writeDelays, ",") {
			wd, err := time.ParseDuration(delay)
			if err != nil {
				log.Fatal(err)
			}
			for _, n := range strings.Split(*writerCounts, ",") {
				writers, err := strconv.Atoi(n)
				if err != nil {
					log.Fatal(err)
				}
				if writers == 1 {
					// One writer loses nothing without the guard either: what
					// its read and write cost through plain reverse_proxy is
					// the yardstick for the guarded runs.
					contend(setups[0], writers, *contention, wd, false)
				}
				contend(setups[1], writers, *contention, wd, false)
				if writers > 8 {
					contend(setups[1], writers, *contention, wd, true)
				}
			}
		}
	}
	if run("lost") {
		lostUpdates(setups[0].url(), setups[1].url(), *contention)
	}
	if run("dates") {
		fmt.Printf("\nwrites validated by their date: %d clients on one resource without an ETag (Last-Modified in seconds), each a GET and a PUT of the value read plus one, %v per run, upstream write %v\n",
			*dateClients, *dateDuration, *writeDelay)
		fmt.Printf("  %-24s %-20s %9s %9s %9s %7s %6s %12s %12s\n", "through", "precondition", "acked", "writes/s", "refused", "other", "lost", "mean ack", "slowest ack")
		runs := []struct {
			s     *setup
			field string
		}{{setups[0], "If-Unmodified-Since"}, {setups[1], "If-Unmodified-Since"}, {setups[1], "If-Match"}}
		if guardedBefore != nil {
			runs = append(runs, struct {
				s     *setup
				field string
			}{guardedBefore, "If-Unmodified-Since"})
		}
		for _, r := range runs {
			dateWrites(r.s, r.field, *dateClients, *dateDuration)
		}
	}
}

// dateWrites runs clients that each read one resource and write it back
// incremented with field (If-Unmodified-Since: the Last-Modified read, or
// If-Match: the ETag read), for d, and reports the writes acknowledged per
// second, the refusals and the acknowledged writes the counter lacks.
func dateWrites(s *setup, field string, clients int, d time.Duration) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 60 * time.Second}
	url := fmt.Sprintf("%s/d/%s-%s-%d", s.url(), strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(s.name), field, time.Now().UnixNano())
	first := counter(client, url)
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var acked, refused, other atomic.Int64
	var mu sync.Mutex
	var ackTimes []time.Duration
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := client.Get(url)
				if err != nil {
					other.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				n, err := strconv.Atoi(string(body))
				if err != nil {
					other.Add(1)
					continue
				}
				req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(strconv.Itoa(n+1)))
				switch field {
				case "If-Match":
					req.Header.Set("If-Match", resp.Header.Get("ETag"))
				default:
					req.Header.Set("If-Unmodified-Since", resp.Header.Get("Last-Modified"))
				}
				sent := time.Now()
				resp, err = client.Do(req)
				if err != nil {
					other.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode >= 200 && resp.StatusCode < 300:
					acked.Add(1)
					mu.Lock()
					ackTimes = append(ackTimes, time.Since(sent))
					mu.Unlock()
				case resp.StatusCode == http.StatusPreconditionFailed:
					refused.Add(1)
				default:
					other.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	// A write held for its date may be answered after d: the rate is over
	// the time until the last answer.
	elapsed := time.Since(began)
	lost := acked.Load() - int64(counter(client, url)-first)
	var mean, slowest time.Duration
	for _, t := range ackTimes {
		mean += t
		slowest = max(slowest, t)
	}
	if len(ackTimes) > 0 {
		mean /= time.Duration(len(ackTimes))
	}
	fmt.Printf("  %-24s %-20s %9d %9.2f %9d %7d %6d %12v %12v\n", s.name, field, acked.Load(), float64(acked.Load())/elapsed.Seconds(), refused.Load(), other.Load(), lost,
		mean.Round(time.Millisecond), slowest.Round(time.Millisecond))
}

func costs(rs []result) []float64 {
	var xs []float64
	for _, r := range rs {
		xs = append(xs, r.perReq)
	}
	return xs
}

// parseSize reads 1KiB, 100KiB, 5MiB (or a count of bytes).
func parseSize(s string) (int, error) {
	for _, u := range []struct {
		suffix string
		scale  int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"KB", 1000}, {"MB", 1000 * 1000}, {"B", 1}, {"", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			n, err := strconv.Atoi(strings.TrimSuffix(s, u.suffix))
			if err != nil {
				return 0, fmt.Errorf("size %q: %v", s, err)
			}
			return n * u.scale, nil
		}
	}
	return 0, fmt.Errorf("size %q", s)
}

const backendAddr = "127.0.0.1:18090"

type setup struct {
	name  string
	port  int
	guard string
	// bin is the Caddy binary it runs; its symbols resolve the profiles.
	bin string
	cmd *exec.Cmd
}

// admin is the setup's admin endpoint, which serves its CPU profiles.
func (s *setup) admin() string { return "127.0.0.1:" + strconv.Itoa(s.port+100) }

func (s *setup) url() string { return "http://127.0.0.1:" + strconv.Itoa(s.port) }

type workload struct {
	name, script string
	guarded      *setup
	// plain is what guarded is compared with; nil: plain reverse_proxy.
	plain *setup
	// before: the earlier build's pair is measured beside this one's, when
	// there is one.
	before bool
}

// 10,000 resources, each with a version that never changes: a PUT always
// names the current one.
const getScript = `
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/r/" .. (n % 10000))
end
`

// 10,000 resources without an ETag, each with a Last-Modified that never
// changes and a body of %d bytes: with etags auto the guard hashes every
// answer to give it a tag.
const untaggedGetScript = `
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/n/%[1]d/" .. (n %% 10000))
end
`

// Each wrk thread writes its own 500 resources (fresh ones in every run:
// the run's nonce is in their path), each write naming the version the
// previous one made: the backend's /v/ resources start at "c0" and count
// their writes. So every write changes the version, as real writes do, and
// one write in forty or so is a resource's first in the run, which the guard
// has to ask the upstream about.
const putScript = `
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local n, nonce, writes = 0, "", {}
function init(args)
  nonce = args[1]
end
request = function()
  n = n + 1
  if n == 1 then
    -- wrk asks each thread's script for one request it never sends: were it
    -- a write, every later write to that resource would name a version one
    -- ahead of the backend's and get a 412.
    return wrk.format("GET", "/r/0")
  end
  local i = n % 500
  local k = writes[i] or 0
  writes[i] = k + 1
  return wrk.format("PUT", "/v/" .. nonce .. "/" .. id .. "/" .. i, {["If-Match"] = '"c' .. k .. '"', ["Content-Type"] = "text/plain"}, "x")
end
`

type result struct {
	// upstream is the number of requests the backend served per request
	// wrk sent.
	upstream  float64
	rps       float64
	p99       time.Duration
	perReq    float64 // instructions or CPU seconds per request
	non2xx    int
	requests  int
	errorsOut string
}

var (
	rpsRe      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	p99Re      = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
	requestsRe = regexp.MustCompile(`(\d+) requests in`)
	non2xxRe   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// runs numbers wrk runs, so that each writes resources of its own.
var runs int

func runWrk(cpus string, threads, conns int, d time.Duration, script string, s *setup, measure bool) result {
	runs++
	nonce := fmt.Sprintf("%d-%d", os.Getpid(), runs)
	args := []string{"-c", cpus, "wrk", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns), "-d", d.String(), "--latency", "-s", script, s.url(), "--", nonce}
	cmd := exec.Command("taskset", args...)
	var cost func() float64
	if measure {
		cost = startCost(s.cmd.Process.Pid, d)
	}
	upstreamBefore := backendRequests()
	out, err := cmd.CombinedOutput()
	if err != nil {
		log.Fatalf("wrk: %v\n%s", err, out)
	}
	var r result
	text := string(out)
	if m := rpsRe.FindStringSubmatch(text); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := p99Re.FindStringSubmatch(text); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
		r.p99 = time.Duration(v * float64(unit))
	}
	if m := requestsRe.FindStringSubmatch(text); m != nil {
		r.requests, _ = strconv.Atoi(m[1])
	}
	if m := non2xxRe.FindStringSubmatch(text); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	if cost != nil && r.requests > 0 {
		r.perReq = cost() / float64(r.requests)
	}
	if r.requests > 0 {
		r.upstream = float64(backendRequests()-upstreamBefore) / float64(r.requests)
	}
	return r
}

// backendRequests asks the backend how many requests it has served.
func backendRequests() int64 {
	resp, err := http.Get("http://" + backendAddr + "/_requests")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n, _ := strconv.ParseInt(strings.TrimSpace(string(body)), 10, 64)
	return n - 1 // not counting this one
}

// perfWorks reports whether perf can count this machine's instructions.
func perfWorks() bool {
	out, err := exec.Command("perf", "stat", "-x,", "-e", "instructions:u", "true").CombinedOutput()
	return err == nil && !strings.Contains(string(out), "not supported") && !strings.Contains(string(out), "<not")
}

// startCost starts measuring the CPU a process spends during d and returns
// a function that waits for the measurement and gives it.
func startCost(pid int, d time.Duration) func() float64 {
	if perfWorks() {
		cmd := exec.Command("perf", "stat", "-x,", "-e", "instructions:u", "-p", strconv.Itoa(pid), "--", "sleep", strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
		var buf strings.Builder
		cmd.Stderr = &buf
		cmd.Start()
		return func() float64 {
			cmd.Wait()
			for _, line := range strings.Split(buf.String(), "\n") {
				if f := strings.Split(line, ","); len(f) > 2 && strings.HasPrefix(f[2], "instructions") {
					v, _ := strconv.ParseFloat(f[0], 64)
					return v
				}
			}
			return 0
		}
	}
	before := cpuSeconds(pid)
	return func() float64 { return cpuSeconds(pid) - before }
}

func cpuSeconds(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(raw)[strings.LastIndexByte(string(raw), ')')+2:])
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func report(name, plainName, guardedName string, plain, guarded []result, perf bool) {
	pick := func(rs []result, f func(result) float64) float64 {
		var xs []float64
		for _, r := range rs {
			xs = append(xs, f(r))
		}
		return median(xs)
	}
	rps := func(r result) float64 { return r.rps }
	p99 := func(r result) float64 { return float64(r.p99) / float64(time.Millisecond) }
	cost := func(r result) float64 { return r.perReq }
	upstream := func(r result) float64 { return r.upstream }
	non2xx := func(rs []result) (n int) {
		for _, r := range rs {
			n += r.non2xx
		}
		return n
	}
	fmt.Printf("\n%s (medians of %d runs each)\n", name, len(plain))
	fmt.Printf("  %-22s %20s %20s %8s\n", "", plainName, guardedName, "ratio")
	row := func(label string, a, b float64, format string) {
		fmt.Printf("  %-22s %20s %20s %8.3f\n", label, fmt.Sprintf(format, a), fmt.Sprintf(format, b), b/a)
	}
	row("requests/s", pick(plain, rps), pick(guarded, rps), "%.0f")
	row("upstream requests/req", pick(plain, upstream), pick(guarded, upstream), "%.3f")
	row("p99 latency (ms)", pick(plain, p99), pick(guarded, p99), "%.2f")
	if perf {
		row("instructions/request", pick(plain, cost), pick(guarded, cost), "%.0f")
	} else {
		row("CPU µs/request", pick(plain, cost)*1e6, pick(guarded, cost)*1e6, "%.1f")
	}
	runs := func(rs []result) string {
		var parts []string
		for _, r := range rs {
			parts = append(parts, strconv.FormatFloat(r.rps, 'f', 0, 64))
		}
		return strings.Join(parts, " ")
	}
	fmt.Printf("  requests/s of each run: %s %s; %s %s\n", plainName, runs(plain), guardedName, runs(guarded))
	if n := non2xx(guarded) + non2xx(plain); n > 0 {
		fmt.Printf("  non-2xx answers: %d %s, %d %s\n", non2xx(plain), plainName, non2xx(guarded), guardedName)
	}
}

func waitUp(url string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return
		}
	}
	log.Fatalf("%s did not come up", url)
}

// contend runs writers that each read one resource and write it back with
// If-Match, retrying on 412 and 409 at once or, with backoff, after a random
// pause that doubles with each refusal in a row (up to 2 ms, ..., 32 ms), for
// d.
func contend(guarded *setup, writers int, d, writeDelay time.Duration, backoff bool) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}, Timeout: 60 * time.Second}
	url := fmt.Sprintf("%s/hot/%v/contended-%d-%v", guarded.url(), writeDelay, writers, backoff)
	first := counter(client, url)
	cpuBefore := cpuSeconds(guarded.cmd.Process.Pid)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var ok, refused atomic.Int64
	maxWait := make([]time.Duration, writers)
	wins := make([]int, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			last, fails := time.Now(), 0
			for ctx.Err() == nil {
				status := edit(client, url)
				switch {
				case status >= 200 && status < 300:
					ok.Add(1)
					wins[i]++
					if w := time.Since(last); w > maxWait[i] {
						maxWait[i] = w
					}
					last, fails = time.Now(), 0
				case status == http.StatusPreconditionFailed || status == http.StatusConflict:
					refused.Add(1)
					if backoff {
						fails = min(fails+1, 5)
						time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond) << fails)))
					}
				default:
					time.Sleep(10 * time.Millisecond)
				}
			}
			if w := time.Since(last); w > maxWait[i] {
				maxWait[i] = w // the wait that the run's end cut short
			}
		})
	}
	wg.Wait()
	cpu := (cpuSeconds(guarded.cmd.Process.Pid) - cpuBefore) / d.Seconds()
	worst := slices.Max(maxWait)
	rate := float64(ok.Load()) / d.Seconds()
	retry := "at once"
	if backoff {
		retry = "backoff"
	}
	fewest := slices.Min(wins)
	fmt.Printf("  %-14s %-9v %-7d %-8s %10.1f %7.1f %7.3f %9d %11v %8d %8.1f %8.0f%%\n",
		guarded.name, writeDelay, writers, retry, rate, 1/writeDelay.Seconds(), rate*writeDelay.Seconds(), refused.Load(), worst.Round(time.Millisecond), fewest, float64(ok.Load())/float64(writers), cpu*100)
	if lost := ok.Load() - int64(counter(client, url)-first); lost != 0 {
		fmt.Printf("  LOST %d of %d acknowledged writes\n", lost, ok.Load())
	}
}

// edit reads the counter at url, and writes it back incremented with
// If-Match.
func edit(client *http.Client, url string) int {
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	n, err := strconv.Atoi(string(body))
	if err != nil {
		return 0
	}
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(strconv.Itoa(n+1)))
	req.Header.Set("If-Match", resp.Header.Get("ETag"))
	resp, err = client.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// lostUpdates runs the increment workload straight through reverse_proxy
// and through write_guard: every acknowledged increment that is missing
// from the final counter is a lost update.
func lostUpdates(plain, guarded string, d time.Duration) {
	fmt.Printf("\nlost-update workload: 16 clients incrementing 4 counters, %v each\n", d)
	for _, s := range []struct{ name, base string }{{"reverse_proxy", plain}, {"write_guard", guarded}} {
		client := &http.Client{Timeout: 60 * time.Second}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		var acked [4]atomic.Int64
		start := make([]int, 4)
		for i := range start {
			start[i] = counter(client, fmt.Sprintf("%s/hot/%s-%d", s.base, s.name, i))
		}
		var wg sync.WaitGroup
		for c := range 16 {
			wg.Go(func() {
				for j := 0; ctx.Err() == nil; j++ {
					i := (c + j) % 4
					if st := edit(client, fmt.Sprintf("%s/hot/%s-%d", s.base, s.name, i)); st >= 200 && st < 300 {
						acked[i].Add(1)
					}
				}
			})
		}
		wg.Wait()
		cancel()
		var lost, total int64
		for i := range start {
			final := counter(client, fmt.Sprintf("%s/hot/%s-%d", s.base, s.name, i))
			total += acked[i].Load()
			lost += acked[i].Load() - int64(final-start[i])
		}
		fmt.Printf("  %-14s %6d increments acknowledged, %6d lost\n", s.name, total, lost)
	}
}

func counter(client *http.Client, url string) int {
	resp, err := client.Get(url)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n, _ := strconv.Atoi(string(body))
	return n
}

// serveBackend is the fast backend: /r/<n> are 10,000 resources whose
// version never changes (GET and PUT answer at once with ETag "v1"); /hot/<name>
// are counters applied last-writer-wins after -write-delay, with a strong
// ETag per value; /n/<size>/<n> are resources of size bytes without an
// ETag, with a Last-Modified that never changes; /d/<name> are counters
// without an ETag whose Last-Modified is the second of their last write,
// which check If-Unmodified-Since at that resolution, as file servers do.
func serveBackend(args []string) {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:18090", "")
	delay := fs.Duration("write-delay", 5*time.Millisecond, "")
	fs.Parse(args)
	var mu sync.Mutex
	counters := map[string]int{}
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/_requests", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, served.Load())
	})
	mux.HandleFunc("/r/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", "2")
			if r.Method == http.MethodGet {
				io.WriteString(w, "v1")
			}
		case http.MethodPut:
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	})
	versions := map[string]int{}
	mux.HandleFunc("/v/", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			mu.Lock()
			n := versions[r.URL.Path]
			mu.Unlock()
			w.Header().Set("ETag", fmt.Sprintf(`"c%d"`, n))
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", "1")
			if r.Method == http.MethodGet {
				io.WriteString(w, "x")
			}
		case http.MethodPut:
			io.Copy(io.Discard, r.Body)
			mu.Lock()
			versions[r.URL.Path]++
			n := versions[r.URL.Path]
			mu.Unlock()
			w.Header().Set("ETag", fmt.Sprintf(`"c%d"`, n))
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	})
	var bodiesMu sync.Mutex
	bodies := map[int][]byte{}
	const untaggedDate = "Tue, 01 Dec 2026 10:00:00 GMT"
	mux.HandleFunc("/n/", func(w http.ResponseWriter, r *http.Request) {
		first, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/n/"), "/")
		size, err := strconv.Atoi(first)
		if err != nil || size < 0 || size > 64<<20 {
			http.Error(w, "no such size", http.StatusNotFound)
			return
		}
		bodiesMu.Lock()
		body, ok := bodies[size]
		if !ok {
			body = make([]byte, size)
			for i := range body {
				body[i] = 'a' + byte(i%26)
			}
			bodies[size] = body
		}
		bodiesMu.Unlock()
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			w.Header().Set("Last-Modified", untaggedDate)
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(size))
			if r.Method == http.MethodGet {
				w.Write(body)
			}
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	})
	dated := map[string]time.Time{}
	mux.HandleFunc("/d/", func(w http.ResponseWriter, r *http.Request) {
		key := r.URL.Path
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			mu.Lock()
			n, lm := counters[key], dated[key]
			mu.Unlock()
			if lm.IsZero() {
				lm = time.Unix(1764583200, 0) // 2025-12-01 10:00:00 UTC
			}
			w.Header().Set("Last-Modified", lm.UTC().Format(http.TimeFormat))
			w.Header().Set("Content-Type", "text/plain")
			if r.Method == http.MethodGet {
				io.WriteString(w, strconv.Itoa(n))
			}
		case http.MethodPut:
			body, _ := io.ReadAll(r.Body)
			n, err := strconv.Atoi(string(body))
			if err != nil {
				http.Error(w, "not a number", http.StatusBadRequest)
				return
			}
			if ius, err := http.ParseTime(r.Header.Get("If-Unmodified-Since")); err == nil {
				mu.Lock()
				lm := dated[key]
				mu.Unlock()
				if lm.Unix() > ius.Unix() {
					w.WriteHeader(http.StatusPreconditionFailed)
					return
				}
			}
			time.Sleep(*delay)
			mu.Lock()
			counters[key] = n
			dated[key] = time.Now()
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	})
	mux.HandleFunc("/hot/", func(w http.ResponseWriter, r *http.Request) {
		key := r.URL.Path
		writeDelay := *delay
		// /hot/<duration>/<name> takes that long instead.
		if first, _, found := strings.Cut(strings.TrimPrefix(key, "/hot/"), "/"); found {
			if d, err := time.ParseDuration(first); err == nil {
				writeDelay = d
			}
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			mu.Lock()
			n := counters[key]
			mu.Unlock()
			w.Header().Set("ETag", fmt.Sprintf(`"%d"`, n))
			if r.Method == http.MethodGet {
				io.WriteString(w, strconv.Itoa(n))
			}
		case http.MethodPut:
			body, _ := io.ReadAll(r.Body)
			n, err := strconv.Atoi(string(body))
			if err != nil {
				http.Error(w, "not a number", http.StatusBadRequest)
				return
			}
			time.Sleep(writeDelay)
			mu.Lock()
			counters[key] = n
			mu.Unlock()
			w.Header().Set("ETag", fmt.Sprintf(`"%d"`, n))
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	})
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		mux.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: *listen, Handler: counting, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
