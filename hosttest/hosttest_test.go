package hosttest

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHosts drives two hosts the way sera's tests will: users, keys, SSH
// logins, ufw, and checks that none of it reaches this machine. The steps
// build on each other, so they run in order in one test.
func TestHosts(t *testing.T) {
	if _, err := user("alice"); err == nil {
		t.Fatal("this machine already has a user alice; the test checks it never gets one")
	}
	machineForward := readTrim(t, "/proc/sys/net/ipv4/ip_forward")
	machineSwappiness := readTrim(t, "/proc/sys/vm/swappiness")

	n := NewNet(t)
	h1 := n.Start(t, "h1")
	h2 := n.Start(t, "h2")
	rulesBefore := machineRules(t, h2)

	t.Run("hostname", func(t *testing.T) {
		for _, h := range []*Host{h1, h2} {
			if got := strings.TrimSpace(h.MustExec(t, "hostname")); got != h.Name {
				t.Errorf("hostname in %s = %q", h.Name, got)
			}
		}
	})

	t.Run("hosts file names every host", func(t *testing.T) {
		got := strings.Fields(h1.MustExec(t, "getent", "hosts", "h2"))
		if len(got) == 0 || got[0] != h2.Addr {
			t.Errorf("getent hosts h2 in h1 = %q, want %s", got, h2.Addr)
		}
		if got := strings.Fields(h2.MustExec(t, "getent", "hosts", "gateway")); got[0] != n.Gateway {
			t.Errorf("getent hosts gateway in h2 = %q, want %s", got, n.Gateway)
		}
	})

	t.Run("own SSH host keys", func(t *testing.T) {
		k1, err := h1.ReadFile("/etc/ssh/ssh_host_ed25519_key.pub")
		if err != nil {
			t.Fatal(err)
		}
		k2, err := h2.ReadFile("/etc/ssh/ssh_host_ed25519_key.pub")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(k1, k2) {
			t.Errorf("h1 and h2 share a host key: %s", k1)
		}
	})

	t.Run("reachable from the machine", func(t *testing.T) {
		if err := dial(h1.Addr, openWait); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("proc sys read-only except net", func(t *testing.T) {
		if out, err := h1.Exec(t.Context(), "sysctl", "-w", "vm.swappiness="+machineSwappiness); err == nil {
			t.Errorf("a host could write vm.swappiness: %s", out)
		}
		h1.MustExec(t, "sysctl", "-w", "net.ipv4.ip_forward=1")
		if got := readTrim(t, "/proc/sys/net/ipv4/ip_forward"); got != machineForward {
			t.Errorf("the machine's ip_forward changed from %s to %s", machineForward, got)
		}
	})

	t.Run("useradd stays in its host", func(t *testing.T) {
		h1.MustExec(t, "useradd", "-m", "-s", "/bin/bash", "alice")
		h1.MustExec(t, "getent", "passwd", "alice")
		if _, _, code, err := h2.Run(t.Context(), "getent", "passwd", "alice"); err != nil || code != 2 {
			t.Errorf("getent passwd alice in h2: exit %d, %v; want exit 2", code, err)
		}
		if u, err := user("alice"); err == nil {
			t.Errorf("this machine got a user alice: %s", u)
		}
		if _, err := os.Stat("/home/alice"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("this machine got /home/alice: %v", err)
		}
		if passwd, err := os.ReadFile(filepath.Join(Root(t), "etc/passwd")); err != nil || bytes.Contains(passwd, []byte("alice")) {
			t.Errorf("the shared Debian root changed: %v", err)
		}
	})

	key := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	loginAs := func(t *testing.T, want string) {
		t.Helper()
		out, err := h1.SSH(t, "alice", key, "id", "-un")
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Fatalf("ssh alice@h1 id -un = %q, %v; want %q", out, err, want)
		}
	}
	refused := func(t *testing.T) {
		t.Helper()
		out, err := h1.SSH(t, "alice", key, "id", "-un")
		if err == nil || strings.Contains(string(out), "alice") {
			t.Fatalf("ssh alice@h1 was let in: %q, %v", out, err)
		}
	}

	t.Run("key login", func(t *testing.T) {
		h1.MustExec(t, "install", "-d", "-m", "700", "-o", "alice", "-g", "alice", "/home/alice/.ssh")
		if err := h1.WriteFile("/home/alice/.ssh/authorized_keys", pub, 0o600); err != nil {
			t.Fatal(err)
		}
		h1.MustExec(t, "chown", "alice:alice", "/home/alice/.ssh/authorized_keys")
		loginAs(t, "alice")
	})

	t.Run("known_hosts and login from another host", func(t *testing.T) {
		hostKey, err := h1.ReadFile("/etc/ssh/ssh_host_ed25519_key.pub")
		if err != nil {
			t.Fatal(err)
		}
		kh := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(kh, []byte(h1.Addr+" "+string(hostKey)), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := h1.SSHWith(t, SSHOptions{KnownHosts: kh}, "alice", key, "true"); err != nil {
			t.Fatalf("login with h1's key in known_hosts: %v: %s", err, out)
		}
		other, err := h2.ReadFile("/etc/ssh/ssh_host_ed25519_key.pub")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kh, []byte(h1.Addr+" "+string(other)), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := h1.SSHWith(t, SSHOptions{KnownHosts: kh}, "alice", key, "true"); err == nil {
			t.Fatalf("login despite a wrong host key in known_hosts: %s", out)
		}

		priv, err := os.ReadFile(key)
		if err != nil {
			t.Fatal(err)
		}
		if err := h2.WriteFile("/root/alice_key", priv, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := h1.SSHWith(t, SSHOptions{From: h2}, "alice", "/root/alice_key", "id", "-un")
		if err != nil || strings.TrimSpace(string(out)) != "alice" {
			t.Fatalf("ssh from h2 to alice@h1 = %q, %v", out, err)
		}
	})

	t.Run("ufw", func(t *testing.T) {
		h1.MustExec(t, "ufw", "default", "deny", "incoming")
		h1.MustExec(t, "ufw", "--force", "enable")
		if err := dial(h1.Addr, closedWait); err == nil {
			t.Fatal("h1:22 still accepts connections behind ufw")
		}
		h1.MustExec(t, "ufw", "allow", "from", n.Gateway, "to", "any", "port", "22", "proto", "tcp")
		loginAs(t, "alice")
		if rulesAfter := machineRules(t, h2); rulesAfter != rulesBefore {
			t.Errorf("this machine's firewall changed:\nbefore:\n%s\nafter:\n%s", rulesBefore, rulesAfter)
		}
		// The listing would see rules: inside h1 it shows ufw's.
		if rules := h1.MustExec(t, "iptables-nft-save"); !strings.Contains(rules, "ufw-user-input") {
			t.Errorf("h1's own rules show no ufw chains:\n%s", rules)
		}
	})

	t.Run("expired account refused", func(t *testing.T) {
		h1.MustExec(t, "usermod", "-e", "1970-01-02", "alice")
		refused(t)
		h1.MustExec(t, "usermod", "-e", "", "alice")
		loginAs(t, "alice")
	})

	t.Run("install and background process", func(t *testing.T) {
		script := filepath.Join(t.TempDir(), "hello")
		if err := os.WriteFile(script, []byte("#!/bin/sh\ntrap 'echo bye; exit 3' TERM\necho hello from $(hostname)\nwhile :; do sleep 0.1; done\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		h2.Install(t, script, "/usr/local/bin/hello")
		p := h2.Start(t, "hello")
		// The trap is set before the greeting: after it, SIGTERM says bye.
		p.WaitOutput(t, regexp.MustCompile(`hello from h2\n`))
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		err := p.Wait()
		if ee, ok := errors.AsType[*exec.ExitError](err); !ok || ee.ExitCode() != 3 || !bytes.Contains(p.Output(), []byte("bye")) {
			t.Fatalf("after SIGTERM: %v, output %q; want exit 3 and bye", err, p.Output())
		}
	})

	t.Run("files never leave the host", func(t *testing.T) {
		h1.MustExec(t, "ln", "-s", "/etc/hostname", "/tmp/absolute")
		h1.MustExec(t, "ln", "-s", "../etc/hostname", "/tmp/relative")
		if data, err := h1.ReadFile("/tmp/relative"); err != nil || string(data) != "h1\n" {
			t.Errorf("ReadFile through a relative link = %q, %v; want h1's hostname", data, err)
		}
		// Followed from this machine, the absolute link would name this
		// machine's /etc/hostname: refused.
		if data, err := h1.ReadFile("/tmp/absolute"); err == nil {
			t.Errorf("ReadFile followed an absolute link: %q", data)
		}
		if err := h1.WriteFile("/tmp/absolute", []byte("x\n"), 0o644); err == nil {
			t.Error("WriteFile followed an absolute link")
		}
		if err := h1.WriteFile("etc/x", nil, 0o644); err == nil {
			t.Error("WriteFile took a relative path")
		}
	})

	t.Run("stop", func(t *testing.T) {
		h2.Stop()
		h2.Stop()
		if _, err := h2.Exec(t.Context(), "true"); err == nil {
			t.Fatal("a stopped host still runs commands")
		}
		if err := h2.WriteFile("/tmp/x", nil, 0o644); err == nil {
			t.Fatal("a stopped host still takes files")
		}
		// h1 lives on.
		h1.MustExec(t, "true")
	})
}

// TestNetsDoNotCollide: two networks at once (two test processes, or
// parallel tests) get their own bridge and subnet.
func TestNetsDoNotCollide(t *testing.T) {
	a, b := NewNet(t), NewNet(t)
	if a.Bridge == b.Bridge || a.Gateway == b.Gateway {
		t.Fatalf("two networks share %s / %s", a.Bridge, a.Gateway)
	}
}

func TestRootKeyStable(t *testing.T) {
	k := rootKey()
	saved := rootPackages
	t.Cleanup(func() { rootPackages = saved })
	rootPackages = append([]string{"zzz"}, saved...)
	if rootKey() == k {
		t.Error("adding a package does not change the cache key")
	}
	rootPackages = append(saved[1:len(saved):len(saved)], saved[0])
	if rootKey() != k {
		t.Error("the order of the package list changes the cache key")
	}
}

// machineRules lists this machine's own firewall: nft and iptables-nft
// rules read with a host's tools (this machine may have none) but in this
// machine's network namespace, plus the legacy iptables tables loaded.
func machineRules(t *testing.T, via *Host) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range [][]string{
		{"nft", "list", "ruleset"},
		{"iptables-nft-save"},
		{"ip6tables-nft-save"},
	} {
		// Mount namespace and root of the host, nothing else: the tools
		// run in this machine's network namespace.
		args := append([]string{"-t", strconv.Itoa(via.pid), "-m", "-r", "-w", "--"}, tool...)
		cmd := exec.Command("nsenter", args...)
		cmd.Env = sandboxEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q on this machine: %v: %s", tool, err, out)
		}
		b.WriteString("## " + strings.Join(tool, " ") + "\n")
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(line, "#") { // timestamps
				b.WriteString(line + "\n")
			}
		}
	}
	for _, f := range []string{"/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"} {
		data, _ := os.ReadFile(f)
		b.WriteString("## " + f + "\n" + string(data))
	}
	return b.String()
}

// user looks a user up in this machine's own passwd.
func user(name string) (string, error) {
	out, err := exec.Command("getent", "passwd", name).Output()
	return string(out), err
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// A dial that must connect gets openWait, a guard; one that must not
// (ufw drops the SYN, so only the timeout ends it) gets closedWait: a
// slow connection then makes the check pass, never fail.
const (
	openWait   = 30 * time.Second
	closedWait = time.Second
)

// dial connects to addr:22 from this machine's namespace.
func dial(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "22"), timeout)
	if err == nil {
		c.Close()
	}
	return err
}
