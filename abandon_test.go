package writeguard

import (
	"fmt"
	"testing"
	"time"
)

func TestAbandonedWrites(t *testing.T) {
	var a abandonedWrites
	t0 := time.Unix(1_000_000, 0)
	var forgotten []string
	forget := func() { forgotten = append(forgotten, "/doc") }
	forgetAll := func() { t.Fatal("forgetAll without an overflow") }

	if a.distrusts("/doc", t0, forget, forgetAll) {
		t.Fatal("nothing abandoned yet, but distrusted")
	}
	a.mark("/doc", t0, time.Minute, 10*time.Minute)
	if !a.distrusts("/doc", t0.Add(59*time.Second), forget, forgetAll) {
		t.Fatal("within the window: not distrusted")
	}
	if a.distrusts("/other", t0, forget, forgetAll) {
		t.Fatal("another resource distrusted")
	}
	if len(forgotten) != 0 {
		t.Fatalf("forgot %v within the window", forgotten)
	}
	// The first write after the window still asks the upstream, and what was
	// learned during the window goes.
	if !a.distrusts("/doc", t0.Add(time.Minute), forget, forgetAll) {
		t.Fatal("first write after the window: not distrusted")
	}
	if fmt.Sprint(forgotten) != "[/doc]" {
		t.Fatalf("forgotten %v, want [/doc]", forgotten)
	}
	if a.distrusts("/doc", t0.Add(time.Minute), forget, forgetAll) || a.n.Load() != 0 {
		t.Fatalf("mark kept after the window ended (n=%d)", a.n.Load())
	}
}

// More abandoned resources than can be remembered make every write ask the
// upstream, then everything is forgotten.
func TestAbandonedWritesOverflow(t *testing.T) {
	var a abandonedWrites
	t0 := time.Unix(1_000_000, 0)
	for i := range maxAbandoned + 1 {
		a.mark(fmt.Sprint("/doc/", i), t0, time.Minute, time.Minute)
	}
	forget := func() {}
	all := 0
	forgetAll := func() { all++ }
	if !a.distrusts("/never-abandoned", t0.Add(time.Minute), forget, forgetAll) {
		t.Fatal("overflowed: a write not distrusted")
	}
	if a.distrusts("/never-abandoned", t0.Add(2*time.Minute), forget, forgetAll) {
		t.Fatal("overflow window over: still distrusted")
	}
	if all != 1 {
		t.Fatalf("forgetAll called %d times, want 1", all)
	}
	// Marks past their drop time make room for new ones.
	a.mark("/new", t0.Add(3*time.Minute), time.Minute, time.Minute)
	if len(a.by) != 1 {
		t.Fatalf("%d marks kept, want the new one only", len(a.by))
	}
}
