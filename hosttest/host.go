package hosttest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mustTimeout bounds MustExec, SSH and every wait of this package: long
// enough for anything a test host does on a loaded machine, short enough
// that a hang fails before go test's own timeout. It is only a guard.
const mustTimeout = 2 * time.Minute

// Host is a running test host. Its methods may be called from several
// goroutines.
type Host struct {
	// Name is the host's hostname and its name in every /etc/hosts of
	// the network.
	Name string
	// Addr is the host's IPv4 address on the network, where its sshd
	// listens on port 22.
	Addr string

	net  *Net
	dir  string    // temporary: upper, work, merged, host.log
	cmd  *exec.Cmd // the host's PID 1, our child
	pid  int       // its PID in this machine's namespace
	root *os.Root  // the host's / (the overlay), from outside

	mu       sync.Mutex
	stopped  bool
	cleaning sync.Once
}

func (h *Host) start(lower, bridge, veth string) error {
	// The PID in the name lets a later process remove it if we get killed.
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", hostDirPrefix, os.Getpid(), h.Name))
	if err != nil {
		return fmt.Errorf("failed to create host directory: %w", err)
	}
	h.dir = dir
	// /proc/PID/root shows the resolved path; compare like with like.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return fmt.Errorf("failed to resolve %s: %w", h.dir, err)
	}
	if strings.ContainsAny(dir, ",:") {
		return fmt.Errorf("temporary directory %s: overlay cannot use a path with ',' or ':'", dir)
	}
	merged := dir + "/merged"
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("failed to create %s: %w", d, err)
		}
	}
	log, err := os.Create(h.logPath())
	if err != nil {
		return fmt.Errorf("failed to create host log: %w", err)
	}
	defer log.Close() // the child has its own copy

	spec := initSpec{
		Mode:  modeHost,
		Lower: lower, Upper: dir + "/upper", Work: dir + "/work", Merged: merged,
		Hostname: h.Name,
		Env:      sandboxEnv,
	}
	cmd, err := reexec(spec, true, h.Name)
	if err != nil {
		return err
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("failed to create pipe: %w", err)
	}
	defer ready.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{readyW} // fd 3 in the init
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("failed to start init: %w", err)
	}
	h.cmd, h.pid = cmd, cmd.Process.Pid

	// The init writes "ready" after chroot and sshd start, or exits.
	ready.SetReadDeadline(time.Now().Add(mustTimeout))
	if line, err := bufio.NewReader(ready).ReadString('\n'); line != "ready\n" {
		return fmt.Errorf("init did not get ready: %v", err)
	}
	// Everything that enters the host goes through its PID 1's root: make
	// sure it is the overlay and not this machine's /.
	if got, err := os.Readlink(fmt.Sprintf("/proc/%d/root", h.pid)); err != nil || got != merged {
		return fmt.Errorf("init's root is %q (%v), want %s", got, err, merged)
	}
	if h.root, err = os.OpenRoot(fmt.Sprintf("/proc/%d/root", h.pid)); err != nil {
		return fmt.Errorf("failed to open the host's root: %w", err)
	}

	// The machine-side end joins the bridge; the host's end, eth0, is
	// moved straight into the host's network namespace. No default route:
	// the host reaches nothing but the network.
	if err := ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(h.pid)); err != nil {
		return err
	}
	if err := ip("link", "set", veth, "master", bridge, "up"); err != nil {
		return err
	}
	inside := exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(h.pid)+"/ns/net", "--", "ip", "-batch", "-")
	inside.Stdin = strings.NewReader(fmt.Sprintf("addr add %s/24 dev eth0\nlink set eth0 up\nlink set lo up\n", h.Addr))
	if out, err := inside.CombinedOutput(); err != nil {
		return fmt.Errorf("failed to configure eth0 in the host: %w: %s", err, out)
	}
	return waitTCP(h.Addr+":22", mustTimeout)
}

// hostDirPrefix starts the name of every host's temporary directory,
// followed by the PID of the test process that made it.
const hostDirPrefix = "sera-host-"

var removeDeadOnce sync.Once

// removeDeadHostDirs deletes the host directories of test processes that
// died without their cleanup. Their hosts died with them (Pdeathsig), so
// nothing uses the directories any more.
func removeDeadHostDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), hostDirPrefix+"*"))
	for _, dir := range dirs {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), hostDirPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // not ours, or its process lives
		}
		if mounted, err := hasMountBelow(dir); err == nil && !mounted {
			os.RemoveAll(dir)
		}
	}
}

func (h *Host) logPath() string { return h.dir + "/host.log" }

// logTail returns the end of the host's init and sshd log.
func (h *Host) logTail() []byte {
	out, _ := os.ReadFile(h.logPath())
	return tail(out, 40)
}

