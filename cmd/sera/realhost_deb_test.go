//go:build linux

package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera/hosttest"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// buildDebs runs 'make deb' for each version (in parallel) and returns
// the packages, in order.
func buildDebs(t *testing.T, versions ...string) []string {
	t.Helper()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dist := t.TempDir()
	debs := make([]string, len(versions))
	errs := make([]error, len(versions))
	var wg sync.WaitGroup
	for i, v := range versions {
		wg.Go(func() {
			dir := filepath.Join(dist, v)
			cmd := exec.Command("make", "-C", repo, "--no-print-directory", "deb", "VERSION="+v, "DIST="+dir)
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("make deb VERSION=%s: %v\n%s", v, err, out)
				return
			}
			m, _ := filepath.Glob(filepath.Join(dir, "sera_"+strings.TrimPrefix(v, "v")+"_*.deb"))
			if len(m) != 1 {
				errs[i] = fmt.Errorf("make deb VERSION=%s made %q", v, m)
				return
			}
			debs[i] = m[0]
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return debs
}

// lintian checks a package with Debian's lintian: no errors allowed. The
// warnings it reports are logged.
func lintian(t *testing.T, deb string) {
	t.Helper()
	if _, err := exec.LookPath("lintian"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Error("lintian not found: install Debian's lintian package (.ci/install-host-deps)")
		} else {
			t.Log("lintian not found (Debian package lintian); not checking the package with it")
		}
		return
	}
	out, err := exec.Command("lintian", "--fail-on", "error", "--display-level", ">=warning", deb).CombinedOutput()
	text := strings.TrimSpace(strings.ReplaceAll(string(out), "running with root privileges is not recommended!", ""))
	if err != nil {
		t.Errorf("lintian %s: %v\n%s", filepath.Base(deb), err, text)
	} else {
		t.Logf("lintian %s: no errors; warnings: %q", filepath.Base(deb), text)
	}
}

// datagrams listens on a unix datagram socket at path and returns what
// arrives, one message each.
func datagrams(t *testing.T, path string) <-chan []byte {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch := make(chan []byte, 1000)
	go func() {
		defer close(ch)
		buf := make([]byte, 1<<20)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- bytes.Clone(buf[:n])
		}
	}()
	return ch
}

// journalFields parses one entry of journald's native protocol: KEY=value
// lines, or KEY, a newline, a 64-bit little-endian length and the value
// for values that hold a newline.
func journalFields(b []byte) map[string]string {
	m := map[string]string{}
	for len(b) > 0 {
		line, rest, ok := bytes.Cut(b, []byte("\n"))
		if !ok {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte("=")); ok {
			m[string(k)] = string(v)
			b = rest
			continue
		}
		if len(rest) < 8 {
			break
		}
		n := binary.LittleEndian.Uint64(rest[:8])
		rest = rest[8:]
		if uint64(len(rest)) < n+1 {
			break
		}
		m[string(line)] = string(rest[:n])
		b = rest[n+1:]
	}
	return m
}

// procRoot returns a path on this machine that leads into the host's
// file system as the host's processes see it (its own /run included):
// /proc/PID/root of a process inside it.
func procRoot(t *testing.T, h *hosttest.Host) string {
	t.Helper()
	p := h.Start(t, "sleep", "3600")
	nsenter := p.Cmd.Process.Pid
	// Polling the kernel's process table: nothing tells us when nsenter
	// has forked.
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nsenter, nsenter))
		if f := strings.Fields(string(data)); err == nil && len(f) > 0 {
			return "/proc/" + f[0] + "/root"
		}
	}
	t.Fatal("no process inside the host")
	return ""
}

// notifyLog collects sd_notify datagrams and waits for a given one.
type notifyLog struct {
	ch  <-chan []byte
	all []string
}

// waitFor waits until a datagram holds the line want, and returns it.
func (n *notifyLog) waitFor(t *testing.T, want string) string {
	t.Helper()
	timeout := time.After(time.Minute) // a guard
	for {
		select {
		case b, ok := <-n.ch:
			if !ok {
				t.Fatalf("notify socket closed before %q; got %q", want, n.all)
			}
			n.all = append(n.all, string(b))
			if slices.Contains(strings.Split(string(b), "\n"), want) {
				return string(b)
			}
		case <-timeout:
			t.Fatalf("no %q from the watcher within a minute; got %q", want, n.all)
		}
	}
}

// TestDeb builds the Debian package twice with 'make deb' (v0.9.0 and
// v1.0.0), checks it with lintian, and installs, upgrades, removes and
// purges it on real Debian systems: a namespace host of the real-host
// tests (dpkg without systemd), and a Debian booted with systemd in a
// container (sera.service with all its hardening doing account, sudo and
// ufw work).
func TestDeb(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("TestDeb needs root")
		}
		t.Skip("needs root")
	}
	start := time.Now()
	debs := buildDebs(t, "v0.9.0", "v1.0.0")
	t.Logf("make deb, two versions: %s", time.Since(start).Round(time.Millisecond))
	lintDone := make(chan struct{})
	go func() {
		defer close(lintDone)
		lintian(t, debs[1])
	}()
	defer func() { <-lintDone }()
	t.Run("NamespaceHost", func(t *testing.T) { testDebOnNamespaceHost(t, debs) })
	t.Run("Systemd", func(t *testing.T) { testDebUnderSystemd(t, debs) })
}

