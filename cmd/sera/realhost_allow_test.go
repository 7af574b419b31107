//go:build linux

package main

import (
	"context"
	"encoding/json"
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
	"github.com/sera-dev/sera/transport"
)

// A connection that must succeed gets openWait, a guard; one that must
// not (ufw drops the SYN, so only the timeout ends it) gets closedWait: a
// slow connection then makes such a check pass, never fail.
const (
	openWait   = 30 * time.Second
	closedWait = time.Second
)

// reachable reports whether a TCP connection to addr succeeds within
// timeout from this machine's namespace: the gateway's address on the
// hosts' network.
func reachable(addr string, timeout time.Duration) bool {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// dialableFrom reports whether host from can open a TCP connection to
// addr:port (bash's /dev/tcp; the Debian root has no nc). It is used only
// where the answer must be no, so its timeout is short (closedWait).
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

// firewallState is what a refused or repeated command must leave as it
// was: ufw's rules and sera's record of its openings.
func firewallState(t *testing.T, h *hosttest.Host) string {
	t.Helper()
	return h.MustExec(t, "sh", "-c", "ufw status verbose; ufw show added; cat /var/lib/sera/allow.json 2>/dev/null; true")
}

var (
	ruleIDRE   = regexp.MustCompile(`comment 'sera ([0-9a-f]{16}) until `)
	recordIDRE = regexp.MustCompile(`record opening ([0-9a-f]{16}) `)
)

// openingID returns the ID of the opening a successful allow made.
func openingID(t *testing.T, out string, re *regexp.Regexp) string {
	t.Helper()
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no opening ID (%s) in:\n%s", re, out)
	}
	return m[1]
}

// closedLine matches the watcher's log line saying its housekeeping
// closed opening id.
func closedLine(id string) *regexp.Regexp {
	return regexp.MustCompile(`firewall: opening ` + id + ` \([^)]*\) expired at [^"\n]*`)
}

