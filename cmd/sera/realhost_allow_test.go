//go:build linux

package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sera-dev/sera/hosttest"
)

// dialable reports whether a TCP connection to addr succeeds from this
// machine's namespace: the gateway's address on the hosts' network.
func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// dialableFrom reports whether host from can open a TCP connection to
// addr:port (bash's /dev/tcp; the Debian root has no nc).
func dialableFrom(t *testing.T, from *hosttest.Host, addr string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, code, err := from.Run(ctx, "timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/"+addr+"/22")
	if err != nil {
		t.Fatal(err)
	}
	return code == 0
}

// waitClosed polls until port 22 of h is closed to this machine and
// returns how long that took; it fails the test after limit.
func waitClosed(t *testing.T, h *hosttest.Host, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for dialable(h.Addr + ":22") {
		if time.Since(start) > limit {
			t.Fatalf("port 22 of %s still open %s later:\n%s", h.Name, limit, firewallState(t, h))
		}
		time.Sleep(250 * time.Millisecond)
	}
	return time.Since(start)
}

// firewallState is what a refused or repeated command must leave as it
// was: ufw's rules and sera's record of its openings.
func firewallState(t *testing.T, h *hosttest.Host) string {
	t.Helper()
	return h.MustExec(t, "sh", "-c", "ufw status verbose; ufw show added; cat /var/lib/sera/allow.json 2>/dev/null; true")
}

// restartWatcher stops a host's watcher with SIGTERM, calls between while
// it is stopped, and starts it again with the same command line. It
// returns when the stopped watcher's last long poll (10 s: the watcher's
// housekeeping period) will have lapsed on the queue server: a request
// sent before would be handed to that dead poll and stay invisible for
// the visibility timeout (30 s). Send none before that time.
func (f *fleet) restartWatcher(name string, between func()) (ready time.Time) {
	f.t.Helper()
	p := f.watchers[name]
	if err := p.Signal(syscall.SIGTERM); err != nil {
		f.t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		f.t.Fatalf("watcher on %s: %v\n%s", name, err, p.Output())
	}
	stopped := time.Now()
	between()
	argv := p.Cmd.Args[slices.Index(p.Cmd.Args, "--")+1:]
	f.watchers[name] = f.hosts[name].Start(f.t, argv...)
	return stopped.Add(10*time.Second + 500*time.Millisecond)
}