// testDebOnNamespaceHost installs the package on a real Debian host (a
// namespace over the cached Debian root: real dpkg, no systemd), checks
// its files, modes and conffile, runs the installed watcher under a fake
// systemd notify socket and a fake journald and pings it through SQS,
// upgrades the package keeping the admin's settings, removes it and
// purges it.
func testDebOnNamespaceHost(t *testing.T, debs []string) {
	nw := hosttest.NewNet(t) // skips (or fails with CI=true) without its tools

	// The client on this machine, the SQS server, the host.
	srv := sqstest.Start(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	f := &fleet{t: t, bin: staticSera(t), dir: t.TempDir(), prefix: "rd" + hex.EncodeToString(rnd[:]), hosts: map[string]*hosttest.Host{}}
	port := srv.Endpoint[strings.LastIndex(srv.Endpoint, ":")+1:]
	awsEnv := func(endpoint string) []string {
		return []string{"AWS_ENDPOINT_URL=" + endpoint, "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
			"AWS_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true", "SERA_TRANSPORT=sqs", "SERA_PREFIX=" + f.prefix}
	}
	f.env = append(awsEnv(srv.Endpoint), "SERA_HOME="+filepath.Join(f.dir, "client"), "SERA_STATE="+filepath.Join(f.dir, "client-state"),
		"PATH="+os.Getenv("PATH"), "HOME="+f.dir)
	f.clients = strings.TrimSpace(f.mustSera("keygen"))
	ctx := context.Background()
	if _, err := sqs.CreateQueue(ctx, srv.Config, transport.ClientQueue(f.prefix, f.identity().Public().Fingerprint())); err != nil {
		t.Fatal(err)
	}
	if _, err := sqs.CreateQueue(ctx, srv.Config, transport.WatcherQueue(f.prefix, "deb1")); err != nil {
		t.Fatal(err)
	}
	h := nw.Start(t, "deb1")
	f.hosts["deb1"] = h
	for _, deb := range debs {
		data, err := os.ReadFile(deb)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WriteFile("/root/"+filepath.Base(deb), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dpkg := func(args ...string) string {
		t.Helper()
		out, err := h.Exec(ctx, append([]string{"dpkg"}, args...)...)
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	stat := func(paths ...string) string {
		t.Helper()
		out, _ := h.Exec(ctx, append([]string{"stat", "-c", "%A %U:%G %n"}, paths...)...)
		return string(out)
	}
	exists := func(path string) bool {
		_, _, code, err := h.Run(ctx, "test", "-e", path)
		return err == nil && code == 0
	}

	// 1. Install: files, modes, the conffile, enabled for the next boot
	// (there is no systemd to start it here), the version.
	out := dpkg("-i", "/root/"+filepath.Base(debs[0]))
	if !strings.Contains(out, "sera keygen") {
		t.Errorf("dpkg -i did not say what to do next:\n%s", out)
	}
	files := map[string]string{
		"/usr/bin/sera":                                  "-rwxr-xr-x root:root",
		"/lib/systemd/system/sera.service":               "-rw-r--r-- root:root",
		"/etc/sera":                                      "drwx------ root:root",
		"/etc/sera/env":                                  "-rw------- root:root",
		"/usr/share/man/man1/sera.1.gz":                  "-rw-r--r-- root:root",
		"/usr/share/man/man1/sera-watch.1.gz":            "-rw-r--r-- root:root",
		"/usr/share/man/man1/sera-install-service.1.gz":  "-rw-r--r-- root:root",
		"/usr/share/bash-completion/completions/sera":    "-rw-r--r-- root:root",
		"/usr/share/zsh/vendor-completions/_sera":        "-rw-r--r-- root:root",
		"/usr/share/fish/vendor_completions.d/sera.fish": "-rw-r--r-- root:root",
		"/usr/share/doc/sera/copyright":                  "-rw-r--r-- root:root",
		"/usr/share/doc/sera/changelog.gz":               "-rw-r--r-- root:root",
	}
	for path, want := range files {
		if got := stat(path); got != want+" "+path+"\n" {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
	if got := h.MustExec(t, "dpkg-query", "-W", "-f", "${Version} ${db:Status-Abbrev}|${Conffiles}", "sera"); !strings.HasPrefix(got, "0.9.0 ii |") || !strings.Contains(got, " /etc/sera/env ") {
		t.Errorf("dpkg-query: %q", got)
	}
	const wants = "/etc/systemd/system/multi-user.target.wants/sera.service"
	if got := h.MustExec(t, "readlink", wants); got != "/lib/systemd/system/sera.service\n" {
		t.Errorf("%s -> %q", wants, got)
	}
	if got := h.MustExec(t, "sera", "version"); got != "sera v0.9.0\n" {
		t.Errorf("sera version: %q", got)
	}
	if got := h.MustExec(t, "sera", "--version"); got != "sera v0.9.0\n" {
		t.Errorf("sera --version: %q", got)
	}
	if page, err := h.ReadFile("/usr/share/man/man1/sera-watch.1.gz"); err != nil {
		t.Error(err)
	} else if zr, err := gzip.NewReader(bytes.NewReader(page)); err != nil {
		t.Error(err)
	} else if text, _ := io.ReadAll(zr); !bytes.Contains(text, []byte(`.TH "SERA-WATCH" "1"`)) || !bytes.Contains(text, []byte("long-polls")) {
		t.Errorf("sera-watch(1):\n%s", text)
	}
	unit, err := h.ReadFile("/lib/systemd/system/sera.service")
	if err != nil || !bytes.Contains(unit, []byte("\nExecStart=/usr/bin/sera watch\n")) {
		t.Errorf("unit: %v\n%s", err, unit)
	}

	// 2. Set the host up as an admin would, the settings in the conffile.
	pub := strings.TrimSpace(h.MustExec(t, "sera", "keygen"))
	h.MustExec(t, "sera", "config", "set", "SERA_NAME=deb1")
	h.MustExec(t, "sera", "clients", "add", f.clients, "--name", "admin", "--allow", "*")
	f.mustSera("watchers", "add", "deb1", pub)
	key, err := h.ReadFile("/etc/sera/key")
	if err != nil {
		t.Fatal(err)
	}

	// 3. The installed watcher, started by hand as systemd would: a
	// notify socket with a watchdog, and journald, both faked in the
	// host's own /run.
	root := procRoot(t, h)
	h.MustExec(t, "mkdir", "-p", "/run/systemd/journal")
	notify := &notifyLog{ch: datagrams(t, root+"/run/sera-notify")}
	journal := datagrams(t, root+"/run/systemd/journal/socket")
	watchEnv := append([]string{"env"}, awsEnv("http://"+nw.Gateway+":"+port)...)
	watchEnv = append(watchEnv, "NOTIFY_SOCKET=/run/sera-notify", "WATCHDOG_USEC=6000000")
	started := time.Now()
	watcher := h.Start(t, append(watchEnv, "/usr/bin/sera", "watch")...)
	ready := notify.waitFor(t, "READY=1")
	t.Logf("READY=1 %s after the watcher started: %q", time.Since(started).Round(time.Millisecond), ready)

	ping := f.mustSera("ping", "--to", "deb1")
	if !strings.Contains(ping, "deb1") || !strings.Contains(ping, "v0.9.0") {
		t.Errorf("ping: %s", ping)
	}
	status := notify.waitFor(t, "WATCHDOG=1")
	for !strings.Contains(status, "1 requests: 1 accepted") {
		status = notify.waitFor(t, "WATCHDOG=1")
	}

	// The audit record reached journald with its fields...
	// Two entries: "running", written before the command ran, then
	// "accepted" with its exit status.
	var entry map[string]string
	for _, want := range []string{"running", "accepted"} {
		select {
		case b := <-journal:
			entry = journalFields(b)
		case <-time.After(time.Minute): // a guard
			t.Fatal("no audit entry reached journald")
		}
		if entry["SERA_DECISION"] != want {
			t.Fatalf("journal entry %q, want decision %s", entry, want)
		}
	}
	fp := f.identity().Public().Fingerprint()
	for k, want := range map[string]string{"SERA_DECISION": "accepted", "SERA_ARGV": `["ping"]`, "SERA_EXIT": "0",
		"SERA_CLIENT": fp, "SERA_CLIENT_NAME": "admin", "SYSLOG_IDENTIFIER": "sera"} {
		if entry[k] != want {
			t.Errorf("journal field %s = %q, want %q (entry %q)", k, entry[k], want, entry)
		}
	}
	if len(entry["SERA_REQUEST_ID"]) != 32 || !strings.HasPrefix(entry["MESSAGE"], "audit: accepted: admin") {
		t.Errorf("journal entry: %q", entry)
	}
	// ...and the JSON line, which 'sera audit' reads back.
	if got := h.MustExec(t, "sera", "audit"); !strings.Contains(got, "accepted") || !strings.Contains(got, "ping  exit 0") || !strings.Contains(got, entry["SERA_REQUEST_ID"]) {
		t.Errorf("sera audit:\n%s", got)
	}
	if got := h.MustExec(t, "sera", "audit", "--since", "1h", "--json"); strings.Count(got, "\n") != 2 || !strings.Contains(got, `"decision":"running"`) || !strings.Contains(got, `"argv":["ping"]`) {
		t.Errorf("sera audit --json:\n%s", got)
	}

	// SIGTERM, as systemctl stop sends: STOPPING=1, a clean exit.
	if err := watcher.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	notify.waitFor(t, "STOPPING=1")
	if err := watcher.Wait(); err != nil {
		t.Errorf("watcher exit: %v\n%s", err, watcher.Output())
	}
	checkNotifyOrder(t, notify.all)

	// 4. Upgrade: the new binary, the admin's env file and key kept.
	out = dpkg("-i", "/root/"+filepath.Base(debs[1]))
	t.Logf("upgrade:\n%s", out)
	if got := h.MustExec(t, "sera", "version"); got != "sera v1.0.0\n" {
		t.Errorf("after upgrade, sera version: %q", got)
	}
	if env, _ := h.ReadFile("/etc/sera/env"); !bytes.Contains(env, []byte("\nSERA_NAME=deb1\n")) {
		t.Errorf("upgrade replaced the env file:\n%s", env)
	}
	if got, _ := h.ReadFile("/etc/sera/key"); !bytes.Equal(got, key) {
		t.Error("upgrade changed the key")
	}
	if got := h.MustExec(t, "sh", "-c", "ls /etc/sera | grep -c dpkg; stat -c '%a' /etc/sera/env"); got != "0\n600\n" {
		t.Errorf("after upgrade, dpkg files in /etc/sera, env mode: %q", got)
	}
	endPolls(t, srv.Config, transport.WatcherQueue(f.prefix, "deb1"))
	watcher = h.Start(t, append(append([]string{"env"}, awsEnv("http://"+nw.Gateway+":"+port)...), "/usr/bin/sera", "watch")...)
	if ping := f.mustSera("ping", "--to", "deb1"); !strings.Contains(ping, "v1.0.0") {
		t.Errorf("ping after upgrade: %s", ping)
	}
	if err := watcher.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	watcher.Wait()

	// 5. Remove keeps the configuration and state; purge removes them.
	dpkg("-r", "sera")
	for _, gone := range []string{"/usr/bin/sera", "/lib/systemd/system/sera.service", "/usr/share/man/man1/sera.1.gz"} {
		if exists(gone) {
			t.Errorf("%s is left after dpkg -r", gone)
		}
	}
	for _, kept := range []string{"/etc/sera/env", "/etc/sera/key", "/etc/sera/known_clients", "/var/lib/sera/audit.log"} {
		if !exists(kept) {
			t.Errorf("dpkg -r removed %s", kept)
		}
	}
	dpkg("-P", "sera")
	for _, gone := range []string{"/etc/sera", "/var/lib/sera", wants} {
		if exists(gone) {
			t.Errorf("%s is left after dpkg -P", gone)
		}
	}
	if got, _ := h.Exec(ctx, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "sera"); strings.HasPrefix(string(got), "i") || strings.HasPrefix(string(got), "r") {
		t.Errorf("after purge, dpkg status %q", got)
	}
}

// checkNotifyOrder: READY=1 once, before any WATCHDOG=1 that follows it,
// and STOPPING=1 last.
func checkNotifyOrder(t *testing.T, all []string) {
	t.Helper()
	ready, watchdog, stopping := -1, -1, -1
	for i, m := range all {
		lines := strings.Split(m, "\n")
		if slices.Contains(lines, "READY=1") {
			if ready >= 0 {
				t.Errorf("READY=1 sent twice: %q", all)
			}
			ready = i
		}
		if slices.Contains(lines, "WATCHDOG=1") && ready >= 0 {
			watchdog = i
		}
		if slices.Contains(lines, "STOPPING=1") {
			stopping = i
		}
	}
	if ready < 0 || watchdog < ready || stopping != len(all)-1 || stopping <= watchdog {
		t.Errorf("notifications out of order (READY=1 at %d, last WATCHDOG=1 at %d, STOPPING=1 at %d): %s", ready, watchdog, stopping, strconv.Quote(strings.Join(all, " | ")))
	}
}

// sdRootPackages make the Debian root that boots systemd in a container:
// systemd itself and what sera's watcher drives.
var sdRootPackages = []string{"dbus", "init-system-helpers", "iptables", "passwd", "procps", "sudo", "systemd", "systemd-sysv", "ufw"}

// systemdRoot returns a cached Debian bookworm root with systemd, building
// it the first time (about a minute: debootstrap from the mirror apt
// uses). Only the download runs in this machine's network namespace; the
// package scripts run with no network and a read-only /proc/sys. The root
// is shared read-only: containers boot it with --volatile=overlay.
func systemdRoot(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("SERA_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/sera-test"
	}
	sum := sha256.Sum256([]byte("bookworm\n" + strings.Join(sdRootPackages, ",") + "\n1"))
	base := filepath.Join(cache, "bookworm-systemd-"+hex.EncodeToString(sum[:6]))
	if fi, err := os.Stat(base); err == nil && fi.IsDir() {
		return base
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(base+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(base); err == nil && fi.IsDir() {
		return base
	}
	tmp := base + ".tmp"
	os.RemoveAll(tmp) // a killed build's leftover, under the lock
	os.RemoveAll(tmp + ".build")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out))
		}
	}
	tarball := base + ".tar.zst"
	if _, err := os.Stat(tarball); err == nil {
		run("tar", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball, "-C", tmp)
	} else {
		for _, tool := range []string{"debootstrap", "unshare", "zstd"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Fatalf("%s not found: bash .ci/install-host-deps", tool)
			}
		}
		t.Logf("building the systemd Debian root into %s (cold cache, about a minute)", cache)
		mirror := debMirror(t)
		work := tmp + ".build"
		defer os.RemoveAll(work)
		include := "--include=" + strings.Join(sdRootPackages, ",")
		run("debootstrap", "--variant=minbase", include, "--make-tarball="+work+"/debs.tgz", "bookworm", work+"/dl", mirror)
		script := `set -e
debootstrap --variant=minbase "$1" --foreign --unpack-tarball="$2" bookworm "$3" "$4"
mount -t proc proc "$3/proc"
mount --bind "$3/proc/sys" "$3/proc/sys"
mount -o remount,bind,ro "$3/proc/sys"
chroot "$3" /debootstrap/debootstrap --second-stage
chroot "$3" apt-get clean
`
		run("unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
			"sh", "-c", script, "sh", include, work+"/debs.tgz", tmp, mirror)
		for _, p := range []string{"var/lib/apt/lists", "etc/machine-id"} {
			if p == "etc/machine-id" {
				os.WriteFile(filepath.Join(tmp, p), nil, 0o444) // each boot makes one
				continue
			}
			m, _ := filepath.Glob(filepath.Join(tmp, p, "*_*"))
			for _, f := range m {
				os.Remove(f)
			}
		}
		run("tar", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", tarball+".tmp", "-C", tmp, ".")
		if err := os.Rename(tarball+".tmp", tarball); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, base); err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd Debian root ready in %s", time.Since(start).Round(time.Millisecond))
	return base
}

func tail(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return bytes.Join(lines[max(0, len(lines)-30):], []byte("\n"))
}

// debMirror is the bookworm mirror this machine's apt uses.
func debMirror(t *testing.T) string {
	t.Helper()
	data, _ := os.ReadFile("/etc/apt/sources.list.d/debian.sources")
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
		if len(uris) > 0 && slices.Contains(suites, "bookworm") {
			return uris[0]
		}
	}
	t.Fatal("no bookworm mirror in /etc/apt/sources.list.d/debian.sources")
	return ""
}

// container is a Debian booted with systemd by systemd-nspawn: its own
// PID, mount, UTS, IPC and network namespaces (loopback only, so ufw there
// touches nothing of this machine), its root an overlay on the cached
// root with a tmpfs on top, gone when it stops.
type container struct {
	t    *testing.T
	pid1 int // systemd, in this machine's PID namespace
}

func bootContainer(t *testing.T, root, share string) *container {
	t.Helper()
	for _, tool := range []string{"systemd-nspawn", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: bash .ci/install-host-deps", tool)
			}
			t.Skipf("%s not found (Debian package systemd-container)", tool)
		}
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	logPath := filepath.Join(t.TempDir(), "boot.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("systemd-nspawn", "--quiet", "--boot", "--volatile=overlay", "--private-network",
		"--register=no", "--keep-unit", "--console=passive", "--directory="+root,
		"--machine=sera-"+hex.EncodeToString(rnd[:]), "--bind-ro="+share+":/mnt/sera")
	cmd.Stdout, cmd.Stderr = logf, logf
	// A killed test takes the container with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	c := &container{t: t}
	t.Cleanup(func() {
		// SIGKILL to the container's PID 1 ends its PID namespace; nspawn
		// then exits and removes what it set up.
		if c.pid1 > 0 {
			syscall.Kill(c.pid1, syscall.SIGKILL)
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("container console:\n%s", tail(out))
		}
	})
	// systemd is nspawn's grandchild, PID 1 in its namespace. Polling the
	// kernel's process table: nothing tells us when nspawn has forked it.
	for deadline := time.Now().Add(2 * time.Minute); c.pid1 == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			t.Fatalf("systemd did not start in the container:\n%s", tail(out))
		}
		c.pid1 = findNSInit(cmd.Process.Pid)
	}
	// Until systemd listens, systemctl says "offline" at once instead of
	// waiting for the boot: polled, as systemd's bus is not up to ask.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		out, err := c.exec("systemctl", "is-system-running", "--wait")
		if state := strings.TrimSpace(out); state == "running" || state == "degraded" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the container did not boot: %q, %v", out, err)
		}
	}
	return c
}

