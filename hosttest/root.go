package hosttest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// suite is the Debian release of every host.
const suite = "bookworm"

// rootPackages are installed on top of debootstrap's minbase: what sera's
// watcher drives (useradd/usermod in passwd, sudo, ufw over iptables) and
// what tests use to look at a host (ps/pkill, ip, nft, nc, ssh).
var rootPackages = []string{
	"iproute2", "iptables", "netcat-openbsd", "nftables", "openssh-client",
	"openssh-server", "passwd", "procps", "sudo", "ufw",
}

// rootFormat is part of the cache key: bump it when the build steps below
// change, so no cache built the old way is reused.
const rootFormat = "1"

// defaultCache is where the root is cached unless SERA_TEST_CACHE says.
const defaultCache = "/var/cache/sera-test"

// sandboxEnv is the environment of debootstrap and of everything in a host.
var sandboxEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C",
	"DEBIAN_FRONTEND=noninteractive",
}

var (
	rootMu  sync.Mutex
	rootDir string // unpacked root, once this process has one
)

// Root returns the path of the cached, unpacked Debian root filesystem every
// host is an overlay of, building it if needed. Never write into it: the
// hosts of every test process share it as their read-only lower layer.
//
// The root is debootstrap's minbase of bookworm plus rootPackages, with
// apt's caches and lists and the SSH host keys removed. It is cached in
// ${SERA_TEST_CACHE:-/var/cache/sera-test} as bookworm-<key>.tar.zst
// (~70 MB; key = hash of suite, package list and build steps) and unpacked
// beside it as bookworm-<key>/ (~230 MB); a flock on bookworm-<key>.lock
// keeps concurrent test processes from building it twice. Cold (download
// and install) takes about a minute; warm, this is a stat.
//
// Building needs the Debian mirror named by the URIs: line of
// /etc/apt/sources.list.d/debian.sources (or /etc/apt/sources.list). It is
// done in private namespaces: only the download runs in this machine's
// network namespace, and the package scripts run with no network and a
// read-only /proc/sys, so they cannot touch this machine's firewall or
// kernel settings.
func Root(t testing.TB) string {
	t.Helper()
	requireHost(t, "tar", "zstd")
	rootMu.Lock()
	defer rootMu.Unlock()
	if rootDir != "" {
		return rootDir
	}
	dir, err := ensureRoot(t)
	if err != nil {
		t.Fatalf("failed to prepare the Debian root: %v", err)
	}
	rootDir = dir
	return dir
}

// rootKey names the cache entry: anything that changes the root's content
// must change the key.
func rootKey() string {
	pkgs := slices.Clone(rootPackages)
	slices.Sort(pkgs)
	sum := sha256.Sum256([]byte(suite + "\n" + strings.Join(pkgs, ",") + "\n" + rootFormat))
	return hex.EncodeToString(sum[:6])
}

// cacheDir returns the cache directory. Its path ends up in overlay mount
// options, where ',' and ':' are separators.
func cacheDir() (string, error) {
	dir := os.Getenv("SERA_TEST_CACHE")
	if dir == "" {
		dir = defaultCache
	}
	if !filepath.IsAbs(dir) || strings.ContainsAny(dir, ",:\n") {
		return "", fmt.Errorf("SERA_TEST_CACHE=%q must be an absolute path without ',' or ':'", dir)
	}
	return filepath.Clean(dir), nil
}

func ensureRoot(t testing.TB) (string, error) {
	cache, err := cacheDir()
	if err != nil {
		return "", err
	}
	base := filepath.Join(cache, suite+"-"+rootKey())
	// The unpacked root appears by rename only once complete, so seeing it
	// needs no lock.
	if isDir(base) {
		return base, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("failed to create cache %s: %w", cache, err)
	}
	unlock, err := lockFile(base+".lock", true)
	if err != nil {
		return "", err
	}
	defer unlock()
	if isDir(base) {
		return base, nil
	}
	// Under the lock, any temporary of ours is a dead process's leftover.
	if err := removeLeftovers(base); err != nil {
		return "", err
	}
	tarball := base + ".tar.zst"
	tmp := fmt.Sprintf("%s.tmp-%d", base, os.Getpid())
	start := time.Now()
	if _, err := os.Stat(tarball); err == nil {
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return "", fmt.Errorf("failed to create %s: %w", tmp, err)
		}
		if err := runLogged("tar", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*",
			"-xpf", tarball, "-C", tmp); err != nil {
			return "", fmt.Errorf("failed to unpack %s: %w", tarball, err)
		}
		t.Logf("hosttest: unpacked %s in %v", tarball, time.Since(start).Round(time.Millisecond))
	} else {
		requireHost(t, "debootstrap")
		t.Logf("hosttest: building the Debian root into %s (cold cache, about a minute)", cache)
		if err := buildRoot(tmp, tarball); err != nil {
			return "", err
		}
		t.Logf("hosttest: built %s in %v", tarball, time.Since(start).Round(time.Millisecond))
	}
	if err := os.Rename(tmp, base); err != nil {
		return "", fmt.Errorf("failed to move the root into place: %w", err)
	}
	return base, nil
}