// Stop kills the host: SIGKILL to its PID 1 ends every process in it and
// with them its namespaces, mounts and network interface. Commands started
// afterwards fail. Stop is idempotent and also runs at the test's cleanup.
func (h *Host) Stop() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.stopped = true
	if h.cmd != nil {
		h.cmd.Process.Kill()
	}
	if h.root != nil {
		h.root.Close()
	}
	h.mu.Unlock()
	if h.net != nil {
		h.net.forget(h)
	}
}

// cleanup stops the host, reaps its PID 1 and removes its files.
func (h *Host) cleanup(t testing.TB) {
	h.cleaning.Do(func() {
		h.Stop()
		// Reap PID 1 only now, at the end of the test: until then its PID
		// cannot be reused, so an "nsenter -t PID" racing with Stop fails
		// on the dead process instead of entering a stranger's namespaces.
		if h.cmd != nil {
			h.cmd.Wait()
		}
		if t.Failed() && h.dir != "" {
			t.Logf("hosttest: log of host %s:\n%s", h.Name, h.logTail())
		}
		if h.dir == "" {
			return
		}
		// The overlay was mounted only in the host's mount namespace, gone
		// with it; still, never let RemoveAll descend into a mount.
		if mounted, err := hasMountBelow(h.dir); err != nil || mounted {
			t.Errorf("hosttest: not removing %s: a mount is below it (%v)", h.dir, err)
			return
		}
		if err := os.RemoveAll(h.dir); err != nil {
			t.Errorf("hosttest: failed to remove %s: %v", h.dir, err)
		}
	})
}

func (h *Host) isStopped() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopped
}

// Command returns a command that runs args inside the host (all its
// namespaces, its root and /, as root, with a plain PATH and HOME=/root),
// through nsenter. Killing it by ctx kills its whole process group, which
// reaches the command inside. cmd.Process is nsenter, not the command: use
// [Host.Start] to signal a background command.
func (h *Host) Command(ctx context.Context, args ...string) *exec.Cmd {
	nsenter := []string{"-t", strconv.Itoa(h.pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"}
	cmd := exec.CommandContext(ctx, "nsenter", append(nsenter, args...)...)
	cmd.Env = slices.Clone(sandboxEnv)
	// nsenter forks the command into the host's PID namespace and does not
	// forward signals; its own process group lets us kill both.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A daemon started by the command may hold its output open forever.
	cmd.WaitDelay = 5 * time.Second
	switch {
	case len(args) == 0:
		cmd.Err = errors.New("hosttest: no command")
	case h.isStopped():
		cmd.Err = fmt.Errorf("hosttest: host %s is stopped", h.Name)
	}
	return cmd
}

// Run runs args inside the host. A command that ran and exited returns its
// exit code with a nil error; err is for failing to run it at all, or its
// death by a signal or ctx.
func (h *Host) Run(ctx context.Context, args ...string) (stdout, stderr []byte, code int, err error) {
	var o, e bytes.Buffer
	cmd := h.Command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ee.Exited() {
		return o.Bytes(), e.Bytes(), ee.ExitCode(), nil
	}
	if err != nil {
		return o.Bytes(), e.Bytes(), -1, fmt.Errorf("failed to run %q in host %s: %w", args, h.Name, err)
	}
	return o.Bytes(), e.Bytes(), 0, nil
}

// Exec runs args inside the host and returns its combined output; a
// non-zero exit is an *exec.ExitError, as with exec.Cmd.CombinedOutput.
func (h *Host) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return h.Command(ctx, args...).CombinedOutput()
}

// MustExec runs args inside the host and returns its stdout, failing the
// test, with stderr, unless it exits 0 within mustTimeout. It works in
// Cleanup functions too.
func (h *Host) MustExec(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), mustTimeout)
	defer cancel()
	stdout, stderr, code, err := h.Run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("%s: %q exited %d: %s%s", h.Name, args, code, stderr, stdout)
	}
	return string(stdout)
}

// Start starts args in the background inside the host (a sera watcher,
// say). Its combined output is collected in the returned Proc; it is killed
// with t.Cleanup, and its output logged then if the test failed.
func (h *Host) Start(t testing.TB, args ...string) *Proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proc{done: make(chan struct{})}
	p.Cmd = h.Command(ctx, args...)
	p.Cmd.Stdout, p.Cmd.Stderr = &p.out, &p.out
	if err := p.Cmd.Start(); err != nil {
		cancel()
		t.Fatalf("failed to start %q in host %s: %v", args, h.Name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
		if t.Failed() {
			t.Logf("hosttest: output of %q in host %s:\n%s", args, h.Name, p.Output())
		}
	})
	return p
}

// Proc is a command running in the background inside a host.
type Proc struct {
	// Cmd runs nsenter, which runs the command inside the host.
	Cmd *exec.Cmd

	out  syncBuffer
	done chan struct{}
	err  error
}

