// Package redistest runs a real redis-server on loopback for tests.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// quiet keeps the client from logging that Redis before 8 lacks an optional
// feature.
var quiet = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}

// Server is a redis-server that belongs to one test.
type Server struct {
	t    testing.TB
	Addr string
	port int
	dir  string
	cmd  *exec.Cmd
	// durable: an append-only file, synced on every write.
	durable bool
}

// StartDurable is Start with every write appended to a file before it is
// acknowledged, so that a server killed and restarted comes back with its
// data, as after a network partition.
func StartDurable(t testing.TB) *Server { return start(t, true) }

// Start runs redis-server on a free loopback port until the test ends. A
// machine without redis-server skips the test, unless CI is set: CI
// installs it, and a test that did not run must not pass there.
func Start(t testing.TB) *Server { return start(t, false) }

func start(t testing.TB, durable bool) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed (Debian: apt-get install redis-server)")
		}
		t.Skip("redis-server is not installed (Debian: apt-get install redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{t: t, port: port, Addr: "127.0.0.1:" + strconv.Itoa(port), dir: t.TempDir(), durable: durable}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Restart starts the server again on its port after Stop: empty, unless
// the server is durable.
func (s *Server) Restart() {
	s.t.Helper()
	appendOnly := []string{"--appendonly", "no"}
	if s.durable {
		appendOnly = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	s.cmd = exec.Command("redis-server", append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--dir", s.dir}, appendOnly...)...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaintNotificationsConfig: quiet})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s did not come up: %v", s.Addr, err)
		}
	}
}

// Stop kills the server (as a crash would: nothing is saved).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// Client returns a client of the server for the test to look with.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaintNotificationsConfig: quiet})
	s.t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) String() string { return fmt.Sprintf("redis-server on %s", s.Addr) }