// buildRoot debootstraps into dir and writes its tarball to tarball.
func buildRoot(dir, tarball string) error {
	work := dir + ".build"
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fmt.Errorf("failed to create %s: %w", work, err)
	}
	defer os.RemoveAll(work)
	mirror, err := debianMirror()
	if err != nil {
		return err
	}
	debs := work + "/debs.tgz"
	common := []string{"debootstrap", "--variant=minbase", "--include=" + strings.Join(rootPackages, ",")}
	steps := []struct {
		what   string
		newNet bool // false only for the download
		spec   initSpec
	}{
		{"download packages", false, initSpec{Argv: append(slices.Clone(common),
			"--make-tarball="+debs, suite, work+"/dl", mirror)}},
		{"unpack packages", true, initSpec{Argv: append(slices.Clone(common),
			"--foreign", "--unpack-tarball="+debs, suite, dir, mirror)}},
		// debootstrap would mount a writable proc itself; it leaves alone a
		// /proc that is already mounted, so the sandbox mounts one whose
		// /proc/sys is read-only.
		{"install packages", true, initSpec{Proc: dir + "/proc", Sys: dir + "/sys",
			Argv: []string{"chroot", dir, "/debootstrap/debootstrap", "--second-stage"}}},
		{"clean apt cache", true, initSpec{Argv: []string{"chroot", dir, "apt-get", "clean"}}},
	}
	for _, s := range steps {
		s.spec.Mode, s.spec.Env = modeSandbox, sandboxEnv
		if err := runSandbox(s.spec, s.newNet, work+"/build.log"); err != nil {
			return fmt.Errorf("failed to %s: %w", s.what, err)
		}
	}
	if err := trimRoot(dir); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.tmp-%d", tarball, os.Getpid())
	if err := runLogged("tar", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*",
		"-cf", tmp, "-C", dir, "."); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failed to pack the root: %w", err)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		return fmt.Errorf("failed to store %s: %w", tarball, err)
	}
	return nil
}

// trimRoot drops what is useless or wrong in a shared lower layer: package
// lists (no network in a host), SSH host keys (each host makes its own),
// and this machine's resolver and name.
func trimRoot(dir string) error {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("failed to open %s: %w", dir, err)
	}
	defer r.Close()
	var remove []string
	for _, pattern := range []string{"var/lib/apt/lists/*_*", "etc/ssh/ssh_host_*"} {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, p := range m {
			remove = append(remove, strings.TrimPrefix(p, dir+"/"))
		}
	}
	for _, p := range remove {
		if err := r.Remove(p); err != nil {
			return fmt.Errorf("failed to remove %s from the root: %w", p, err)
		}
	}
	for name, data := range map[string]string{"etc/resolv.conf": "", "etc/hostname": "localhost\n"} {
		r.Remove(name) // it may be a symlink; never write through one
		if err := r.WriteFile(name, []byte(data), 0o644); err != nil {
			return fmt.Errorf("failed to write %s in the root: %w", name, err)
		}
	}
	return nil
}

// runSandbox runs spec.Argv through the init hook in private namespaces,
// appending its output to logPath; on failure the error carries its tail.
func runSandbox(spec initSpec, newNet bool, logPath string) error {
	cmd, err := reexec(spec, newNet, "sandbox")
	if err != nil {
		return err
	}
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("failed to open %s: %w", logPath, err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		return fmt.Errorf("%q: %w\n%s", spec.Argv, err, tail(out, 30))
	}
	return nil
}

// runLogged runs a command in this machine's namespaces, returning its
// output in the error when it fails.
func runLogged(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %q: %w\n%s", name, args, err, tail(out, 30))
	}
	return nil
}

// debianMirror returns the mirror this machine's apt uses for suite.
func debianMirror() (string, error) {
	if data, err := os.ReadFile("/etc/apt/sources.list.d/debian.sources"); err == nil {
		// deb822 stanzas: take the URIs of the one whose Suites has suite.
		for _, stanza := range strings.Split(string(data), "\n\n") {
			var uris, suites []string
			for _, line := range strings.Split(stanza, "\n") {
				k, v, _ := strings.Cut(line, ":")
				switch strings.TrimSpace(k) {
				case "URIs":
					uris = strings.Fields(v)
				case "Suites":
					suites = strings.Fields(v)
				}
			}
			if len(uris) > 0 && slices.Contains(suites, suite) {
				return uris[0], nil
			}
		}
	}
	if f, err := os.Open("/etc/apt/sources.list"); err == nil {
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			// deb [options] URI suite components...
			fields := strings.Fields(s.Text())
			if len(fields) < 3 || fields[0] != "deb" {
				continue
			}
			fields = fields[1:]
			if strings.HasPrefix(fields[0], "[") {
				for len(fields) > 0 && !strings.HasSuffix(fields[0], "]") {
					fields = fields[1:]
				}
				fields = fields[1:]
			}
			if len(fields) >= 2 && fields[1] == suite {
				return fields[0], nil
			}
		}
	}
	return "", fmt.Errorf("failed to find a %s mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list", suite)
}

// removeLeftovers deletes temporaries next to base that a killed process
// left, refusing anything with a mount below it (RemoveAll would descend).
func removeLeftovers(base string) error {
	m, _ := filepath.Glob(base + "*.tmp-*")
	for _, p := range m {
		if mounted, err := hasMountBelow(p); err != nil || mounted {
			return fmt.Errorf("refusing to remove leftover %s: something is mounted below it (%v)", p, err)
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("failed to remove leftover %s: %w", p, err)
		}
	}
	return nil
}

// hasMountBelow reports whether any mount point of this mount namespace is
// dir or below it.
func hasMountBelow(dir string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("failed to read mountinfo: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			return true, nil
		}
	}
	return false, nil
}

// lockFile takes a flock on path, waiting for it if wait, else failing
// with syscall.EWOULDBLOCK when it is held. The kernel drops the lock when
// the process dies, so a killed test never leaves a stale lock.
func lockFile(path string, wait bool) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("failed to open lock %s: %w", path, err)
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("failed to lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// tail returns the last n lines of out.
func tail(out []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(out, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}
