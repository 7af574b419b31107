package commands

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
// none is left, for at most 5 s, and reports whether none is.
func reap(pgid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-pgid, &ws, syscall.WNOHANG, nil)
		switch {
		case errors.Is(err, syscall.ECHILD):
			return true
		case err != nil && !errors.Is(err, syscall.EINTR):
			return false
		case pid == 0:
			time.Sleep(10 * time.Millisecond)
		}
	}
	return false
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

// readPIDs waits for the fixture's "SHELL_PID CHILD_PID" file.
func readPIDs(t *testing.T, path string) (shell, child int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if f := strings.Fields(string(b)); err == nil && len(f) == 2 && strings.HasSuffix(string(b), "\n") {
			shell, _ = strconv.Atoi(f[0])
			child, _ = strconv.Atoi(f[1])
			return shell, child
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fixture did not write its pids: %q, %v", b, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type runResult struct {
	out []byte
	err error
	at  time.Time
}

func TestExecRunnerKillsProcessGroup(t *testing.T) {
	subreaper(t)
	pids := filepath.Join(t.TempDir(), "pids")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	done := make(chan runResult, 1)
	go func() {
		out, err := ExecRunner{}.Run(ctx, "/bin/sh", "-c", `sleep 300 & echo $$ $! > "$1"; echo before; sleep 300; echo after`, "sh", pids)
		done <- runResult{out, err, time.Now()}
	}()
	shell, child := readPIDs(t, pids)
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
	var r runResult
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		t.Fatal("Run did not return within 10 s of a 500ms timeout")
	}
	if took := r.at.Sub(t0); took > 5*time.Second {
		t.Errorf("Run returned %s after it started, with a 500ms timeout", took)
	}
	if !errors.Is(r.err, context.DeadlineExceeded) || !strings.Contains(r.err.Error(), "killed") || !strings.Contains(r.err.Error(), "timeout") {
		t.Errorf("error %v, want one that says the program was killed at the timeout and wraps DeadlineExceeded", r.err)
	}
	if string(r.out) != "before\n" {
		t.Errorf("stdout %q, want what it printed before it was killed", r.out)
	}
	if !reap(pgid) {
		t.Errorf("process group %d still has live members", pgid)
	}
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		syscall.Kill(-pgid, syscall.SIGKILL)
		t.Errorf("process group %d still exists after Run returned (kill: %v)", pgid, err)
	}
}

// A process that left the group (setsid) and holds the output pipes is
// not killed with it, but Run does not wait for it.
func TestExecRunnerDoesNotWaitForEscapedProcess(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid")
	}
	subreaper(t)
	pids := filepath.Join(t.TempDir(), "pids")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	done := make(chan runResult, 1)
	go func() {
		_, err := ExecRunner{}.Run(ctx, "/bin/sh", "-c", `setsid sleep 300 & echo $$ $! > "$1"; sleep 300`, "sh", pids)
		done <- runResult{nil, err, time.Now()}
	}()
	_, escaped := readPIDs(t, pids)
	t.Cleanup(func() {
		syscall.Kill(escaped, syscall.SIGKILL)
		reap(escaped)
	})
	var r runResult
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20 s: it waits for a process that holds its output")
	}
	if took := r.at.Sub(t0); took > 300*time.Millisecond+execWaitDelay+3*time.Second {
		t.Errorf("Run returned after %s", took)
	}
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("error %v, want DeadlineExceeded", r.err)
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
	// A cancel is not a timeout.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = ExecRunner{}.Run(ctx, "/bin/sh", "-c", "sleep 300")
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
