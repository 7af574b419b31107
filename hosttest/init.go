package hosttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// initEnv carries an initSpec, as JSON, to a re-executed test binary.
const initEnv = "SERA_HOSTTEST_INIT"

// Modes of the re-executed test binary.
const (
	modeHost    = "host"    // a host's PID 1: mounts, chroot, sshd, reaper
	modeSandbox = "sandbox" // private mounts, optional proc/sys, then exec Argv
)

// initSpec tells the re-executed binary what to become.
type initSpec struct {
	Mode string

	// modeHost
	Lower, Upper, Work, Merged string // overlay layers and mount point
	Hostname                   string

	// modeSandbox
	Proc string   // if set, mount a proc here with read-only /proc/sys
	Sys  string   // if set, mount a read-only sysfs here
	Argv []string // program to exec, looked up in PATH

	Env []string // environment of what the init starts
}

// The hook runs before any test code: a process started by reexec with
// initEnv set becomes the init and never returns.
func init() {
	spec := os.Getenv(initEnv)
	if spec == "" {
		return
	}
	if err := runInit(spec); err != nil {
		fmt.Fprintf(os.Stderr, "hosttest-init: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runInit(raw string) error {
	var s initSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return fmt.Errorf("failed to parse %s: %w", initEnv, err)
	}
	// Everything below mounts and chroots. Only PID 1 of a fresh PID
	// namespace (which reexec also puts in a fresh mount namespace) may do
	// that, never a process that merely inherited the variable.
	if os.Getpid() != 1 {
		return fmt.Errorf("refusing to run: %s is set but this is not PID 1 of a new PID namespace", initEnv)
	}
	os.Unsetenv(initEnv)
	// Mounts in the new namespace must never propagate back to the machine.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("failed to make mounts private: %w", err)
	}
	switch s.Mode {
	case modeHost:
		return hostInit(s)
	case modeSandbox:
		return sandboxInit(s)
	}
	return fmt.Errorf("unknown mode %q", s.Mode)
}

// reexec returns a command that runs this test binary again as PID 1 of new
// mount, UTS, IPC and PID namespaces (and a new network namespace if
// newNet), where the init hook takes over with spec. The child is killed
// if the test process dies, so no host outlives its test. (Pdeathsig
// follows the thread that started the child, which the Go runtime keeps
// alive unless a goroutine exits while locked to it.)
func reexec(spec initSpec, newNet bool, name string) (*exec.Cmd, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("failed to encode init spec: %w", err)
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"hosttest-init", name}
	cmd.Env = append([]string{initEnv + "=" + string(raw)}, spec.Env...)
	flags := syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWPID
	if newNet {
		flags |= syscall.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: uintptr(flags), Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// mountProc mounts a proc for the current PID namespace at dir and makes
// its sys/ read-only except sys/net: most sysctls are global, and a write to
// kernel.* from a test host must not change this machine's kernel, while
// net.* is per network namespace and ufw writes there.
func mountProc(dir string) error {
	const procFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC
	if err := os.MkdirAll(dir, 0o555); err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	if err := syscall.Mount("proc", dir, "proc", procFlags, ""); err != nil {
		return fmt.Errorf("failed to mount proc on %s: %w", dir, err)
	}
	sys, net := dir+"/sys", dir+"/sys/net"
	steps := []struct {
		src, dst string
		flags    uintptr
	}{
		// net first, as a mount of its own, so the recursive bind below
		// carries it along and the read-only remount of sys leaves it be.
		{net, net, syscall.MS_BIND},
		{sys, sys, syscall.MS_BIND | syscall.MS_REC},
		{"", sys, syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY | procFlags},
	}
	for _, s := range steps {
		if err := syscall.Mount(s.src, s.dst, "", s.flags, ""); err != nil {
			return fmt.Errorf("failed to mount %s on %s (flags %#x): %w", s.src, s.dst, s.flags, err)
		}
	}
	return nil
}

// mountSys mounts a fresh read-only sysfs: it shows this network
// namespace's interfaces, and nothing in a host may write kernel knobs.
func mountSys(dir string) error {
	if err := os.MkdirAll(dir, 0o555); err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	flags := uintptr(syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC)
	if err := syscall.Mount("sysfs", dir, "sysfs", flags, ""); err != nil {
		return fmt.Errorf("failed to mount sysfs on %s: %w", dir, err)
	}
	return nil
}

// sandboxInit runs a program (debootstrap) with private mounts and,
// optionally, a proc and sysfs prepared for it.
func sandboxInit(s initSpec) error {
	if s.Proc != "" {
		if err := mountProc(s.Proc); err != nil {
			return err
		}
	}
	if s.Sys != "" {
		if err := mountSys(s.Sys); err != nil {
			return err
		}
	}
	if len(s.Argv) == 0 {
		return errors.New("sandbox: no program")
	}
	os.Clearenv()
	for _, kv := range s.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			os.Setenv(k, v)
		}
	}
	path, err := exec.LookPath(s.Argv[0])
	if err != nil {
		return fmt.Errorf("failed to find %s: %w", s.Argv[0], err)
	}
	return syscall.Exec(path, s.Argv, s.Env)
}