// Wait waits for the command to exit and returns what exec.Cmd.Wait did.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Output returns the command's combined output so far.
func (p *Proc) Output() []byte { return p.out.Bytes() }

// WaitOutput waits until the command's output matches re (a log line the
// command writes when it has done something, say) and returns the match
// and its submatches. Every write wakes it: it does not poll. It fails the
// test if the command exits without writing a match, or after mustTimeout,
// which is only a guard against a hang.
func (p *Proc) WaitOutput(t testing.TB, re *regexp.Regexp) []string {
	t.Helper()
	guard := time.NewTimer(mustTimeout)
	defer guard.Stop()
	for {
		out, changed := p.out.snapshot()
		if m := re.FindStringSubmatch(string(out)); m != nil {
			return m
		}
		select {
		case <-changed:
		case <-p.done:
			// Wait returned, so the output is complete.
			if m := re.FindStringSubmatch(string(p.out.Bytes())); m != nil {
				return m
			}
			t.Fatalf("hosttest: %q exited (%v) without output matching %s; output:\n%s", p.Cmd.Args, p.err, re, p.out.Bytes())
		case <-guard.C:
			t.Fatalf("hosttest: no output of %q matches %s within %s; output:\n%s", p.Cmd.Args, re, mustTimeout, p.out.Bytes())
		}
	}
}

// Signal sends sig to the command inside the host (not to nsenter, which
// would leave it running); its exit then ends Wait.
func (p *Proc) Signal(sig syscall.Signal) error {
	// nsenter's only child is the command, forked into the host's PID
	// namespace; it appears a moment after nsenter starts.
	nsenter := p.Cmd.Process.Pid
	children := fmt.Sprintf("/proc/%d/task/%d/children", nsenter, nsenter)
	for deadline := time.Now().Add(mustTimeout); ; {
		select {
		case <-p.done:
			return errors.New("hosttest: process has exited")
		default:
		}
		data, err := os.ReadFile(children)
		if f := strings.Fields(string(data)); err == nil && len(f) > 0 {
			pid, err := strconv.Atoi(f[0])
			if err != nil {
				return fmt.Errorf("failed to parse %s: %w", children, err)
			}
			return syscall.Kill(pid, sig)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("failed to find the command under nsenter %d: %v", nsenter, err)
		}
		// Polling the kernel's process table: nothing tells us when
		// nsenter has forked.
		time.Sleep(10 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and readers at once,
// which readers can wait on for the next write.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed at the next write; nil if no one waits
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	return s.b.Write(p)
}

// snapshot returns the contents and a channel closed at the next write.
func (s *syncBuffer) snapshot() ([]byte, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return bytes.Clone(s.b.Bytes()), s.changed
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// WriteFile writes a file inside the host, like os.WriteFile but with
// exactly perm (no umask, and also for an existing file), owned by root.
// path is absolute in the host. Symbolic links are followed only if they
// stay inside the host and are relative: an absolute one is an error, so a
// write can never land on this machine's files.
func (h *Host) WriteFile(path string, data []byte, perm os.FileMode) error {
	r, rel, err := h.fsPath(path)
	if err != nil {
		return err
	}
	if err := r.WriteFile(rel, data, perm); err != nil {
		return fmt.Errorf("failed to write %s in host %s: %w", path, h.Name, err)
	}
	if err := r.Chmod(rel, perm); err != nil {
		return fmt.Errorf("failed to chmod %s in host %s: %w", path, h.Name, err)
	}
	return nil
}

// ReadFile reads a file inside the host; symbolic links as for WriteFile.
func (h *Host) ReadFile(path string) ([]byte, error) {
	r, rel, err := h.fsPath(path)
	if err != nil {
		return nil, err
	}
	data, err := r.ReadFile(rel)
	if err != nil {
		return nil, fmt.Errorf("failed to read %s in host %s: %w", path, h.Name, err)
	}
	return data, nil
}

// Install copies the file src of this machine (a CGO_ENABLED=0 build of
// sera, say) to dst inside the host, executable.
func (h *Host) Install(t testing.TB, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("failed to read %s: %v", src, err)
	}
	if err := h.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// fsPath returns the host's root and path relative to it.
func (h *Host) fsPath(path string) (*os.Root, string, error) {
	if !filepath.IsAbs(path) {
		return nil, "", fmt.Errorf("hosttest: path %q in host %s is not absolute", path, h.Name)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped || h.root == nil {
		return nil, "", fmt.Errorf("hosttest: host %s is stopped", h.Name)
	}
	rel := strings.TrimPrefix(filepath.Clean(path), "/")
	if rel == "" {
		rel = "."
	}
	return h.root, rel, nil
}
