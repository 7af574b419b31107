package commands

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/hostkeys"
	"github.com/sera-dev/sera/host/hostkeys/keystest"
)

// hkRoot is a host whose filesystem root is a temporary directory with
// SSH host keys in /etc/ssh.
type hkRoot struct {
	h    *Host
	keys []ssh.PublicKey // its host keys, in hostkeys.KeyTypes order
}

func newHostkeyRoot(t *testing.T, name string) *hkRoot {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc", "ssh"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := &hkRoot{h: &Host{Name: name, Version: "test", Sys: &host.System{Exec: host.ExecRunner{}, FS: host.FS{Root: root}, Clock: host.ClockFunc(time.Now), Net: staticNet(name, "10.0.0.1"), State: t.TempDir()}}}
	r.writeHostKey(t, "ed25519", keystest.Ed25519(t))
	r.writeHostKey(t, "ecdsa", keystest.ECDSA(t))
	return r
}

// writeHostKey installs k as the host's ssh_host_NAME_key.pub.
func (r *hkRoot) writeHostKey(t *testing.T, name string, k ssh.PublicKey) {
	t.Helper()
	line := hostkeys.KeyText(k) + " root@" + r.h.Name + "\n"
	if err := os.WriteFile(r.h.Sys.Path("/etc/ssh/ssh_host_"+name+"_key.pub"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	r.keys = slices.DeleteFunc(r.keys, func(o ssh.PublicKey) bool { return o.Type() == k.Type() })
	r.keys = append(r.keys, k)
	sort.Slice(r.keys, func(i, j int) bool { return hostkeys.TypeRank(r.keys[i].Type()) < hostkeys.TypeRank(r.keys[j].Type()) })
}

// hkRun runs argv as the watcher does: Resolve, then Run.
func hkRun(t *testing.T, h *Host, argv ...string) (stdout, stderr string, status int, resolveErr error) {
	t.Helper()
	hd := &Handler{Host: h}
	_, resolveErr = hd.Resolve(argv)
	res := hd.Run(context.Background(), &sera.Call{Argv: argv})
	return string(res.Stdout), string(res.Stderr), res.Status, resolveErr
}

func hkMustRun(t *testing.T, h *Host, argv ...string) string {
	t.Helper()
	out, errOut, st, err := hkRun(t, h, argv...)
	if err != nil || st != 0 {
		t.Fatalf("%q: resolve %v, status %d\nstdout: %s\nstderr: %s", argv, err, st, out, errOut)
	}
	return out
}

// staticNet is a host's names and addresses for a test.
func staticNet(hostname string, addrs ...string) host.StaticNet {
	n := host.StaticNet{Host: hostname}
	for _, a := range addrs {
		n.IPs = append(n.IPs, netip.MustParseAddr(a))
	}
	return n
}

func TestHostkeyList(t *testing.T) {
	r := newHostkeyRoot(t, "web1")
	r.h.Sys.Net = staticNet("web1.example", "127.0.0.1", "::1", "fe80::1", "2001:db8::1", "192.0.2.1", "10.0.0.1", "169.254.1.1")
	rsa2048, rsa1024 := keystest.RSA(t)
	r.writeHostKey(t, "rsa", rsa2048)
	// Neither a FIDO key nor a weak RSA key is ever a host key sera
	// reports; a *-cert.pub is not a key file.
	if err := os.WriteFile(r.h.Sys.Path("/etc/ssh/ssh_host_sk_key.pub"), []byte(hostkeys.KeyText(keystest.SK(t))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.h.Sys.Path("/etc/ssh/ssh_host_old_key.pub"), []byte(hostkeys.KeyText(rsa1024)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.h.Sys.Path("/etc/ssh/ssh_host_ed25519_key-cert.pub"), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out, errOut, st, err := hkRun(t, r.h, "hostkey", "list")
	if err != nil || st != 0 {
		t.Fatalf("list: %v %d %s", err, st, errOut)
	}
	want := "host   web1\nnames  web1, web1.example\naddrs  10.0.0.1, 192.0.2.1, 2001:db8::1\n"
	for _, k := range r.keys {
		want += strings.TrimRight(strings.Join([]string{
			k.Type() + strings.Repeat(" ", 20-len(k.Type())), fp(k) + " ", "/etc/ssh/ssh_host_" + map[string]string{
				ssh.KeyAlgoED25519: "ed25519", ssh.KeyAlgoECDSA256: "ecdsa", ssh.KeyAlgoRSA: "rsa"}[k.Type()] + "_key.pub"}, " "), " ") + "\n"
	}
	if out != want {
		t.Errorf("list:\n%s\nwant:\n%s", out, want)
	}
	if !strings.Contains(errOut, "ssh_host_sk_key.pub skipped") || !strings.Contains(errOut, "ssh_host_old_key.pub skipped: ") || !strings.Contains(errOut, "too weak") {
		t.Errorf("warnings: %s", errOut)
	}

	out = hkMustRun(t, r.h, "hostkey", "list", "--json=true")
	var got []hostkeys.Report
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var k hostkeys.Report
		if err := dec.Decode(&k); err != nil {
			t.Fatal(err)
		}
		got = append(got, k)
	}
	if len(got) != 3 {
		t.Fatalf("json: %s", out)
	}
	for i, k := range got {
		if k.Host != "web1" || !slices.Equal(k.Names, []string{"web1", "web1.example"}) || !slices.Equal(k.Addrs, []string{"10.0.0.1", "192.0.2.1", "2001:db8::1"}) ||
			k.Type != r.keys[i].Type() || k.Fingerprint != fp(r.keys[i]) || k.Key != hostkeys.KeyText(r.keys[i]) {
			t.Errorf("json key %d: %+v", i, k)
		}
	}

	out = hkMustRun(t, r.h, "hostkey", "list", "--known-hosts=true", "--name=web1", "--name=Web1.Lan", "--addr=10.9.9.9")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || lines[0] != "web1,web1.lan,10.9.9.9 "+hostkeys.KeyText(r.keys[0]) {
		t.Errorf("--known-hosts: %s", out)
	}
	// What it prints is what trust and set take.
	if _, _, _, err := hostkeys.ParseEntry(strings.Split(out, "\n")[2]); err != nil {
		t.Errorf("--known-hosts line does not parse: %v", err)
	}
	out = hkMustRun(t, r.h, "hostkey", "list", "--no-addrs=true")
	if !strings.Contains(out, "addrs  -\n") {
		t.Errorf("--no-addrs: %s", out)
	}
}

func TestHostkeyListErrors(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"hostkey", "list", "--", "extra"}, "takes no arguments"},
		{[]string{"hostkey", "list", "--addr=web1"}, "not an IP address"},
		{[]string{"hostkey", "list", "--addr=fe80::1%eth0"}, "zone"},
		{[]string{"hostkey", "list", "--name=*.example"}, "wildcards"},
		{[]string{"hostkey", "list", "--name=web_1"}, "RFC 1123"},
		{[]string{"hostkey", "list", "--addr=10.0.0.1", "--no-addrs=true"}, "exclude each other"},
		{[]string{"hostkey", "list", "--json=true", "--known-hosts=true"}, "exclude each other"},
	} {
		r := newHostkeyRoot(t, "web1")
		_, errOut, st, err := hkRun(t, r.h, tc.argv...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || st == 0 {
			t.Errorf("%q: resolve %v, status %d, stderr %s; want %q", tc.argv, err, st, errOut, tc.want)
		}
	}
	// The host's own files are checked when it runs.
	r := newHostkeyRoot(t, "web1")
	bad := r.h.Sys.Path("/etc/ssh/ssh_host_bad_key.pub")
	os.WriteFile(bad, []byte("not a key\n"), 0o644)
	if _, errOut, st, _ := hkRun(t, r.h, "hostkey", "list"); st != 1 || !strings.Contains(errOut, "ssh_host_bad_key.pub is not one public key") {
		t.Errorf("bad key file: %d %s", st, errOut)
	}
	os.Remove(bad)
	os.Symlink("/etc/hostname", bad)
	if _, errOut, st, _ := hkRun(t, r.h, "hostkey", "list"); st != 1 || !strings.Contains(errOut, "symbolic link") {
		t.Errorf("symlinked key file: %d %s", st, errOut)
	}
	os.Remove(bad)
	for _, n := range []string{"ed25519", "ecdsa"} {
		os.Remove(r.h.Sys.Path("/etc/ssh/ssh_host_" + n + "_key.pub"))
	}
	if _, errOut, st, _ := hkRun(t, r.h, "hostkey", "list"); st != 1 || !strings.Contains(errOut, "no SSH host keys") {
		t.Errorf("no keys: %d %s", st, errOut)
	}
}

// hkFile reads the host's ssh_known_hosts ("" if missing).
func hkFile(t *testing.T, h *Host) string {
	t.Helper()
	b, err := os.ReadFile(h.Sys.Path(hostkeys.SystemFile))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// hkTwice runs a changing command, then again: the second run must say
// noChange, print no "done:", and leave the file byte for byte.
func hkTwice(t *testing.T, h *Host, noChange string, argv ...string) string {
	t.Helper()
	first := hkMustRun(t, h, argv...)
	before := hkFile(t, h)
	second := hkMustRun(t, h, argv...)
	if !strings.Contains(second, noChange) || strings.Contains(second, "done:") {
		t.Errorf("second run of %q: %s", argv, second)
	}
	if after := hkFile(t, h); after != before {
		t.Errorf("second run of %q changed the file:\n%s\n%s", argv, before, after)
	}
	return first
}

func TestHostkeyTrustUntrustSet(t *testing.T) {
	r := newHostkeyRoot(t, "web1")
	h := r.h
	ed2, ec2, ed2new, ed3 := keystest.Ed25519(t), keystest.ECDSA(t), keystest.Ed25519(t), keystest.Ed25519(t)

	// 1. No file yet: trust creates it, 0644.
	out := hkTwice(t, h, "keys of web2: already trusted, no change", "hostkey", "trust", "--", "web2,10.0.0.2", hostkeys.KeyText(ec2)+" root@web2", hostkeys.KeyText(ed2))
	if want := "done: create /etc/ssh/ssh_known_hosts (0644): trust web2 as web2,10.0.0.2: ssh-ed25519 " + fp(ed2) + ", ecdsa-sha2-nistp256 " + fp(ec2) + "\n"; out != want {
		t.Errorf("trust: %q\nwant %q", out, want)
	}
	if fi, err := os.Stat(h.Sys.Path(hostkeys.SystemFile)); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode: %v %v", fi.Mode(), err)
	}
	block := func(lines ...string) string {
		return hostkeys.Begin + "\n" + strings.Join(lines, "\n") + "\n" + hostkeys.End + "\n"
	}
	want := block("web2,10.0.0.2 "+hostkeys.KeyText(ed2), "web2,10.0.0.2 "+hostkeys.KeyText(ec2))
	if got := hkFile(t, h); got != want {
		t.Fatalf("file:\n%s\nwant:\n%s", got, want)
	}

	// 2. The admin's own lines, before and after the block, are kept.
	own1, own2 := "# mine\ngitlab.example "+hostkeys.KeyText(ed3)+"\n", "\n# also mine\n"
	if err := os.WriteFile(h.Sys.Path(hostkeys.SystemFile), []byte(own1+want+own2), 0o600); err != nil {
		t.Fatal(err)
	}

	// 3. A new key replaces the old one: dry run first, nothing changed.
	args := []string{"hostkey", "trust", "--", "WEB2", hostkeys.KeyText(ed2new)}
	out = hkMustRun(t, h, append([]string{"hostkey", "trust", "--dry-run=true"}, args[2:]...)...)
	change := "web2: replace ssh-ed25519 " + fp(ed2) + " with " + fp(ed2new) + "; web2: remove ecdsa-sha2-nistp256 " + fp(ec2) + "; web2: names web2 (were web2,10.0.0.2)"
	if out != "would: write /etc/ssh/ssh_known_hosts (0644): "+change+"\n" {
		t.Errorf("dry run: %q", out)
	}
	if got := hkFile(t, h); got != own1+want+own2 {
		t.Errorf("dry run changed the file")
	}
	out = hkTwice(t, h, "already trusted", args...)
	if out != "done: write /etc/ssh/ssh_known_hosts (0644): "+change+"\n" {
		t.Errorf("replace: %q", out)
	}
	want = own1 + block("web2 "+hostkeys.KeyText(ed2new)) + own2
	if got := hkFile(t, h); got != want {
		t.Errorf("after replace:\n%s\nwant:\n%s", got, want)
	}
	if fi, _ := os.Stat(h.Sys.Path(hostkeys.SystemFile)); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode after write: %v", fi.Mode())
	}

	// 4. set: several hosts in one request; hosts not named stay.
	out = hkTwice(t, h, "known hosts: no change", "hostkey", "set", "--",
		"web3,10.0.0.3 "+hostkeys.KeyText(ed3), "web4 "+hostkeys.KeyText(ec2), "web4 "+hostkeys.KeyText(ed2))
	if !strings.Contains(out, "trust web3 as web3,10.0.0.3: ssh-ed25519 "+fp(ed3)+"; trust web4 as web4: ssh-ed25519 "+fp(ed2)+", ecdsa") {
		t.Errorf("set: %s", out)
	}
	want = own1 + block("web2 "+hostkeys.KeyText(ed2new), "web3,10.0.0.3 "+hostkeys.KeyText(ed3), "web4 "+hostkeys.KeyText(ed2), "web4 "+hostkeys.KeyText(ec2)) + own2
	if got := hkFile(t, h); got != want {
		t.Errorf("after set:\n%s\nwant:\n%s", got, want)
	}

	// 5. A managed host's name cannot be made another's alias.
	_, errOut, st, _ := hkRun(t, h, "hostkey", "trust", "--", "web5,web3", hostkeys.KeyText(ed3))
	if st != 1 || !strings.Contains(errOut, "web3 is a host sera keeps keys for") || !strings.Contains(errOut, "nothing was changed") {
		t.Errorf("alias clash: %d %s", st, errOut)
	}

	// 6. untrust: dry run, then for real, then "already absent".
	out = hkMustRun(t, h, "hostkey", "untrust", "--dry-run=true", "--", "web3", "web4")
	if !strings.HasPrefix(out, "would: write /etc/ssh/ssh_known_hosts (0644): untrust web3: ssh-ed25519 "+fp(ed3)+"; untrust web4: ") {
		t.Errorf("untrust dry run: %s", out)
	}
	hkTwice(t, h, "web3, web4: already absent, no change", "hostkey", "untrust", "--", "web3", "web4")
	hkTwice(t, h, "already absent", "hostkey", "untrust", "--", "web2")
	if got := hkFile(t, h); got != own1+own2 {
		t.Errorf("after untrusting all:\n%q", got)
	}
}

// Every bad input is refused by the command's own validation (which the
// watcher runs in Resolve, and again when it runs), with nothing changed.
func TestHostkeyBadInputs(t *testing.T) {
	r := newHostkeyRoot(t, "web1")
	h := r.h
	ed, ed2 := keystest.Ed25519(t), keystest.Ed25519(t)
	_, rsa1024 := keystest.RSA(t)
	key := hostkeys.KeyText(ed)
	hkMustRun(t, h, "hostkey", "trust", "--", "web2", key)
	before := hkFile(t, h)
	cases := []struct {
		argv []string
		want string
	}{
		{[]string{"trust", "--", "web2"}, "needs KEY… after web2"},
		{[]string{"trust", "--", "*.example", key}, "wildcards"},
		{[]string{"trust", "--", "web2,web_3", key}, "RFC 1123"},
		{[]string{"trust", "--", "[web2]:2222", key}, "[host]:port"},
		{[]string{"trust", "--", "|1|c2FsdA==|aGFzaA==", key}, "hashed"},
		{[]string{"trust", "--", "web2", "ssh-ed25519 AAAA"}, "invalid key"},
		{[]string{"trust", "--", "web2", "web2 " + key}, "not part of a key"},
		{[]string{"trust", "--", "web2", "@revoked " + key}, "markers"},
		{[]string{"trust", "--", "web2", "@cert-authority " + key}, "markers"},
		{[]string{"trust", "--", "web2", hostkeys.KeyText(keystest.Cert(t, ed))}, "certificate"},
		{[]string{"trust", "--", "web2", hostkeys.KeyText(rsa1024)}, "too weak"},
		{[]string{"trust", "--", "web2", hostkeys.KeyText(keystest.SK(t))}, "not a host key type"},
		{[]string{"trust", "--", "web2", key + "\n" + key}, "several lines"},
		{[]string{"trust", "--", "web2", key, hostkeys.KeyText(ed2)}, "two ssh-ed25519 keys for web2"},
		{[]string{"trust", "--bogus", "--", "web2", key}, "unknown flag"},
		{[]string{"untrust"}, "needs NAME…"},
		{[]string{"untrust", "--", "web?"}, "wildcards"},
		{[]string{"set"}, "needs ENTRY…"},
		{[]string{"set", "--", "web2 " + key, "web2,10.0.0.2 " + hostkeys.KeyText(keystest.ECDSA(t))}, "give different names"},
		{[]string{"set", "--", "web2,10.0.0.9 " + key, "web3,10.0.0.9 " + hostkeys.KeyText(ed2)}, "10.0.0.9 is given as a name of both web2 and web3"},
		{[]string{"set", "--", "web2 " + key, "web3,web2 " + hostkeys.KeyText(ed2)}, "web2 is given as a name of both"},
		{[]string{"set", "--", "@cert-authority *.example " + key}, "marker"},
		{[]string{"set", "--", "web2 " + key, "garbage"}, "invalid entry"},
		{[]string{"set", "--", key}, "invalid entry"},
	}
	for _, c := range cases {
		argv := append([]string{"hostkey"}, c.argv...)
		out, errOut, st, err := hkRun(t, h, argv...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("resolve %q: %v, want %q", argv, err, c.want)
		}
		if st == 0 || !strings.Contains(errOut, c.want) || strings.Contains(out, "done:") {
			t.Errorf("run %q: status %d, stderr %q", argv, st, errOut)
		}
	}
	if after := hkFile(t, h); after != before {
		t.Errorf("bad inputs changed the file:\n%s", after)
	}
}

// What the host holds can make a command fail: it fails before writing.
func TestHostkeyFileRefused(t *testing.T) {
	ed := hostkeys.KeyText(keystest.Ed25519(t))
	r := newHostkeyRoot(t, "web1")
	h := r.h
	file := h.Sys.Path(hostkeys.SystemFile)

	// A damaged block: sera cannot tell its lines from the admin's.
	damaged := "mine\n" + hostkeys.Begin + "\nweb2 " + ed + "\nmine too?\n"
	os.WriteFile(file, []byte(damaged), 0o644)
	_, errOut, st, _ := hkRun(t, h, "hostkey", "trust", "--", "web3", ed)
	if st != 1 || !strings.Contains(errOut, "has no end line") || !strings.Contains(errOut, "nothing was changed") || hkFile(t, h) != damaged {
		t.Errorf("damaged block: %d %s", st, errOut)
	}

	// A symbolic link in place of the file is never followed.
	os.Remove(file)
	target := filepath.Join(h.Sys.FS.Root, "elsewhere")
	os.WriteFile(target, []byte("precious\n"), 0o644)
	os.Symlink(target, file)
	_, errOut, st, _ = hkRun(t, h, "hostkey", "trust", "--", "web3", ed)
	if b, _ := os.ReadFile(target); st != 1 || !strings.Contains(errOut, "symbolic link") || string(b) != "precious\n" {
		t.Errorf("symlinked file: %d %s %q", st, errOut, b)
	}

	// Nor a link in place of /etc/ssh.
	os.RemoveAll(h.Sys.Path("/etc/ssh"))
	os.Mkdir(filepath.Join(h.Sys.FS.Root, "real-ssh"), 0o755)
	os.Symlink(filepath.Join(h.Sys.FS.Root, "real-ssh"), h.Sys.Path("/etc/ssh"))
	_, errOut, st, _ = hkRun(t, h, "hostkey", "trust", "--", "web3", ed)
	if ents, _ := os.ReadDir(filepath.Join(h.Sys.FS.Root, "real-ssh")); st != 1 || !strings.Contains(errOut, "symbolic link") || len(ents) != 0 {
		t.Errorf("symlinked /etc/ssh: %d %s %v", st, errOut, ents)
	}

	// Bad lines in sera's block are reported; they go at the next change.
	os.Remove(h.Sys.Path("/etc/ssh"))
	os.Mkdir(h.Sys.Path("/etc/ssh"), 0o755)
	os.WriteFile(file, []byte(hostkeys.Begin+"\nweb2 "+ed+"\nhand-edited junk\n"+hostkeys.End+"\n"), 0o644)
	out, errOut, st, _ := hkRun(t, h, "hostkey", "trust", "--", "web2", ed)
	if st != 0 || !strings.Contains(out, "already trusted") || !strings.Contains(errOut, "line 3") {
		t.Errorf("junk line, no change: %d %s %s", st, out, errOut)
	}
	hkMustRun(t, h, "hostkey", "untrust", "--", "web2")
	if got := hkFile(t, h); got != "" {
		t.Errorf("after untrust: %q", got)
	}
}