// findNSInit finds a descendant of pid that is PID 1 of its own PID
// namespace.
func findNSInit(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(data)) {
		child, _ := strconv.Atoi(f)
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", child))
		for _, line := range strings.Split(string(status), "\n") {
			if ns := strings.Fields(strings.TrimPrefix(line, "NSpid:")); strings.HasPrefix(line, "NSpid:") && len(ns) > 1 && ns[len(ns)-1] == "1" {
				return child
			}
		}
		if p := findNSInit(child); p > 0 {
			return p
		}
	}
	return 0
}

// exec runs args in the container, as root, and returns its standard
// output; a failure's error carries its standard error.
func (c *container) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a", "--",
		"env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, errOut.String())
	}
	return out.String(), nil
}

func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("%q in the container: %v\n%s", args, err, out)
	}
	return out
}

// show returns a property of sera.service.
func (c *container) show(prop string) string {
	c.t.Helper()
	return strings.TrimSpace(c.must("systemctl", "show", "-P", prop, "sera.service"))
}

// watchdogOutlived waits until sera.service has pinged the watchdog
// later than watchdog after its start, still the same process, never
// restarted: a live loop is not killed. It returns the MainPID.
func (c *container) watchdogOutlived(watchdog time.Duration) string {
	c.t.Helper()
	var pid string
	// Polling systemd's record of the unit: it tells no one of a ping.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		props := map[string]string{}
		for _, line := range strings.Split(c.must("systemctl", "show", "sera.service", "-p", "MainPID", "-p", "NRestarts",
			"-p", "ActiveState", "-p", "ExecMainStartTimestampMonotonic", "-p", "WatchdogTimestampMonotonic"), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				props[k] = v
			}
		}
		if pid == "" {
			pid = props["MainPID"]
		}
		if props["NRestarts"] != "0" || props["ActiveState"] != "active" || props["MainPID"] != pid {
			c.t.Fatalf("a healthy watcher was restarted: %q\n%s", props, c.must("journalctl", "-u", "sera", "--no-pager", "-n", "20"))
		}
		started, err1 := strconv.ParseInt(props["ExecMainStartTimestampMonotonic"], 10, 64)
		pinged, err2 := strconv.ParseInt(props["WatchdogTimestampMonotonic"], 10, 64)
		if err1 != nil || err2 != nil {
			c.t.Fatalf("sera.service timestamps: %q", props)
		}
		if time.Duration(pinged-started)*time.Microsecond > watchdog {
			return pid
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no watchdog ping %s after the start: %q", watchdog, props)
		}
	}
}