// TestAllowOnRealHosts is the proof of temporary openings: real ufw in
// real hosts, checked by real TCP connections and SSH logins from this
// machine (the client's namespace) and from another host.
func TestAllowOnRealHosts(t *testing.T) {
	f := newFleet(t, "h1", "h2")
	h1, h2 := f.hosts["h1"], f.hosts["h2"]
	gw := f.gateway
	ssh22 := h1.Addr + ":22"

	// ufw inactive: allow says so and changes nothing; sera never enables it.
	before := firewallState(t, h1)
	if errOut := f.failSera("allow", gw, "--to", "h1"); !strings.Contains(errOut, "ufw is inactive on this host; nothing was changed") {
		t.Errorf("allow with ufw inactive: %s", errOut)
	}
	if after := firewallState(t, h1); after != before {
		t.Errorf("allow with ufw inactive changed the firewall:\n%s\n%s", before, after)
	}

	// ufw is enabled with the watcher stopped: enabling it drops the
	// replies of connections open at that moment (conntrack takes them
	// for new ones), which would stall the watcher's long poll.
	ready := f.restartWatcher("h1", func() {
		h1.MustExec(t, "ufw", "default", "deny", "incoming")
		h1.MustExec(t, "ufw", "--force", "enable")
	})
	// Until h1's watcher is ready: what needs no request to h1.
	if dialable(ssh22) || dialableFrom(t, h2, h1.Addr) {
		t.Fatal("port 22 of h1 is open with ufw denying incoming")
	}
	key, pub := f.sshKey("alice")
	h1.MustExec(t, "useradd", "-m", "-s", "/bin/bash", "alice")
	h1.MustExec(t, "install", "-d", "-m", "700", "-o", "alice", "-g", "alice", "/home/alice/.ssh")
	if err := h1.WriteFile("/home/alice/.ssh/authorized_keys", []byte(pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h1.MustExec(t, "chown", "alice:alice", "/home/alice/.ssh/authorized_keys")
	// ufw missing: a clear error.
	h2.MustExec(t, "mv", "/usr/sbin/ufw", "/usr/sbin/ufw.away")
	if errOut := f.failSera("allow", gw, "--to", "h2"); !strings.Contains(errOut, "ufw is not installed on this host") {
		t.Errorf("allow without ufw: %s", errOut)
	}
	h2.MustExec(t, "mv", "/usr/sbin/ufw.away", "/usr/sbin/ufw")
	// 3, set up: an identical rule made by hand before sera's.
	h1.MustExec(t, "ufw", "allow", "from", gw, "to", "any", "port", "2222", "proto", "tcp")
	// Bad inputs: clear errors, nothing changed (refused by the client,
	// and the last by the watcher).
	before = firewallState(t, h1)
	for i, c := range []struct {
		args []string
		want string
	}{
		{[]string{"0.0.0.0/0"}, "never to every address"},
		{[]string{"::/0"}, "never to every address"},
		{[]string{"any"}, "never to every address"},
		{[]string{"10.0.0.5/24"}, "host bits are set; the network is 10.0.0.0/24"},
		{[]string{"10.0.0.0/8"}, "wider than /16"},
		{[]string{"10.0.0.300"}, "not an IP address"},
		{[]string{gw, "--port", "0"}, "invalid --port 0"},
		{[]string{gw, "--proto", "icmp"}, "invalid --proto"},
		{[]string{gw, "--for", "0s"}, "must be positive"},
		{[]string{gw, "--for", "48h"}, "longer than this watcher's SERA_ALLOW_MAX (24h)"},
	} {
		if i == 9 {
			time.Sleep(time.Until(ready))
		}
		args := append(append([]string{"allow"}, c.args...), "--to", "h1")
		if errOut := f.failSera(args...); !strings.Contains(errOut, c.want) {
			t.Errorf("sera %s: stderr %q, want %q", strings.Join(args, " "), errOut, c.want)
		}
	}
	if after := firewallState(t, h1); after != before {
		t.Errorf("bad inputs changed the firewall:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	out := f.mustSera("allow", gw, "--port", "2222", "--for", "10s", "--to", "h1")
	if !strings.Contains(out, "that sera did not add") {
		t.Errorf("allow over a hand-made rule:\n%s", out)
	}

	// 1. --dry-run shows the exact command and changes nothing.
	before = firewallState(t, h1)
	out = f.mustSera("allow", gw, "--for", "10s", "--dry-run", "--to", "h1")
	if !regexp.MustCompile(`(?m)^would: ufw allow from ` + regexp.QuoteMeta(gw) + ` to any port 22 proto tcp comment 'sera [0-9a-f]{16} until \S+'$`).MatchString(out) {
		t.Errorf("dry run:\n%s", out)
	}
	if after := firewallState(t, h1); after != before || dialable(ssh22) {
		t.Errorf("dry run changed the firewall:\n%s", after)
	}

	// 1. Open to this machine for 10 s: the real ssh client logs in; h2
	// is still refused.
	out = f.mustSera("allow", gw, "--for", "10s", "--to", "h1")
	if !strings.Contains(out, "done: ufw allow from "+gw+" to any port 22 proto tcp comment 'sera ") {
		t.Errorf("allow:\n%s", out)
	}
	mustLogin(t, h1, "alice", key)
	if dialableFrom(t, h2, h1.Addr) {
		t.Error("h2 reaches port 22 of h1, opened only to " + gw)
	}
	if got := h1.MustExec(t, "stat", "-c", "%a %U", "/var/lib/sera/allow.json"); got != "600 root\n" {
		t.Errorf("state file: %q", got)
	}
	// Again: extended, not duplicated.
	extended := time.Now()
	out = f.mustSera("allow", gw, "--for", "10s", "--to", "h1")
	if !strings.Contains(out, "extends opening") {
		t.Errorf("allow again:\n%s", out)
	}
	if n := strings.Count(h1.MustExec(t, "ufw", "show", "added"), "from "+gw+" to any port 22 proto tcp"); n != 1 {
		t.Errorf("%d rules for %s port 22, want 1", n, gw)
	}
	out = f.mustSera("allow", "--list", "--to", "h1")
	if !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(gw)+` +22/tcp +\S+ +\d+s +sera +admin `).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(gw)+` +2222/tcp +.* not-sera `).MatchString(out) {
		t.Errorf("allow --list:\n%s", out)
	}

	// After the expiry the watcher closes it: no TCP connection at all.
	time.Sleep(time.Until(extended.Add(10 * time.Second)))
	took := waitClosed(t, h1, time.Minute)
	t.Logf("closed %s after the expiry", took.Round(100*time.Millisecond))
	// 3. sera's rule went; the hand-made one stays.
	added := h1.MustExec(t, "ufw", "show", "added")
	if strings.Contains(added, "port 22 proto tcp") || !strings.Contains(added, "ufw allow from "+gw+" to any port 2222 proto tcp\n") {
		t.Errorf("rules after the expiry:\n%s", added)
	}
	if out := f.mustSera("allow", "--list", "--to", "h1"); out != "no open rules\n" {
		t.Errorf("allow --list after the expiry: %q", out)
	}

	// 2. The watcher is stopped before the expiry and started after it:
	// its first pass closes the opening.
	opened := time.Now()
	f.mustSera("allow", gw, "--for", "5s", "--to", "h1")
	if !dialable(ssh22) {
		t.Fatal("port 22 not open after allow")
	}
	var restarted time.Time
	ready = f.restartWatcher("h1", func() {
		time.Sleep(time.Until(opened.Add(7 * time.Second)))
		if !dialable(ssh22) {
			t.Fatal("the opening closed with the watcher stopped")
		}
		restarted = time.Now()
	})
	waitClosed(t, h1, time.Minute)
	t.Logf("closed %s after the watcher's restart", time.Since(restarted).Round(100*time.Millisecond))

	// disallow closes early; without an address the client looks its own
	// up at SERA_IP_URL (a TLS server on loopback, trusted by
	// SSL_CERT_FILE) and says which it used.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, gw) }))
	defer srv.Close()
	caFile := filepath.Join(f.dir, "ip-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	env := f.env
	f.env = append(slices.Clip(env), "SERA_IP_URL="+srv.URL, "SSL_CERT_FILE="+caFile)
	defer func() { f.env = env }()
	time.Sleep(time.Until(ready))
	out, errOut, code := f.sera("allow", "--for", "1h", "--to", "h1")
	if code != 0 || !strings.Contains(errOut, "using your address "+gw+" (from "+srv.URL+")") || !dialable(ssh22) {
		t.Fatalf("allow without an address: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = f.sera("disallow", "--to", "h1")
	if code != 0 || !strings.Contains(out, "done: ufw delete allow from "+gw+" to any port 22 proto tcp comment 'sera ") ||
		!strings.Contains(errOut, "using your address "+gw) {
		t.Errorf("disallow: exit %d\n%s%s", code, out, errOut)
	}
	if dialable(ssh22) {
		t.Error("port 22 still open after disallow")
	}
	before = firewallState(t, h1)
	out = f.mustSera("disallow", gw, "--to", "h1")
	if !strings.Contains(out, "no opening from "+gw+" on this host; nothing was changed (ufw has rules sera did not add, left alone: "+gw+" to port 2222/tcp)") {
		t.Errorf("disallow again:\n%s", out)
	}
	if after := firewallState(t, h1); after != before {
		t.Errorf("disallow again changed the firewall:\n%s\n%s", before, after)
	}
}
