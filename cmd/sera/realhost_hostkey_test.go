//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/hosttest"
)

// TestHostKeysOnRealHosts is the host-key issue's proof: after
// 'known-hosts sync', ssh from h1 to h2 checks h2's host key against the
// system-wide /etc/ssh/ssh_known_hosts (StrictHostKeyChecking=yes, no
// prompt) and succeeds; after h2 re-keys and another sync it succeeds
// again, and h2's old key is gone from every host and from the client.
func TestHostKeysOnRealHosts(t *testing.T) {
	t.Parallel()
	start := time.Now()
	f := newFleet(t, "h1", "h2", "h3")
	h1, h2, h3 := f.hosts["h1"], f.hosts["h2"], f.hosts["h3"]
	t.Logf("fleet of 3 up in %v", time.Since(start).Round(time.Millisecond))
	clientFile := filepath.Join(f.dir, ".ssh", "known_hosts")

	// A user on h2 whose key h1 holds.
	key, pub := f.sshKey("kh")
	h2.MustExec(t, "useradd", "-m", "-s", "/bin/sh", "kh")
	h2.MustExec(t, "install", "-d", "-m", "700", "-o", "kh", "-g", "kh", "/home/kh/.ssh")
	if err := h2.WriteFile("/home/kh/.ssh/authorized_keys", []byte(pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h2.MustExec(t, "chown", "kh:kh", "/home/kh/.ssh/authorized_keys")
	priv, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.WriteFile("/root/kh_key", priv, 0o600); err != nil {
		t.Fatal(err)
	}
	// ssh run inside h1 with no user known_hosts: only the system-wide
	// file can vouch for h2, and an unknown or changed key fails.
	sshFromH1 := func(dest string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := h1.Command(ctx, "ssh", "-F", "/dev/null", "-i", "/root/kh_key", "-l", "kh", "-T",
			"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/dev/null",
			"-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "--", dest, "id", "-un").CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := sshFromH1("h2"); err == nil || !strings.Contains(out, "Host key verification failed") {
		t.Fatalf("before sync, h1 → h2: %q, %v; want a host key failure", out, err)
	}

	// hostkey list reports what ssh-keygen sees.
	list := f.mustSera("hostkey", "list", "--to", "h2")
	t.Logf("hostkey list --to h2:\n%s", list)
	for _, fpLine := range strings.Split(strings.TrimSpace(h2.MustExec(t, "sh", "-c", "for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $f; done")), "\n") {
		if fp := strings.Fields(fpLine)[1]; !strings.Contains(list, fp) {
			t.Errorf("hostkey list lacks %s:\n%s", fp, list)
		}
	}
	if !strings.Contains(list, "names  h2\naddrs  "+h2.Addr+"\n") {
		t.Errorf("hostkey list names:\n%s", list)
	}

	// 1. Sync: h1 → h2 by name, and from this machine. The watchers were
	// added by name only: the address h2 reports of itself is shown and
	// not trusted, so ssh to it still fails.
	t0 := time.Now()
	out, errOut, code := f.sera("known-hosts", "sync")
	t.Logf("first sync in %v:\n%s%s", time.Since(t0).Round(time.Millisecond), out, errOut)
	if code != 0 || !strings.Contains(out, "keys of 3 of 3 hosts; installed on 3 of 3 hosts and in ~/.ssh/known_hosts") {
		t.Errorf("sync: exit %d\n%s", code, out)
	}
	if w := "h2 also reports " + h2.Addr + ": not trusted"; !strings.Contains(errOut, w) {
		t.Errorf("sync's stderr lacks %q:\n%s", w, errOut)
	}
	if got, err := sshFromH1("h2"); err != nil || got != "kh" {
		t.Fatalf("after sync, h1 → h2: %q, %v", got, err)
	}
	if got, err := sshFromH1(h2.Addr); err == nil || !strings.Contains(got, "Host key verification failed") {
		t.Fatalf("after sync, h1 → %s, an address h2 only reported: %q, %v; want a host key failure", h2.Addr, got, err)
	}
	// Accepted, the addresses are the admin's (known_watchers) and
	// trusted everywhere.
	out, errOut, code = f.sera("known-hosts", "sync", "--accept", "h1,h2,h3")
	t.Logf("sync --accept:\n%s%s", out, errOut)
	if w := "h2: accepted " + h2.Addr + ": added to its addrs= in known_watchers"; code != 0 || !strings.Contains(errOut, w) {
		t.Errorf("sync --accept: exit %d, stderr lacks %q:\n%s", code, w, errOut)
	}
	if kw, err := os.ReadFile(filepath.Join(f.dir, "client", "known_watchers")); err != nil || !strings.Contains(string(kw), " addrs="+h2.Addr+"\n") {
		t.Errorf("known_watchers after --accept (%v):\n%s", err, kw)
	}
	for _, dest := range []string{"h2", h2.Addr} {
		if got, err := sshFromH1(dest); err != nil || got != "kh" {
			t.Fatalf("after sync --accept, h1 → %s: %q, %v", dest, got, err)
		}
	}
	if got, err := h2.SSHWith(t, hosttest.SSHOptions{KnownHosts: clientFile}, "kh", key, "id", "-un"); err != nil || strings.TrimSpace(string(got)) != "kh" {
		t.Fatalf("client → h2 with the client's known_hosts: %q, %v", got, err)
	}
	files := func() map[string]string {
		m := map[string]string{}
		for n, h := range f.hosts {
			if n == "h3" && h3 == nil {
				continue
			}
			b, err := h.ReadFile("/etc/ssh/ssh_known_hosts")
			if err != nil {
				t.Fatal(err)
			}
			m[n] = string(b)
		}
		b, err := os.ReadFile(clientFile)
		if err != nil {
			t.Fatal(err)
		}
		m["client"] = string(b)
		return m
	}
	first := files()
	if first["h1"] != first["h2"] || first["h1"] != first["h3"] || first["h1"] != first["client"] {
		t.Errorf("the hosts' files differ:\n%v", first)
	}
	if got := h1.MustExec(t, "stat", "-c", "%a %U", "/etc/ssh/ssh_known_hosts"); got != "644 root\n" {
		t.Errorf("ssh_known_hosts: %q", got)
	}
	if fi, err := os.Stat(clientFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client known_hosts: %v %v", fi.Mode(), err)
	}

	// 2. Again: no change anywhere, files identical.
	out = f.mustSera("known-hosts", "sync")
	if strings.Count(out, "known hosts: no change") != 3 || !strings.Contains(out, "local: ~/.ssh/known_hosts: no change") || strings.Contains(out, "done:") {
		t.Errorf("second sync:\n%s", out)
	}
	if again := files(); !equalMaps(again, first) {
		t.Errorf("second sync changed files")
	}

	// 3. h2 re-keys; h1 → h2 now fails until the next sync.
	oldKeys := strings.Fields(h2.MustExec(t, "sh", "-c", "cut -d' ' -f2 /etc/ssh/ssh_host_*_key.pub"))
	h2.MustExec(t, "sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && pkill -HUP -x sshd")
	deadline := time.Now().Add(2 * time.Minute) // a guard
	for {
		got, err := sshFromH1("h2")
		if err != nil && strings.Contains(got, "HOST IDENTIFICATION HAS CHANGED") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after re-key, h1 → h2 still: %q, %v", got, err)
		}
		// Polling another process (sshd re-executing on SIGHUP): it
		// tells no one when it serves the new keys.
		time.Sleep(100 * time.Millisecond)
	}
	out = f.mustSera("known-hosts", "sync", "--dry-run")
	if strings.Count(out, "would: write /etc/ssh/ssh_known_hosts (0644): h2: replace ssh-ed25519") != 3 || !strings.Contains(out, "dry run: nothing changed") {
		t.Errorf("dry run:\n%s", out)
	}
	if again := files(); !equalMaps(again, first) {
		t.Errorf("dry run changed files")
	}
	t0 = time.Now()
	out = f.mustSera("known-hosts", "sync")
	t.Logf("re-key sync in %v:\n%s", time.Since(t0).Round(time.Millisecond), out)
	if strings.Count(out, "done: write /etc/ssh/ssh_known_hosts (0644): h2: replace ssh-ed25519") != 3 {
		t.Errorf("re-key sync:\n%s", out)
	}
	if got, err := sshFromH1("h2"); err != nil || got != "kh" {
		t.Fatalf("after re-key sync, h1 → h2: %q, %v", got, err)
	}
	rekeyed := files()
	newKeys := strings.Fields(h2.MustExec(t, "sh", "-c", "cut -d' ' -f2 /etc/ssh/ssh_host_*_key.pub"))
	for n, s := range rekeyed {
		for _, k := range oldKeys {
			if strings.Contains(s, k) {
				t.Errorf("%s still trusts h2's old key %.20s…", n, k)
			}
		}
		for _, k := range newKeys {
			if !strings.Contains(s, "h2,"+h2.Addr+" ") || !strings.Contains(s, k) {
				t.Errorf("%s lacks h2's new key %.20s…", n, k)
			}
		}
	}

	// 4. A host that does not answer is reported, and keeps its entries
	// everywhere. The timeout is each host's, h1's and h2's too, which
	// must answer within it: generous, though h3 takes all of it.
	h3.Stop()
	h3 = nil
	out, errOut, code = f.sera("known-hosts", "sync", "--timeout", "20s")
	t.Logf("sync with h3 down:\n%s%s", out, errOut)
	if code != 1 || !strings.Contains(errOut, "h3: no keys collected (no reply within 20s)") || !strings.Contains(errOut, "failed: h3") {
		t.Errorf("sync with h3 down: exit %d\n%s", code, errOut)
	}
	after := files()
	for _, n := range []string{"h1", "h2", "client"} {
		if after[n] != rekeyed[n] || !strings.Contains(after[n], "\nh3,") {
			t.Errorf("%s's entries changed with h3 down:\n%s", n, after[n])
		}
	}

	// 5. Bad input: refused before anything is sent.
	errOut = f.failSera("hostkey", "trust", "--to", "h1", "--", "*.example", pub)
	if !strings.Contains(errOut, "wildcards") {
		t.Errorf("bad name: %s", errOut)
	}
	if b, _ := h1.ReadFile("/etc/ssh/ssh_known_hosts"); string(b) != rekeyed["h1"] {
		t.Errorf("bad input changed h1")
	}
	t.Logf("whole test in %v", time.Since(start).Round(time.Millisecond))
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
