package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ExecRunner is the Runner of a real host. Programs run with a fixed PATH
// and the C locale, so their messages do not depend on who started the
// watcher.
//
// Each program runs in a process group of its own. When ctx ends (the
// request's execution timeout) the whole group is killed, so nothing the
// program started outlives it, and Run returns at most execWaitDelay later
// even if a process that left the group still holds the output pipes.
type ExecRunner struct{}

// execWaitDelay is how long Run waits for the output pipes to close once
// the program has exited or been killed; then it closes them itself.
const execWaitDelay = 5 * time.Second

// Run implements Runner. A failure's error carries the program's stderr;
// one that was killed because ctx ended wraps ctx.Err().
func (r ExecRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return r.RunInput(ctx, nil, argv...)
}

// RunInput implements InputRunner: Run with stdin.
func (ExecRunner) RunInput(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("failed to run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the program's pid (Setpgid); it stays
		// taken while the program or anything left in its group lives.
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = execWaitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if cerr := ctx.Err(); cerr != nil {
			why := "its run was cancelled"
			if errors.Is(cerr, context.DeadlineExceeded) {
				why = "it ran past the execution timeout"
			}
			if cmd.Process == nil {
				return nil, fmt.Errorf("%s not run: %s (%w)", argv[0], why, cerr)
			}
			err = fmt.Errorf("%s was killed with every process it started: %s (%w)", argv[0], why, cerr)
			if msg != "" {
				err = fmt.Errorf("%w: %s", err, msg)
			}
			return stdout.Bytes(), err
		}
		if msg == "" {
			return stdout.Bytes(), fmt.Errorf("%s failed: %w", argv[0], err)
		}
		return stdout.Bytes(), fmt.Errorf("%s failed: %w: %s", argv[0], err, msg)
	}
	return stdout.Bytes(), nil
}