// hostInit builds the host's root filesystem, chroots into it, starts sshd,
// tells the parent (fd 3) it is ready, and then reaps orphans forever: it is
// ended only by SIGKILL from the parent, which ends the whole host.
func hostInit(s initSpec) error {
	m := s.Merged
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.Lower, s.Upper, s.Work)
	if err := syscall.Mount("overlay", m, "overlay", 0, opts); err != nil {
		return fmt.Errorf("failed to mount overlay (%s) on %s: %w", opts, m, err)
	}
	if err := mountProc(m + "/proc"); err != nil {
		return err
	}
	if err := mountSys(m + "/sys"); err != nil {
		return err
	}
	if err := syscall.Mount("/dev", m+"/dev", "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("failed to bind /dev: %w", err)
	}
	for dir, mode := range map[string]string{"/run": "0755", "/tmp": "1777"} {
		if err := syscall.Mount("tmpfs", m+dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode="+mode); err != nil {
			return fmt.Errorf("failed to mount tmpfs on %s: %w", dir, err)
		}
	}
	if err := syscall.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("failed to set hostname: %w", err)
	}
	if err := syscall.Chdir(m); err != nil {
		return fmt.Errorf("failed to enter %s: %w", m, err)
	}
	if err := syscall.Chroot("."); err != nil {
		return fmt.Errorf("failed to chroot to %s: %w", m, err)
	}
	if err := syscall.Chdir("/"); err != nil {
		return fmt.Errorf("failed to enter /: %w", err)
	}
	// From here on every path is inside the host.
	if err := prepareRun(); err != nil {
		return err
	}
	if err := os.WriteFile("/etc/hostname", []byte(s.Hostname+"\n"), 0o644); err != nil {
		return fmt.Errorf("failed to write /etc/hostname: %w", err)
	}
	// The cached root has no host keys, but a key left in the upper layer
	// would be shared; every host must have its own.
	keys, _ := filepath.Glob("/etc/ssh/ssh_host_*")
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return fmt.Errorf("failed to remove %s: %w", k, err)
		}
	}
	keygen := exec.Command("/usr/bin/ssh-keygen", "-A")
	keygen.Env = s.Env
	if out, err := keygen.CombinedOutput(); err != nil {
		return fmt.Errorf("failed to generate host keys: %w: %s", err, out)
	}

	// Keep SIGTERM and friends from killing the host from inside (pkill
	// without care): handled signals reset to default in children.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	null, err := os.Open("/dev/null")
	if err != nil {
		return fmt.Errorf("failed to open /dev/null: %w", err)
	}
	sshd, err := os.StartProcess("/usr/sbin/sshd", []string{"/usr/sbin/sshd", "-D", "-e"},
		&os.ProcAttr{Dir: "/", Env: s.Env, Files: []*os.File{null, os.Stderr, os.Stderr}})
	if err != nil {
		return fmt.Errorf("failed to start sshd: %w", err)
	}
	null.Close()

	ready := os.NewFile(3, "ready")
	if _, err := ready.WriteString("ready\n"); err != nil {
		return fmt.Errorf("failed to report readiness: %w", err)
	}
	ready.Close()

	// PID 1 must reap whatever gets orphaned in the host (daemons, the
	// children of killed sessions), or they pile up as zombies.
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, syscall.ECHILD):
			// No child now (sshd is gone): the next can only be an
			// orphan handed to us, whose exit raises SIGCHLD. One that
			// came before this wait is in the channel's buffer.
			<-sigchld
		case err == nil && pid == sshd.Pid:
			fmt.Fprintf(os.Stderr, "hosttest-init: sshd exited (%v)\n", ws)
		}
	}
}

// prepareRun creates in the fresh /run what a booted Debian would have.
func prepareRun() error {
	for dir, mode := range map[string]os.FileMode{"/run/sshd": 0o755, "/run/lock": 0o1777} {
		if err := os.Mkdir(dir, mode); err != nil {
			return fmt.Errorf("failed to create %s: %w", dir, err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			return fmt.Errorf("failed to chmod %s: %w", dir, err)
		}
	}
	// sshd and login record sessions here; who and w read it.
	if err := os.WriteFile("/run/utmp", nil, 0o664); err != nil {
		return fmt.Errorf("failed to create /run/utmp: %w", err)
	}
	return nil
}
