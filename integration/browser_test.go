package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

// editorsPage runs editors concurrent editors in the browser that loads it,
// each doing edits read-modify-writes of one counter with plain fetch (the
// default cache mode, as most pages do): read, add one, PUT with If-Match
// from the read's ETag, and on a refusal read again. An editor stops after
// maxAttempts attempts, so that one stuck reading the same old version
// ends too. The page POSTs what each editor did to /report.
const editorsPage = `<!doctype html>
<meta charset="utf-8">
<title>editors</title>
<script>
const doc = "/docs/shared", editors = 3, edits = 10, maxAttempts = 100;

async function editor(id) {
	const r = {id, done: 0, attempts: 0, refused: 0, errors: 0};
	while (r.done < edits && r.attempts < maxAttempts) {
		r.attempts++;
		try {
			const read = await fetch(doc);
			const n = parseInt(await read.text(), 10);
			const tag = read.headers.get("ETag");
			const write = await fetch(doc, {
				method: "PUT",
				headers: tag ? {"If-Match": tag} : {},
				body: String(n + 1).padStart(8, "0"),
			});
			if (write.ok) r.done++;
			else if (write.status === 412) r.refused++;
			else r.errors++;
		} catch (e) {
			r.errors++;
		}
	}
	return r;
}

Promise.all([...Array(editors).keys()].map(editor)).then(results =>
	fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(results)}));
</script>
`

const (
	editorsInPage   = 3
	editsPerEditor  = 10
	attemptsPerEdit = 100 // the page's maxAttempts, per editor
)

// editorReport is what one editor of the page did.
type editorReport struct {
	ID       int `json:"id"`
	Done     int `json:"done"`
	Attempts int `json:"attempts"`
	Refused  int `json:"refused"`
	Errors   int `json:"errors"`
}

// browserRun is what the three editors did, and what the backend saw.
type browserRun struct {
	editors       []editorReport
	done, refused int
	final         int   // the counter at the end
	backendReads  int64 // GETs of the document that reached the backend
}

// runEditors serves the page and the document (a counter at 0 that nobody
// has changed for an hour, as most documents are) through one Caddy site
// whose write_guard has opts, loads the page in one headless Chromium,
// and waits for its report.
func runEditors(t *testing.T, chromium, opts string) browserRun {
	t.Helper()
	store := backend.New()
	store.ETags = backend.NoETags
	store.PutAt("/docs/shared", []byte(counterBody(0)), time.Now().Add(-time.Hour))
	var reads atomic.Int64
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/docs/shared" {
			reads.Add(1)
		}
		store.ServeHTTP(w, r)
	})
	reports := make(chan []editorReport, 1)
	reporter := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rep []editorReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case reports <- rep:
		default:
		}
	})
	pages := t.TempDir()
	if err := os.WriteFile(filepath.Join(pages, "editor.html"), []byte(editorsPage), 0o600); err != nil {
		t.Fatal(err)
	}
	startCaddy(t, fmtSite(`
	handle /editor.html {
		root * %s
		file_server
	}
	handle /report {
		reverse_proxy %s
	}
	handle {
		write_guard %s
		reverse_proxy %s
	}`, pages, startBackend(t, reporter), opts, startBackend(t, counting)))

	browser := startChromium(t, chromium, caddyBase+"/editor.html")
	var run browserRun
	select {
	case run.editors = <-reports:
	case <-time.After(90 * time.Second):
		t.Fatalf("the page did not report within 90s; Chromium wrote:\n%s", browser.logs())
	case <-browser.exited:
		t.Fatalf("Chromium exited before the page reported:\n%s", browser.logs())
	}
	browser.stop()
	for _, e := range run.editors {
		run.done += e.Done
		run.refused += e.Refused
	}
	run.backendReads = reads.Load()
	final, err := strconv.Atoi(mustBody(t, store, "/docs/shared"))
	if err != nil {
		t.Fatal(err)
	}
	run.final = final
	t.Logf("write_guard %s: %d of %d edits through, %d refused, counter at %d, %d reads reached the backend; editors %+v",
		strings.TrimSpace(strings.ReplaceAll(opts, "\n", " ")), run.done, editorsInPage*editsPerEditor, run.refused, run.final, run.backendReads, run.editors)
	return run
}

// chromiumProcess is a headless Chromium started by a test, with its own
// process group, so that stopping it ends its renderers too.
type chromiumProcess struct {
	cmd    *exec.Cmd
	out    *lockedWriter
	exited chan struct{}
}

func startChromium(t *testing.T, bin, url string) *chromiumProcess {
	t.Helper()
	profile := t.TempDir()
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--disable-breakpad", "--user-data-dir="+profile, url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c := &chromiumProcess{cmd: cmd, out: &lockedWriter{w: &strings.Builder{}}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(c.exited)
	}()
	// Before the profile directory is removed.
	t.Cleanup(c.stop)
	return c
}

// stop asks the browser to quit, so that it ends its renderers itself,
// then kills whatever of its process group is left.
func (c *chromiumProcess) stop() {
	select {
	case <-c.exited:
	default:
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
		}
	}
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.exited
}

func (c *chromiumProcess) logs() string {
	s := c.out.String()
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return s
}

// Three editors in one real browser, through the plain write_guard: every
// edit gets through and none is lost, because the answers to reads tell
// the browser to ask again instead of serving what it kept. The control,
// the same page with read_freshness upstream, must show the browser
// serving the old version from its cache after a refusal.
func TestBrowserEditorsGetThrough(t *testing.T) {
	chromium := program(t, "chromium", "chromium", "/usr/bin/chromium")

	control := runEditors(t, chromium, "{\n\t\t\tread_freshness upstream\n\t\t}")
	if control.done != control.final {
		t.Errorf("control: %d edits acknowledged, the counter holds %d", control.done, control.final)
	}
	guarded := runEditors(t, chromium, "")
	want := editorsInPage * editsPerEditor
	if guarded.done != want {
		t.Errorf("through the plain write_guard %d of %d edits got through", guarded.done, want)
	}
	if guarded.final != guarded.done {
		t.Errorf("through the plain write_guard %d edits were acknowledged and the counter holds %d: %d lost", guarded.done, guarded.final, guarded.done-guarded.final)
	}
	for _, e := range guarded.editors {
		if e.Errors != 0 {
			t.Errorf("editor %d met %d errors", e.ID, e.Errors)
		}
	}
	if control.done*2 > guarded.done {
		t.Errorf("with read_freshness upstream %d edits got through, not clearly fewer than the %d through the plain directive: the test does not show what no-cache prevents", control.done, guarded.done)
	}
}
