package host

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The shell is only the fixture here: it starts programs that outlive it.

// subreaper makes this test process adopt the orphans of the programs it
// runs, so reap can collect them: where PID 1 does not reap (a container,
// a sandbox), a killed orphan stays a zombie of its group for good and
// kill(-pgid, 0) still finds it.
func subreaper(t *testing.T) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
}

// reap collects this process's dead children in process group pgid until
// none is left, and reports whether that happened. Each Wait4 blocks until
// a member dies; a member that lives on is killed after a minute, a guard
// only, and reap then reports false.
func reap(pgid int) bool {
	done := make(chan bool, 1)
	go func() {
		for {
			_, err := syscall.Wait4(-pgid, nil, 0, nil)
			switch {
			case errors.Is(err, syscall.ECHILD):
				done <- true
				return
			case err != nil && !errors.Is(err, syscall.EINTR):
				done <- false
				return
			}
		}
	}()
	select {
	case ok := <-done:
		return ok
	case <-time.After(time.Minute):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
		return false
	}
}

// procPGID returns the process group of pid from /proc.
func procPGID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid pgrp …; comm may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	pgid, err := strconv.Atoi(f[2])
	if err != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return pgid
}

// pidFIFO makes a named pipe for a fixture to write its pids to, one line
// written at once, as "echo $$ $! >FIFO" does.
func pidFIFO(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pids")
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// readPIDs returns the n pids the fixture writes to the named pipe p once
// it has done what the test waits for. The test holds a write end too, so
// reads wait for the fixture instead of ending at once; the deadline is
// only a guard against a fixture that never writes.
func readPIDs(t *testing.T, p string, n int) []int {
	t.Helper()
	r, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.SetReadDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatalf("the fixture did not write its pids: %q, %v", line, err)
	}
	var pids []int
	for _, f := range strings.Fields(line) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("the fixture wrote %q", line)
		}
		pids = append(pids, pid)
	}
	if len(pids) != n {
		t.Fatalf("the fixture wrote %q, want %d pids", line, n)
	}
	return pids
}

// expiring is a context whose deadline passes when the test says, not at
// a time: a program killed at its timeout has then surely done what the
// test waited for first, however slowly it started.
type expiring struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newExpiring() *expiring {
	return &expiring{Context: context.Background(), done: make(chan struct{})}
}

func (c *expiring) Done() <-chan struct{} { return c.done }

func (c *expiring) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func (c *expiring) expire() { c.once.Do(func() { close(c.done) }) }

func TestExecRunnerKillsProcessGroup(t *testing.T) {
	subreaper(t)
	pids := pidFIFO(t)
	ctx := newExpiring()
	defer ctx.expire()
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := ExecRunner{}.Run(ctx, "/bin/sh", "-c", `sleep 300 & echo before; echo $$ $! > "$1"; sleep 300; echo after`, "sh", pids)
		done <- result{out, err}
	}()
	p := readPIDs(t, pids, 2)
	shell, child := p[0], p[1]
	pgid := procPGID(t, shell)
	if pgid != shell || pgid == syscall.Getpgrp() {
		// Never signal that group below: it may be this test's own.
		syscall.Kill(shell, syscall.SIGKILL)
		syscall.Kill(child, syscall.SIGKILL)
		t.Fatalf("the program runs in process group %d, want its own (%d; ours is %d)", pgid, shell, syscall.Getpgrp())
	}
	if g := procPGID(t, child); g != pgid {
		t.Errorf("the program's child is in process group %d, want %d", g, pgid)
	}
	// The timeout: the program has printed "before" and waits in sleep.
	ctx.expire()
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		syscall.Kill(-pgid, syscall.SIGKILL)
		t.Fatal("Run did not return within a minute of the timeout")
	}
	if !errors.Is(r.err, context.DeadlineExceeded) || !strings.Contains(r.err.Error(), "killed") || !strings.Contains(r.err.Error(), "timeout") {
		t.Errorf("error %v, want one that says the program was killed at the timeout and wraps DeadlineExceeded", r.err)
	}
	if string(r.out) != "before\n" {
		t.Errorf("stdout %q, want what it printed before it was killed", r.out)
	}
	// Killing the shell alone would leave its sleep alive, holding the
	// output until Run gave up on it: what shows the group was killed is
	// that no member of it lives.
	if !reap(pgid) {
		t.Errorf("process group %d still has live members", pgid)
	}
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		syscall.Kill(-pgid, syscall.SIGKILL)
		t.Errorf("process group %d still exists after Run returned (kill: %v)", pgid, err)
	}
}

// A process that left the group (setsid) and holds the output pipes is
// not killed with it, but Run does not wait for it: it returns
// execWaitDelay after the kill, not when the process ends (in 300 s).
func TestExecRunnerDoesNotWaitForEscapedProcess(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid")
	}
	subreaper(t)
	pids := pidFIFO(t)
	ctx := newExpiring()
	defer ctx.expire()
	done := make(chan error, 1)
	go func() {
		// The escaped shell writes its pid once it is in a session of
		// its own, and then becomes the sleep that holds the output.
		_, err := ExecRunner{}.Run(ctx, "/bin/sh", "-c", `setsid /bin/sh -c 'echo $$ > "$1"; exec sleep 300' sh "$1" & sleep 300`, "sh", pids)
		done <- err
	}()
	escaped := readPIDs(t, pids, 1)[0]
	t.Cleanup(func() {
		syscall.Kill(escaped, syscall.SIGKILL)
		reap(escaped)
	})
	ctx.expire()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want DeadlineExceeded", err)
		}
	case <-time.After(execWaitDelay + time.Minute):
		t.Fatal("Run did not return a minute after its wait for the output: it waits for a process that holds its output")
	}
}

func TestExecRunnerErrors(t *testing.T) {
	// A failure is the program's own, with its stderr.
	out, err := ExecRunner{}.Run(context.Background(), "/bin/sh", "-c", "echo out; echo oops >&2; exit 3")
	var exit *exec.ExitError
	if string(out) != "out\n" || !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(err.Error(), "oops") || strings.Contains(err.Error(), "killed") {
		t.Errorf("failing program: %q, %v", out, err)
	}
	if out, err := (ExecRunner{}).Run(context.Background(), "/bin/sh", "-c", "echo fine"); err != nil || string(out) != "fine\n" {
		t.Errorf("program: %q, %v", out, err)
	}
	// A cancel is not a timeout. It comes once the program runs.
	pids := pidFIFO(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := ExecRunner{}.Run(ctx, "/bin/sh", "-c", `echo $$ > "$1"; exec sleep 300`, "sh", pids)
		done <- err
	}()
	readPIDs(t, pids, 1)
	cancel()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute of the cancel")
	}
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "killed") || strings.Contains(err.Error(), "timeout") {
		t.Errorf("cancelled: %v", err)
	}
	// A context that has ended runs nothing.
	ctx, cancel = context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	marker := filepath.Join(t.TempDir(), "ran")
	_, err = ExecRunner{}.Run(ctx, "/bin/sh", "-c", `touch "$1"`, "sh", marker)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not run") {
		t.Errorf("after the deadline: %v", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a program ran after the deadline")
	}
}