// openingExpiry reads when opening id expires from the host's record.
func openingExpiry(t *testing.T, h *hosttest.Host, id string) time.Time {
	t.Helper()
	b, err := h.ReadFile("/var/lib/sera/allow.json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Openings []struct {
			ID      string    `json:"id"`
			Expires time.Time `json:"expires"`
		} `json:"openings"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("allow.json: %v\n%s", err, b)
	}
	for _, o := range st.Openings {
		if o.ID == id {
			return o.Expires
		}
	}
	t.Fatalf("no opening %s in allow.json:\n%s", id, b)
	return time.Time{}
}

// restartWatcher stops a host's watcher with SIGTERM, calls between while
// it is stopped, and starts it again with the same command line. The
// stopped watcher's last long poll is ended on the queue server (endPolls),
// so a request may be sent at once.
func (f *fleet) restartWatcher(name string, between func()) {
	f.t.Helper()
	p := f.watchers[name]
	if err := p.Signal(syscall.SIGTERM); err != nil {
		f.t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		f.t.Fatalf("watcher on %s: %v\n%s", name, err, p.Output())
	}
	endPolls(f.t, f.sqs, transport.WatcherQueue(f.prefix, name))
	between()
	argv := p.Cmd.Args[slices.Index(p.Cmd.Args, "--")+1:]
	f.watchers[name] = f.hosts[name].Start(f.t, argv...)
}

// TestAllowOnRealHosts is the proof of temporary openings: real ufw in
// real hosts, checked by real TCP connections and SSH logins from this
// machine (the client's namespace) and from another host.
func TestAllowOnRealHosts(t *testing.T) {
	t.Parallel()
	f := newFleet(t, "h1", "h2")
	h1, h2 := f.hosts["h1"], f.hosts["h2"]
	gw := f.gateway
	ssh22 := h1.Addr + ":22"

	// ufw inactive: allow says so and changes nothing; sera never enables it.
	before := firewallState(t, h1)
	if errOut := f.failSera("allow", gw, "--to", "h1"); !strings.Contains(errOut, "ufw is inactive on this host (sera never enables ufw") {
		t.Errorf("allow with ufw inactive: %s", errOut)
	}
	if after := firewallState(t, h1); after != before {
		t.Errorf("allow with ufw inactive changed the firewall:\n%s\n%s", before, after)
	}

	// ufw is enabled with the watcher stopped: enabling it drops the
	// replies of connections open at that moment (conntrack takes them
	// for new ones), which would stall the watcher's long poll.
	f.restartWatcher("h1", func() {
		h1.MustExec(t, "ufw", "default", "deny", "incoming")
		h1.MustExec(t, "ufw", "--force", "enable")
	})
	if reachable(ssh22, closedWait) || dialableFrom(t, h2, h1.Addr) {
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
	for _, c := range []struct {
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
		args := append(append([]string{"allow"}, c.args...), "--to", "h1")
		if errOut := f.failSera(args...); !strings.Contains(errOut, c.want) {
			t.Errorf("sera %s: stderr %q, want %q", strings.Join(args, " "), errOut, c.want)
		}
	}
	if after := firewallState(t, h1); after != before {
		t.Errorf("bad inputs changed the firewall:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// The openings checked while open last minutes, so that no check can
	// outlive them on a slow machine; expiry is proved with short ones
	// below.
	out := f.mustSera("allow", gw, "--port", "2222", "--for", "10m", "--to", "h1")
	if !strings.Contains(out, "that sera did not add") {
		t.Errorf("allow over a hand-made rule:\n%s", out)
	}

	// 1. --dry-run shows the exact command and changes nothing.
	before = firewallState(t, h1)
	out = f.mustSera("allow", gw, "--for", "10m", "--dry-run", "--to", "h1")
	if !regexp.MustCompile(`(?m)^would: ufw allow from ` + regexp.QuoteMeta(gw) + ` to any port 22 proto tcp comment 'sera [0-9a-f]{16} until \S+'$`).MatchString(out) {
		t.Errorf("dry run:\n%s", out)
	}
	if after := firewallState(t, h1); after != before || reachable(ssh22, closedWait) {
		t.Errorf("dry run changed the firewall:\n%s", after)
	}

	// 1. Open to this machine: the real ssh client logs in; h2 is still
	// refused.
	out = f.mustSera("allow", gw, "--for", "10m", "--to", "h1")
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
	// Again, for longer: extended, not duplicated.
	out = f.mustSera("allow", gw, "--for", "20m", "--to", "h1")
	if !strings.Contains(out, "extends opening") {
		t.Errorf("allow again:\n%s", out)
	}
	if n := strings.Count(h1.MustExec(t, "ufw", "show", "added"), "from "+gw+" to any port 22 proto tcp"); n != 1 {
		t.Errorf("%d rules for %s port 22, want 1", n, gw)
	}
	out = f.mustSera("allow", "--list", "--to", "h1")
	if !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(gw)+` +22/tcp +\S+ +\S+ +sera +admin `).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(gw)+` +2222/tcp +.* not-sera `).MatchString(out) {
		t.Errorf("allow --list:\n%s", out)
	}

	// After the expiry the watcher's housekeeping (every 10 s) closes
	// an opening: short ones, in place of the above.
	f.mustSera("disallow", gw, "--to", "h1")
	id22 := openingID(t, f.mustSera("allow", gw, "--for", "2s", "--to", "h1"), ruleIDRE)
	id2222 := openingID(t, f.mustSera("allow", gw, "--port", "2222", "--for", "2s", "--to", "h1"), recordIDRE)
	// The watcher reads the real clock: only real time passing makes them
	// expire. Its log says when it has closed each.
	for _, id := range []string{id22, id2222} {
		t.Logf("watcher: %s", f.watchers["h1"].WaitOutput(t, closedLine(id))[0])
	}
	// No TCP connection at all; 3. sera's rule went, the hand-made one
	// stays.
	if reachable(ssh22, closedWait) {
		t.Error("port 22 of h1 still open after the expiry")
	}
	added := h1.MustExec(t, "ufw", "show", "added")
	if strings.Contains(added, "port 22 proto tcp") || !strings.Contains(added, "ufw allow from "+gw+" to any port 2222 proto tcp\n") {
		t.Errorf("rules after the expiry:\n%s", added)
	}
	if out := f.mustSera("allow", "--list", "--to", "h1"); out != "no open rules\n" {
		t.Errorf("allow --list after the expiry: %q", out)
	}

	// 2. An opening that expires while the watcher is stopped (made
	// meanwhile with --local, so that no pass of the watcher can come
	// first) is closed by the first pass of the restarted watcher.
	var id string
	f.restartWatcher("h1", func() {
		id = openingID(t, h1.MustExec(t, "sera", "allow", gw, "--for", "1s", "--local"), ruleIDRE)
		expires := openingExpiry(t, h1, id)
		if !reachable(ssh22, openWait) {
			t.Fatal("port 22 not open after allow --local")
		}
		// The watcher reads the real clock: only real time passing makes
		// the opening expire.
		time.Sleep(time.Until(expires))
		if !reachable(ssh22, openWait) {
			t.Fatal("the opening closed with the watcher stopped")
		}
	})
	// That pass runs before the watcher's first poll: before it takes
	// this request.
	if out := f.mustSera("allow", "--list", "--to", "h1"); out != "no open rules\n" {
		t.Errorf("allow --list after the restart: %q", out)
	}
	t.Logf("watcher: %s", f.watchers["h1"].WaitOutput(t, closedLine(id))[0])
	if reachable(ssh22, closedWait) {
		t.Error("port 22 of h1 still open after the watcher's restart")
	}

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
	out, errOut, code := f.sera("allow", "--for", "1h", "--to", "h1")
	if code != 0 || !strings.Contains(errOut, "using your address "+gw+" (from "+srv.URL+")") || !reachable(ssh22, openWait) {
		t.Fatalf("allow without an address: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = f.sera("disallow", "--to", "h1")
	if code != 0 || !strings.Contains(out, "done: ufw delete allow from "+gw+" to any port 22 proto tcp comment 'sera ") ||
		!strings.Contains(errOut, "using your address "+gw) {
		t.Errorf("disallow: exit %d\n%s%s", code, out, errOut)
	}
	if reachable(ssh22, closedWait) {
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
