package integration

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// program finds an installed program, in PATH or at one of the usual
// places (nginx lives in /usr/sbin, which is not in every PATH). Without
// it the test is skipped, unless CI is set: CI installs it, and a test
// that did not run must not pass there.
func program(t *testing.T, name, pkg string, places ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range places {
		if info, err := os.Stat(p); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return p
		}
	}
	msg := fmt.Sprintf("%s is not installed (Debian: apt-get install %s; ./test.sh installs it)", name, pkg)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// nginxDAV is a real nginx (Debian's nginx-light) serving a directory
// with its WebDAV module: GET answers carry Last-Modified and, unless
// turned off, the ETag nginx builds from the file's mtime in seconds and
// its size; PUT stores the body and answers 201 or 204 without an ETag,
// whatever preconditions the request carries.
type nginxDAV struct {
	addr string // host:port
	root string // the directory served
}

// startNginxDAV runs nginx on a free loopback port until the test ends,
// with everything it writes (pid, lock, logs, request bodies) under a
// temporary prefix of its own. etag is "on" or "off".
func startNginxDAV(t *testing.T, etag string) *nginxDAV {
	t.Helper()
	bin := program(t, "nginx", "nginx-light", "/usr/sbin/nginx")
	prefix := t.TempDir()
	n := &nginxDAV{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), root: filepath.Join(prefix, "root")}
	for _, dir := range []string{n.root, filepath.Join(prefix, "tmp")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// One process, no master: it runs as the user running the tests (as
	// root, workers would switch to nobody and could not write the root).
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
lock_file %[1]s/nginx.lock;
error_log %[1]s/error.log warn;
events {
	worker_connections 512;
}
http {
	access_log off;
	default_type text/plain;
	client_body_temp_path %[1]s/tmp/body;
	proxy_temp_path %[1]s/tmp/proxy;
	fastcgi_temp_path %[1]s/tmp/fastcgi;
	uwsgi_temp_path %[1]s/tmp/uwsgi;
	scgi_temp_path %[1]s/tmp/scgi;
	keepalive_requests 100000;
	server {
		listen %[2]s;
		root %[3]s;
		etag %[4]s;
		dav_methods PUT DELETE;
		create_full_put_path on;
		dav_access user:rw;
	}
}
`, prefix, n.addr, n.root, etag)
	confFile := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", prefix, "-c", confFile, "-e", filepath.Join(prefix, "error.log"))
	logs := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = &lockedWriter{w: logs}, &lockedWriter{w: logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			errorLog, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			t.Logf("nginx on %s wrote:\n%s%s", n.addr, logs, errorLog)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + n.addr + "/"); err == nil {
			resp.Body.Close()
			return n
		}
		select {
		case <-exited:
			errorLog, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			t.Fatalf("nginx exited at start:\n%s%s", logs, errorLog)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx on %s did not come up", n.addr)
		}
	}
}

// put stores a file in the served directory, bypassing HTTP.
func (n *nginxDAV) put(t *testing.T, path, body string) {
	t.Helper()
	file := filepath.Join(n.root, filepath.FromSlash(path))
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
