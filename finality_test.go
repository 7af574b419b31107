package sera_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
)

// A request refused for being issued in the future must not run when the
// same bytes come back once the watcher's clock has caught up.
func TestRefusedInTheFutureNeverRuns(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	f.clock.Set(now)
	req := f.request("echo", "later")
	req.IssuedAt = now.Add(10 * time.Minute)
	req.ExpiresAt = req.IssuedAt.Add(5 * time.Minute)
	body := f.sealed(req)
	f.deliver(f.w, body)
	drain(t, f.tr, f.client, 0)

	f.clock.Set(now.Add(11 * time.Minute)) // now within its lifetime
	f.deliver(f.w, body)
	if calls := f.h.Calls(); len(calls) != 0 {
		t.Fatalf("the refused request ran later: %v", calls)
	}
	recs := f.a.Records()
	if len(recs) != 2 || recs[1].Decision != sera.DecisionDuplicate {
		t.Fatalf("audit: %+v", recs)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 1 || !strings.Contains(string(got.replies[0].Stderr), "in the future") {
		t.Fatalf("replies %+v; want the stored refusal again", got.replies)
	}
}

// A request signed while its key was not trusted (dropped under rule 2)
// must not run when replayed after "clients add".
func TestSignedBeforeTrustedNeverRuns(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	f.clock.Set(now)
	bob := newIdentity(t)
	body := seal(t, bob, f.requestFrom(bob, "echo", "early"), f.wid.Public())
	f.deliver(f.w, body)
	if recs := f.a.Records(); len(recs) != 1 || recs[0].Rule != 2 {
		t.Fatalf("audit: %+v", recs)
	}

	f.clock.Set(now.Add(time.Minute))
	f.known.Clients = append(f.known.Clients, &sera.KnownClient{Key: bob.Public(), Name: "bob", Allow: []string{"*"}, Added: now.Add(30 * time.Second)})
	f.writeKnownClients()
	f.deliver(f.w, body)
	if calls := f.h.Calls(); len(calls) != 0 {
		t.Fatalf("a request signed before its key was trusted ran: %v", calls)
	}
	recs := f.a.Records()
	if len(recs) != 2 || recs[1].Rule != 2 || !strings.Contains(recs[1].Reason, "before client bob was trusted") {
		t.Fatalf("audit: %+v", recs[1:])
	}
	// bob's own requests from now on run.
	f.deliver(f.w, seal(t, bob, f.requestFrom(bob, "echo", "now"), f.wid.Public()))
	if calls := f.h.Calls(); len(calls) != 1 {
		t.Fatalf("calls %v, want bob's new request", calls)
	}
}

// Nothing runs that the watcher could not audit first; once the log is
// writable the same delivery runs, once.
func TestNothingRunsUnaudited(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.a.fail = errors.New("no space left on device")
	body := f.sealed(f.request("echo", "audited"))
	f.deliver(f.w, body)
	if calls := f.h.Calls(); len(calls) != 0 {
		t.Fatalf("ran unaudited: %v", calls)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 1 || got.replies[0].Status != sera.StatusDeferred ||
		!strings.Contains(string(got.replies[0].Stderr), "cannot write its audit log") {
		t.Fatalf("replies %+v; want a deferral naming the audit log", got.replies)
	}

	f.a.fail = nil
	for range 2 {
		f.deliver(f.w, body)
	}
	if calls := f.h.Calls(); len(calls) != 1 {
		t.Fatalf("calls %v, want one run once the log is writable", calls)
	}
	if len(f.a.running) != 1 || f.a.running[0].Decision != sera.DecisionRunning || len(f.a.running[0].Argv) == 0 {
		t.Errorf("running records %+v", f.a.running)
	}
}

// A request the watcher cannot record (full state disk) is answered with
// the truth and runs, once, when the cache is writable again.
func TestUnrecordableRequestRunsLater(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dir := filepath.Join(f.dir, "replay-web1")
	// In place of the cache directory, a file: every record fails, as on
	// a full disk, with no root-only tricks.
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	body := f.sealed(f.request("echo", "recorded"))
	f.deliver(f.w, body)
	if calls := f.h.Calls(); len(calls) != 0 {
		t.Fatalf("ran unrecorded: %v", calls)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 1 || got.replies[0].Status != sera.StatusDeferred ||
		!strings.Contains(string(got.replies[0].Stderr), "cannot record requests") ||
		strings.Contains(string(got.replies[0].Stderr), "stopped while") {
		t.Fatalf("replies %+v; want the truth", got.replies)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		f.deliver(f.w, body)
	}
	if calls := f.h.Calls(); len(calls) != 1 {
		t.Fatalf("calls %v, want one run once the cache is writable", calls)
	}
}

// The same on a real full disk: a tmpfs filled to the last byte, where
// creating the record succeeds and writing it fails (ENOSPC) — the case
// that left a torn record, answered "the watcher stopped while this
// request ran" and never ran.
func TestFullStateDiskRunsLater(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test mounts a tmpfs and needs root; CI must run it as root")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	t.Parallel()
	f := newFixture(t)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	rc, err := sera.OpenReplayCache(filepath.Join(mnt, "replay"))
	if err != nil {
		t.Fatal(err)
	}
	f.w.Replay = rc
	// Fill the disk.
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := filler.Write(buf); err != nil {
			break
		}
	}
	for {
		if _, err := filler.Write(buf[:1]); err != nil {
			break
		}
	}
	filler.Close()
	body := f.sealed(f.request("echo", "full"))
	f.deliver(f.w, body)
	got := drain(t, f.tr, f.client, 0)
	if calls := f.h.Calls(); len(calls) != 0 || len(got.replies) != 1 || got.replies[0].Status != sera.StatusDeferred {
		t.Fatalf("calls %v, replies %+v; want nothing run and a deferral", calls, got.replies)
	}
	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	f.deliver(f.w, body)
	got = drain(t, f.tr, f.client, 0)
	if calls := f.h.Calls(); len(calls) != 1 || len(got.replies) != 1 || got.replies[0].Status != 0 {
		t.Fatalf("calls %v, replies %+v; want one run once there is space", calls, got.replies)
	}
}
