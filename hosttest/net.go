package hosttest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockDir holds one lock file per network slot. It must be the same for
// every test process on the machine (unlike the cache, which SERA_TEST_CACHE
// may move), because the bridge names and subnets it guards are.
const lockDir = "/run/lock/sera-hosttest"

// maxSlots bounds the networks alive at once: slot N is bridge serabrN and
// subnet 10.200.N.0/24.
const maxSlots = 255

// Net is an isolated network for hosts: a bridge in this machine's network
// namespace with Gateway as its address and one /24 of 10.200.0.0/16 to
// itself. Every host started on it gets the next free address.
type Net struct {
	// Bridge is the bridge's interface name, serabr<N>.
	Bridge string
	// Gateway is the bridge's address, 10.200.N.1: the address connections
	// from the test process (this machine's namespace) come from, and the
	// name "gateway" in every host's /etc/hosts.
	Gateway string

	slot   int
	unlock func()

	mu     sync.Mutex
	hosts  []*Host // running, in start order
	next   int     // index of the next host
	closed bool
}

// NewNet creates a network, deleted with t.Cleanup. It takes the first free
// slot N (a flock on /run/lock/sera-hosttest/net-N.lock held until cleanup,
// released by the kernel if the test process dies), deletes a bridge of the
// same name left by a dead process, and creates bridge serabrN with
// 10.200.N.1/24. Slots let test processes (go test runs packages in
// parallel) and parallel tests each have a network without sharing a subnet.
func NewNet(t testing.TB) *Net {
	t.Helper()
	requireHost(t, "ip", "nsenter")
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		t.Fatalf("failed to create %s: %v", lockDir, err)
	}
	n := &Net{slot: -1}
	for slot := 0; slot < maxSlots; slot++ {
		unlock, err := lockFile(filepath.Join(lockDir, fmt.Sprintf("net-%d.lock", slot)), false)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		n.slot, n.unlock = slot, unlock
		break
	}
	if n.slot < 0 {
		t.Fatalf("failed to find a free network slot: all %d are taken", maxSlots)
	}
	n.Bridge = fmt.Sprintf("serabr%d", n.slot)
	n.Gateway = fmt.Sprintf("10.200.%d.1", n.slot)
	t.Cleanup(n.close)

	if err := n.deleteLeftovers(); err != nil {
		t.Fatal(err)
	}
	removeDeadOnce.Do(removeDeadHostDirs)
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", n.Gateway + "/24", "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// vethPrefix names the machine-side ends of this slot's veths.
func (n *Net) vethPrefix() string { return fmt.Sprintf("sera%dv", n.slot) }

// deleteLeftovers removes this slot's bridge and veths left by a process
// that died holding the slot. A veth normally goes with its host's network
// namespace; only the bridge is really expected here.
func (n *Net) deleteLeftovers() error {
	out, err := exec.Command("ip", "-j", "link", "show").Output()
	if err != nil {
		return fmt.Errorf("failed to list links: %w", err)
	}
	var links []struct {
		Name string `json:"ifname"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return fmt.Errorf("failed to parse ip -j link: %w", err)
	}
	for _, l := range links {
		if l.Name != n.Bridge && !strings.HasPrefix(l.Name, n.vethPrefix()) {
			continue
		}
		// A veth vanishes by itself, a moment after its host's network
		// namespace: it may be gone by now.
		out, err := exec.Command("ip", "link", "delete", l.Name).CombinedOutput()
		if err != nil && !bytes.Contains(out, []byte("Cannot find device")) {
			return fmt.Errorf("failed to delete %s: %w: %s", l.Name, err, out)
		}
	}
	return nil
}

// close stops the hosts still running and deletes the bridge.
func (n *Net) close() {
	n.mu.Lock()
	n.closed = true
	hosts := n.hosts
	n.mu.Unlock()
	for _, h := range hosts {
		h.Stop()
	}
	if err := n.deleteLeftovers(); err != nil {
		fmt.Fprintf(os.Stderr, "hosttest: %v\n", err)
	}
	n.unlock()
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Start starts a host named name on the network and returns once its sshd
// accepts connections on Addr:22. The host is an overlay of [Root] with its
// own upper layer in a temporary directory, in new network, mount, UTS, IPC
// and PID namespaces; see the package documentation for what is inside.
// Every running host's /etc/hosts lists "gateway" and all hosts of the
// network, and is rewritten when a host starts. The host is stopped and its
// files deleted with t.Cleanup.
func (n *Net) Start(t testing.TB, name string) *Host {
	t.Helper()
	if !hostnameRE.MatchString(name) {
		t.Fatalf("host name %q: want lowercase letters, digits and '-'", name)
	}
	lower := Root(t)

	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		t.Fatalf("network %s is closed", n.Bridge)
	}
	for _, h := range n.hosts {
		if h.Name == name {
			n.mu.Unlock()
			t.Fatalf("host %q already runs on %s", name, n.Bridge)
		}
	}
	idx := n.next
	n.next++
	n.mu.Unlock()
	if idx+2 > 254 {
		t.Fatalf("network %s is full", n.Bridge)
	}

	h := &Host{
		Name: name,
		Addr: fmt.Sprintf("10.200.%d.%d", n.slot, idx+2),
		net:  n,
	}
	if err := h.start(lower, n.Bridge, fmt.Sprintf("%s%d", n.vethPrefix(), idx)); err != nil {
		log := h.logTail()
		h.cleanup(t)
		t.Fatalf("failed to start host %s: %v\nhost log:\n%s", name, err, log)
	}
	t.Cleanup(func() { h.cleanup(t) })

	n.mu.Lock()
	defer n.mu.Unlock()
	n.hosts = append(n.hosts, h)
	if err := n.writeHosts(); err != nil {
		t.Fatal(err)
	}
	return h
}

// writeHosts rewrites /etc/hosts in every running host; n.mu is held.
func (n *Net) writeHosts() error {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\tgateway\n", n.Gateway)
	for _, h := range n.hosts {
		fmt.Fprintf(&b, "%s\t%s\n", h.Addr, h.Name)
	}
	for _, h := range n.hosts {
		if err := h.WriteFile("/etc/hosts", []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// forget drops a stopped host from the network's list.
func (n *Net) forget(h *Host) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, x := range n.hosts {
		if x == h {
			n.hosts = append(n.hosts[:i], n.hosts[i+1:]...)
			return
		}
	}
}

// ip runs ip(8) in this machine's namespaces.
func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("failed to run ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// waitTCP waits until addr accepts a TCP connection: sshd, started by the
// host's init, tells no one when it listens, so the port is polled.
func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("failed to connect to %s within %v: %w", addr, timeout, err)
		}
		// Polling another process's state (sshd's listening socket).
		time.Sleep(50 * time.Millisecond)
	}
}

// requireHost skips the test, or fails it under CI=true (CI runs as root
// and must run these tests), unless this is root with the named tools.
func requireHost(t testing.TB, tools ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root"
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil && why == "" {
			why = fmt.Sprintf("needs %s (run .ci/install-host-deps)", tool)
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("hosttest: %s", why)
	}
	t.Skipf("hosttest: %s", why)
}