// client runs sera as the admin's client inside the container, on the
// spool the watcher serves.
func (c *container) client(args ...string) string {
	c.t.Helper()
	return c.must(append([]string{"env", "SERA_HOME=/root/client", "SERA_STATE=/root/client-state",
		"SERA_SPOOL=/var/lib/sera/spool", "sera"}, args...)...)
}

// testDebUnderSystemd installs the package on a Debian booted with
// systemd, and proves the unit: Type=notify startup, the STATUS= line,
// account, key, group, sudo and ufw work under every hardening option of
// the unit, the audit in journald, a stuck watcher restarted by the
// watchdog, an upgrade restarting the service, remove stopping it, purge.
func testDebUnderSystemd(t *testing.T, debs []string) {
	root := systemdRoot(t)
	share := t.TempDir()
	for _, deb := range append(slices.Clone(debs), staticSera(t)) {
		data, err := os.ReadFile(deb)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(share, filepath.Base(deb)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	c := bootContainer(t, root, share)
	t.Logf("container booted in %s", time.Since(start).Round(time.Millisecond))

	// Install as README says, with no key yet: enabled, its start
	// skipped, not failed.
	out := c.must("apt-get", "install", "-y", "--no-install-recommends", "/mnt/sera/"+filepath.Base(debs[0]))
	if !strings.Contains(out, "sera keygen") {
		t.Errorf("dpkg -i:\n%s", out)
	}
	if got := c.show("UnitFileState") + " " + c.show("ActiveState") + " " + c.show("ConditionResult"); got != "enabled inactive no" {
		t.Errorf("before keygen: %q", got)
	}

	// The host set up as README says; the client is on the same machine.
	pub := strings.TrimSpace(c.must("sera", "keygen"))
	c.must("sera", "config", "set", "SERA_NAME=c1")
	clientKey := strings.TrimSpace(c.client("keygen"))
	c.must("sera", "clients", "add", clientKey, "--name", "admin", "--allow", "*")
	c.client("watchers", "add", "c1", pub)
	t0 := time.Now()
	c.must("systemctl", "start", "sera")
	t.Logf("systemctl start sera (Type=notify, READY=1 after the first poll): %s", time.Since(t0).Round(time.Millisecond))
	if got := c.show("ActiveState") + "/" + c.show("SubState"); got != "active/running" {
		t.Fatalf("sera.service: %s\n%s", got, c.must("journalctl", "-u", "sera", "--no-pager"))
	}
	if st := c.show("StatusText"); !strings.HasPrefix(st, "serving; last poll ") {
		t.Errorf("StatusText %q", st)
	}
	// systemd took every hardening option.
	for prop, want := range map[string]string{"NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectKernelTunables": "yes",
		"ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes",
		"RestrictRealtime": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX", "WatchdogUSec": "1min 30s", "Type": "notify"} {
		if got := c.show(prop); got != want {
			t.Errorf("sera.service %s=%q, want %q", prop, got, want)
		}
	}
	if out, err := c.exec("systemd-analyze", "security", "--no-pager", "sera.service"); err == nil {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		t.Logf("systemd-analyze security: %s", lines[len(lines)-1])
	}

	// Account, key, group, sudo and firewall work through the hardened
	// service. ufw is enabled in the container's own network namespace.
	c.must("ufw", "allow", "22/tcp")
	c.must("ufw", "--force", "enable")
	_, alicePub := sshKeyPair(t)
	_, otherPub := sshKeyPair(t)
	steps := [][]string{
		{"ping"},
		{"user", "add", "alice", "--key", alicePub, "--shell", "/bin/bash"},
		{"key", "add", "alice", otherPub},
		{"key", "remove", "alice", otherPub},
		{"group", "add", "ops"},
		{"group", "members", "add", "ops", "alice"},
		{"sudo", "grant", "ops", "--nopasswd"},
		{"user", "lock", "alice"},
		{"user", "unlock", "alice"},
		{"allow", "192.0.2.7", "--port", "443", "--for", "10m"},
	}
	for _, s := range steps {
		c.client(append(s, "--to", "c1")...)
	}
	if got := c.must("id", "-nG", "alice"); !strings.Contains(got, "ops") {
		t.Errorf("alice's groups: %q", got)
	}
	if got := c.must("stat", "-c", "%a %U", "/etc/sudoers.d/sera-ops", "/home/alice/.ssh/authorized_keys"); got != "440 root\n600 alice\n" {
		t.Errorf("modes: %q", got)
	}
	if got := c.must("cat", "/home/alice/.ssh/authorized_keys"); !strings.Contains(got, alicePub) || strings.Contains(got, otherPub) {
		t.Errorf("authorized_keys:\n%s", got)
	}
	if got := c.must("sudo", "-l", "-U", "alice"); !strings.Contains(got, "NOPASSWD: ALL") {
		t.Errorf("sudo -l -U alice:\n%s", got)
	}
	if got := c.must("ufw", "status"); !strings.Contains(got, "192.0.2.7") {
		t.Errorf("ufw status:\n%s", got)
	}
	c.client("disallow", "192.0.2.7", "--to", "c1")
	c.client("sudo", "revoke", "ops", "--to", "c1")
	c.client("user", "del", "alice", "--to", "c1")
	if got := c.must("sh", "-c", "ufw status | grep -c 192.0.2.7; ls /etc/sudoers.d; getent passwd alice; ls /var/lib/sera/archive | grep -c '^alice-'"); got != "0\nREADME\n1\n" {
		t.Errorf("after disallow, revoke, del: %q", got)
	}

	// Every request is in journald, with its fields, under the unit.
	entries := c.must("journalctl", "-u", "sera", "-o", "json", "--no-pager", "MESSAGE_ID=14ac04408b7a4036a34422e9c39b9ce5")
	// Two a request: "running", written before the command runs, and
	// "accepted" with its exit status.
	if n, r := strings.Count(entries, "\n"), strings.Count(entries, `"SERA_DECISION":"running"`); n != 2*(len(steps)+3) || r != len(steps)+3 {
		t.Errorf("%d audit entries in the journal (%d running), want %d:\n%s", n, r, 2*(len(steps)+3), entries)
	}
	if !strings.Contains(entries, `"SERA_ARGV":"[\"user\",\"add\",\"--\",\"alice\"`) && !strings.Contains(entries, `"SERA_ARGV":"[\"user\",\"add\"`) {
		t.Errorf("journal entries lack user add:\n%s", entries)
	}
	for _, field := range []string{`"SERA_CLIENT_NAME":"admin"`, `"SERA_DECISION":"accepted"`, `"SERA_EXIT":"0"`, `"SERA_REQUEST_ID":"`, `"_SYSTEMD_UNIT":"sera.service"`} {
		if !strings.Contains(entries, field) {
			t.Errorf("journal entries lack %s", field)
		}
	}
	if got := c.must("sera", "audit"); strings.Count(got, " accepted ") != len(steps)+3 {
		t.Errorf("sera audit:\n%s", got)
	}
	if st := c.show("StatusText"); !strings.Contains(st, fmt.Sprintf("%d requests: %d accepted, 0 rejected", len(steps)+3, len(steps)+3)) {
		t.Errorf("StatusText %q", st)
	}

	// The steps above can tell: one option more, ProtectSystem=strict,
	// and user add fails.
	dropIn := func(conf string) {
		t.Helper()
		c.must("mkdir", "-p", "/run/systemd/system/sera.service.d")
		c.must("sh", "-c", "printf '[Service]\\n"+conf+"' > /run/systemd/system/sera.service.d/test.conf")
		c.must("systemctl", "daemon-reload")
		c.must("systemctl", "restart", "sera")
	}
	dropIn("ProtectSystem=strict\\n")
	if out, err := c.exec("env", "SERA_HOME=/root/client", "SERA_STATE=/root/client-state", "SERA_SPOOL=/var/lib/sera/spool",
		"sera", "user", "add", "bob", "--to", "c1"); err == nil {
		t.Errorf("user add succeeded under ProtectSystem=strict:\n%s", out)
	}

	// A stuck watcher is killed by the watchdog and restarted. Faster
	// timings for the test in a drop-in; the poll loop keeps up (it
	// polls every WatchdogSec/3).
	dropIn("WatchdogSec=4s\\nTimeoutAbortSec=2s\\nRestartSec=1s\\n")
	pid := c.watchdogOutlived(4 * time.Second)
	c.must("kill", "-STOP", pid)
	// Polling systemd's record of the unit: it tells no one of a restart.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if c.show("NRestarts") == "1" && c.show("ActiveState") == "active" && c.show("MainPID") != pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stopped watcher was not restarted:\n%s", c.must("journalctl", "-u", "sera", "--no-pager", "-n", "30"))
		}
	}
	if got := c.must("journalctl", "-u", "sera", "--no-pager"); !strings.Contains(got, "Watchdog timeout") {
		t.Errorf("journal does not show the watchdog timeout:\n%s", got)
	}
	c.must("rm", "-r", "/run/systemd/system/sera.service.d")
	c.must("systemctl", "daemon-reload")

	// Upgrade: postinst restarts the service with the new binary.
	pid = c.show("MainPID")
	c.must("apt-get", "install", "-y", "--no-install-recommends", "/mnt/sera/"+filepath.Base(debs[1]))
	if got := c.show("ActiveState"); got != "active" || c.show("MainPID") == pid {
		t.Errorf("after upgrade: %s, MainPID %s (was %s)", got, c.show("MainPID"), pid)
	}
	if got := c.client("ping", "--to", "c1"); !strings.Contains(got, "v1.0.0") {
		t.Errorf("ping after upgrade: %s", got)
	}
	if got := c.must("sera", "config", "get", "SERA_NAME"); got != "c1\n" {
		t.Errorf("SERA_NAME after upgrade: %q", got)
	}
	// Stopping: STOPPING=1, then a clean exit (not a failure).
	journal := c.must("journalctl", "-u", "sera", "--no-pager")
	if strings.Contains(journal, "Failed with result") && !strings.Contains(journal, "Failed with result 'watchdog'") {
		t.Errorf("the service failed:\n%s", journal)
	}

	// Remove stops the service and keeps /etc/sera; purge removes all.
	c.must("apt-get", "remove", "-y", "sera")
	if got := c.show("ActiveState"); got != "inactive" {
		t.Errorf("after dpkg -r, sera.service is %s", got)
	}
	c.must("test", "-e", "/etc/sera/key")
	c.must("apt-get", "purge", "-y", "sera")
	if got, _ := c.exec("sh", "-c", "ls -d /etc/sera /var/lib/sera /etc/systemd/system/multi-user.target.wants/sera.service 2>&1"); strings.Count(got, "No such file") != 3 {
		t.Errorf("after purge:\n%s", got)
	}

	// Without the package: sera install service, with the real systemctl.
	c.must("install", "-m", "0755", "/mnt/sera/sera", "/usr/local/bin/sera")
	c.must("sera", "keygen")
	if got := c.must("sera", "install", "service", "--dry-run"); !strings.Contains(got, "would: systemctl start sera.service") || c.show("LoadState") != "not-found" {
		t.Errorf("install service --dry-run:\n%s", got)
	}
	got := c.must("sera", "install", "service")
	for _, want := range []string{"done: write /etc/systemd/system/sera.service (ExecStart=/usr/local/bin/sera watch)",
		"done: systemctl daemon-reload", "done: systemctl enable sera.service", "done: systemctl start sera.service"} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("install service lacks %q:\n%s", want, got)
		}
	}
	if st := c.show("ActiveState") + " " + c.show("UnitFileState") + " " + c.show("StatusText"); !strings.HasPrefix(st, "active enabled serving;") {
		t.Errorf("after install service: %s", st)
	}
	if got := c.must("sera", "install", "service"); got != "note: sera.service is installed, enabled and running\nnothing to do\n" {
		t.Errorf("second install service:\n%s", got)
	}
	c.must("sera", "uninstall", "service")
	if st := c.show("LoadState"); st != "not-found" {
		t.Errorf("after uninstall service: %s", st)
	}
	c.must("test", "-e", "/etc/sera/key")
}

// sshKeyPair makes an Ed25519 key for a login; it returns the private key
// and the public key line.
func sshKeyPair(t *testing.T) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return priv, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}
