package commands

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/admin"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/host/hostkeys"
	"github.com/sera-dev/sera/host/hostkeys/keystest"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
)

func fp(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

func mustEntry(t *testing.T, names string, keys ...ssh.PublicKey) *hostkeys.Host {
	t.Helper()
	name, aliases, err := hostkeys.ParseHostList(names)
	if err != nil {
		t.Fatal(err)
	}
	e, err := hostkeys.NewHost(name, aliases, keys)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// known-hosts sync end to end over the spool transport: real watchers,
// each with its own host root, the real client command.
//
// A fleet lives in a testing/synctest bubble (see inKHFleet): every timer
// of its watchers, client and spool runs on the bubble's fake clock, which
// moves only when all of them wait. A client's --timeout then fires for a
// silent host however loaded the machine is, and never before a live one
// has answered. The spools poll instead of waiting on inotify, as a
// goroutine blocked on a file descriptor would keep the clock from moving.
type khFleet struct {
	t        *testing.T
	dir      string
	spool    string
	env      map[string]string
	clientID *crypto.Identity
	hosts    map[string]*hkRoot
	stops    map[string]func()
	// maxSize, if set, is the client transport's message size limit.
	maxSize int
	// confirm, if set, is the client's Options.Confirm.
	confirm func(string) (bool, error)
	// heartbeat is the watchers' HeartbeatEvery.
	heartbeat time.Duration
}

// inKHFleet runs test in a synctest bubble on a fleet made in it, with
// watchers for running and none for silent.
func inKHFleet(t *testing.T, running, silent []string, test func(t *testing.T, f *khFleet)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		test(t, newKHFleet(t, running, silent...))
	})
}

// advance moves the fake clock of a test in a synctest bubble (inKHFleet)
// on by d and returns once everything due by then has run and the rest
// waits: the sleep is on the bubble's clock, so it takes no real time and
// a busy machine cannot stretch it.
func advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func newKHFleet(t *testing.T, running []string, silent ...string) *khFleet {
	t.Helper()
	return newKHFleetBeating(t, 0, running, silent...)
}

// newKHFleetBeating is newKHFleet with watchers that send heartbeats every
// heartbeat (none for 0).
func newKHFleetBeating(t *testing.T, heartbeat time.Duration, running []string, silent ...string) *khFleet {
	t.Helper()
	dir := t.TempDir()
	f := &khFleet{t: t, dir: dir, spool: filepath.Join(dir, "spool"), hosts: map[string]*hkRoot{}, stops: map[string]func(){}, heartbeat: heartbeat}
	f.env = map[string]string{
		"SERA_HOME": filepath.Join(dir, "client"), "SERA_STATE": filepath.Join(dir, "client", "state"),
		"SERA_TRANSPORT": "spool", "SERA_SPOOL": f.spool, "SERA_PREFIX": "kh",
		// The hosts' names the admin gives: NAME.example, and each one's
		// address in known_watchers.
		"SERA_DOMAIN": "example",
	}
	if out, _, err := f.sera("keygen"); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "client", "key"))
	if err != nil {
		t.Fatal(err)
	}
	if f.clientID, err = crypto.ParseIdentityFile(b); err != nil {
		t.Fatal(err)
	}
	// Each host's names come from hooks that tell the hosts apart by name.
	addrOf := map[string]string{}
	for i, n := range append(slices.Clone(running), silent...) {
		addrOf[n] = "10.0.0." + strconv.Itoa(i+1)
	}
	kw := &sera.KnownWatchers{}
	for _, n := range append(slices.Clone(running), silent...) {
		id, err := crypto.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		kw.Watchers = append(kw.Watchers, &sera.KnownWatcher{Name: n, Key: id.Public(), Addrs: []string{addrOf[n]}})
		r := newHostkeyRoot(t, n)
		r.h.Sys.Net = staticNet(n+".example", "127.0.0.1", "fe80::1", addrOf[n])
		f.hosts[n] = r
		if slices.Contains(running, n) {
			f.startWatcher(n, id, r.h)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "client", "known_watchers"), kw.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *khFleet) startWatcher(name string, id *crypto.Identity, h *Host) {
	t := f.t
	dir := filepath.Join(f.dir, "w-"+name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	kc := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: f.clientID.Public(), Name: "admin", Allow: []string{sera.AllowAll}}}}
	if err := os.WriteFile(filepath.Join(dir, "known_clients"), kc.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	replay, err := sera.OpenReplayCache(filepath.Join(dir, "replay"))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := spool.New(f.spool, spool.WithPolling())
	if err != nil {
		t.Fatal(err)
	}
	h.AuditLog = filepath.Join(dir, "audit.log")
	w := &sera.Watcher{
		Identity: id, Name: name, Prefix: "kh", Transport: tr,
		Clients: &sera.ClientFile{Path: filepath.Join(dir, "known_clients")},
		Handler: &Handler{Host: h}, Replay: replay,
		Audit:          &sera.AuditLog{Path: filepath.Join(dir, "audit.log")},
		HeartbeatEvery: f.heartbeat,
		HeartbeatTo: func() ([]*sera.KnownClient, error) {
			kc, err := sera.ReadKnownClients(filepath.Join(dir, "known_clients"))
			if err != nil {
				return nil, err
			}
			return kc.Clients, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	var once sync.Once
	f.stops[name] = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(f.stops[name])
}

func (f *khFleet) sera(args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	o := &cli.Options{Stdout: &stdout, Stderr: &stderr, Env: settings.Env{Getenv: func(k string) string { return f.env[k] }, UserHome: f.dir, Hostname: "laptop"},
		OpenTransport: func(context.Context, *settings.Config) (transport.Transport, error) {
			if f.maxSize > 0 {
				return spool.New(f.spool, spool.WithPolling(), spool.WithMaxMessageSize(f.maxSize))
			}
			return spool.New(f.spool, spool.WithPolling())
		}}
	o.Confirm = f.confirm
	root := NewRoot(o)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return stdout.String(), stderr.String(), err
}

// files returns every known_hosts file of the fleet, the client's last.
func (f *khFleet) files() map[string]string {
	out := map[string]string{}
	for n, r := range f.hosts {
		b, _ := os.ReadFile(r.h.Sys.Path(hostkeys.SystemFile))
		out[n] = string(b)
	}
	b, _ := os.ReadFile(filepath.Join(f.dir, ".ssh", "known_hosts"))
	out["client"] = string(b)
	return out
}

func TestKnownHostsSync(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2"}, []string{"web3"}, testKnownHostsSync)
}

func testKnownHostsSync(t *testing.T, f *khFleet) {
	// The client has a line of its own, and a stale key for web2.
	staleWeb2 := keystest.Ed25519(t)
	if err := os.MkdirAll(filepath.Join(f.dir, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	own := "github.com " + hostkeys.KeyText(keystest.Ed25519(t)) + "\nweb2 " + hostkeys.KeyText(staleWeb2) + "\n"
	if err := os.WriteFile(filepath.Join(f.dir, ".ssh", "known_hosts"), []byte(own), 0o644); err != nil {
		t.Fatal(err)
	}

	// web3 is silent: web1 and web2 are synced, web3 reported, exit 1.
	// The 1s is fake time, which does not pass while web1 and web2 work.
	out, errOut, err := f.sera("known-hosts", "sync", "--timeout=1s")
	if code, _ := cli.ExitCode(err); code != 1 {
		t.Fatalf("exit %d, want 1 (web3 silent)\n%s\n%s", code, out, errOut)
	}
	for _, w := range []string{"web3: no keys collected (no reply within 1s); its entries are left as each host has them",
		"keys of 2 of 3 hosts; installed on 2 of 3 hosts and in ~/.ssh/known_hosts; failed: web3",
		"line 2, outside sera's block, trusts another ssh-ed25519 key for web2 (" + fp(staleWeb2)} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	files := f.files()
	k1 := slices.Clone(f.hosts["web1"].keys)
	k2 := slices.Clone(f.hosts["web2"].keys)
	block := hostkeys.Begin + "\n"
	for _, k := range k1 {
		block += "web1,web1.example,10.0.0.1 " + hostkeys.KeyText(k) + "\n"
	}
	for _, k := range k2 {
		block += "web2,web2.example,10.0.0.2 " + hostkeys.KeyText(k) + "\n"
	}
	block += hostkeys.End + "\n"
	for _, n := range []string{"web1", "web2"} {
		if files[n] != block {
			t.Errorf("%s's known_hosts:\n%s\nwant:\n%s", n, files[n], block)
		}
	}
	if files["web3"] != "" {
		t.Errorf("web3 changed")
	}
	if files["client"] != own+block {
		t.Errorf("client's known_hosts:\n%s", files["client"])
	}
	if fi, _ := os.Stat(filepath.Join(f.dir, ".ssh", "known_hosts")); fi.Mode().Perm() != 0o644 {
		t.Errorf("client file mode %o: an existing file keeps its mode", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(f.hosts["web1"].h.Sys.Path(hostkeys.SystemFile)); fi.Mode().Perm() != 0o644 {
		t.Errorf("host file mode %o", fi.Mode().Perm())
	}

	// Again, only the answering hosts: no change anywhere.
	out, errOut, err = f.sera("known-hosts", "sync", "--to", "web1,web2")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	if strings.Count(out, "known hosts: no change") != 2 || !strings.Contains(out, "local: ~/.ssh/known_hosts: no change") || strings.Contains(out, "done:") {
		t.Errorf("second sync:\n%s", out)
	}
	if again := f.files(); !maps2Equal(again, files) {
		t.Errorf("second sync changed files")
	}

	// web2 re-keys: a dry run shows it and changes nothing; the real run
	// replaces the key everywhere.
	newKey := keystest.Ed25519(t)
	f.hosts["web2"].writeHostKey(t, "ed25519", newKey)
	out, errOut, err = f.sera("known-hosts", "sync", "--to", "web*2", "--to", "web1", "--dry-run")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	repl := "web2: replace ssh-ed25519 " + fp(k2[0]) + " with " + fp(newKey)
	if strings.Count(out, "would: write /etc/ssh/ssh_known_hosts (0644): "+repl) != 2 || !strings.Contains(out, "local: would: write ~/.ssh/known_hosts (0644): "+repl) ||
		!strings.Contains(out, "dry run: nothing changed") {
		t.Errorf("dry run:\n%s", out)
	}
	if again := f.files(); !maps2Equal(again, files) {
		t.Errorf("dry run changed files")
	}
	if out, errOut, err = f.sera("known-hosts", "sync", "--to", "web1,web2"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	files = f.files()
	for n, s := range files {
		if n == "web3" {
			continue
		}
		if strings.Contains(s, hostkeys.KeyText(k2[0])) || !strings.Contains(s, "web2,web2.example,10.0.0.2 "+hostkeys.KeyText(newKey)) {
			t.Errorf("%s after re-key:\n%s", n, s)
		}
	}

	// web1 stops answering: its entries stay where they are.
	f.stops["web1"]()
	out, errOut, err = f.sera("known-hosts", "sync", "--timeout=500ms", "--no-local")
	if code, _ := cli.ExitCode(err); code != 1 || !strings.Contains(errOut, "failed: web1, web3") {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}
	if again := f.files(); !maps2Equal(again, files) {
		t.Errorf("a sync with web1 silent changed files")
	}
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Keys that do not fit one message are installed in parts, each whole
// hosts: the result is the same as in one request.
func TestKnownHostsSyncInParts(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2", "web3"}, nil, testKnownHostsSyncInParts)
}

func testKnownHostsSyncInParts(t *testing.T, f *khFleet) {
	f.maxSize = 1300 // room for one host's two lines a request
	out, errOut, err := f.sera("known-hosts", "sync", "--no-local")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, w := range []string{"web1", "web2", "web3"} {
		if n := strings.Count(out, w+": done: "); n != 3 {
			t.Errorf("%s got %d parts, want 3:\n%s", w, n, out)
		}
	}
	files := f.files()
	if files["web1"] != files["web2"] || files["web1"] != files["web3"] || strings.Count(files["web1"], "\n") != 8 {
		t.Errorf("files after a sync in parts:\n%v", files)
	}
	out, _, err = f.sera("known-hosts", "sync", "--no-local")
	if err != nil || strings.Count(out, "known hosts: no change") != 9 {
		t.Errorf("again: %v\n%s", err, out)
	}
}

// The client creates ~/.ssh 0700 and the file 0600; bad flags are usage
// errors before anything is sent.
func TestKnownHostsSyncLocalFile(t *testing.T) {
	inKHFleet(t, []string{"web1"}, nil, testKnownHostsSyncLocalFile)
}

func testKnownHostsSyncLocalFile(t *testing.T, f *khFleet) {
	if out, errOut, err := f.sera("known-hosts", "sync"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for p, want := range map[string]os.FileMode{filepath.Join(f.dir, ".ssh"): 0o700, filepath.Join(f.dir, ".ssh", "known_hosts"): 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %o", p, fi.Mode(), err, want)
		}
	}
	// --file: another file; a symlink there is refused.
	other := filepath.Join(f.dir, "kh")
	if err := os.Symlink("/etc/passwd", other); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := f.sera("known-hosts", "sync", "--file", other)
	if code, _ := cli.ExitCode(err); code != 1 || !strings.Contains(errOut, "symbolic link") {
		t.Errorf("symlinked --file: exit %d, %s", code, errOut)
	}
	for _, args := range [][]string{
		{"known-hosts", "sync", "extra"},
		{"known-hosts", "sync", "--to", "nope"},
		{"known-hosts", "sync", "--file", "x", "--no-local"},
		{"known-hosts"},
	} {
		if _, _, err := f.sera(args...); !errors.Is(err, cli.ErrUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

// A host names itself what it likes: web2 says it is github.com and has
// a public address and web1's; web3 says it is web1. Each host's keys end
// up trusted for the names the admin gave it only, on every host and in
// the client's known_hosts, where an earlier sync had entered what they
// said; the rest is shown, and only --accept trusts it, per host, never
// another watcher's name or address.
func TestKnownHostsSyncTrustsOnlyTheAdmin(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2", "web3"}, nil, testKnownHostsSyncTrustsOnlyTheAdmin)
}

func testKnownHostsSyncTrustsOnlyTheAdmin(t *testing.T, f *khFleet) {
	// Set before any request reaches the watchers.
	f.hosts["web2"].h.Sys.Net = staticNet("github.com", "10.0.0.2", "203.0.113.9", "10.0.0.1")
	f.hosts["web3"].h.Sys.Net = staticNet("web1", "10.0.0.3", "10.0.0.1")
	f.hosts["web1"].h.Sys.Net = staticNet("web1.example", "10.0.0.1")
	k := func(n string) []ssh.PublicKey { return f.hosts[n].keys }
	block := func(names map[string]string) string {
		b := hostkeys.Begin + "\n"
		for _, n := range []string{"web1", "web2", "web3"} {
			for _, key := range k(n) {
				b += names[n] + " " + hostkeys.KeyText(key) + "\n"
			}
		}
		return b + hostkeys.End + "\n"
	}
	adminOnly := block(map[string]string{"web1": "web1,web1.example,10.0.0.1", "web2": "web2,web2.example,10.0.0.2", "web3": "web3,web3.example,10.0.0.3"})
	// What a sync before this fix entered: what web2 said of itself.
	old := block(map[string]string{"web1": "web1,web1.example", "web2": "web2,github.com,10.0.0.1,10.0.0.2,203.0.113.9", "web3": "web3,10.0.0.3"})
	own := "github.com " + hostkeys.KeyText(keystest.Ed25519(t)) + "\n"
	if err := os.MkdirAll(filepath.Join(f.dir, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, ".ssh", "known_hosts"), []byte(own+old), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.hosts {
		if err := os.WriteFile(r.h.Sys.Path(hostkeys.SystemFile), []byte(old), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kwPath := filepath.Join(f.dir, "client", "known_watchers")
	kwBefore, err := os.ReadFile(kwPath)
	if err != nil {
		t.Fatal(err)
	}

	out, errOut, err := f.sera("known-hosts", "sync", "--json")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, w := range []string{
		"sera: web2 also reports github.com, 10.0.0.1, 203.0.113.9: not trusted",
		"accept them with 'sera known-hosts sync --accept web2'",
		"sera: web3 also reports web1, 10.0.0.1: not trusted",
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	files := f.files()
	for n, s := range files {
		want := adminOnly
		if n == "client" {
			want = own + adminOnly
		}
		if s != want {
			t.Errorf("%s's known_hosts:\n%s\nwant:\n%s", n, s, want)
		}
	}
	reports := map[string]admin.SyncReport{}
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r admin.SyncReport
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("--json output: %v\n%s", err, out)
		}
		reports[r.Watcher] = r
	}
	if r := reports["web2"]; !slices.Equal(r.Names, []string{"web2", "web2.example", "10.0.0.2"}) || !slices.Equal(r.Untrusted, []string{"github.com", "10.0.0.1", "203.0.113.9"}) ||
		len(r.Accepted) != 0 || !r.Installed || len(r.Keys) != 2 {
		t.Errorf("web2's JSON: %+v", r)
	}
	if r := reports["web1"]; len(reports) != 3 || len(r.Untrusted) != 0 || !slices.Equal(r.Names, []string{"web1", "web1.example", "10.0.0.1"}) {
		t.Errorf("JSON: %+v", reports)
	}

	// --accept is per targeted host; a dry run records nothing.
	if _, _, err := f.sera("known-hosts", "sync", "--to", "web1", "--accept", "web2"); !errors.Is(err, cli.ErrUsage) {
		t.Errorf("--accept of a host not targeted: %v, want a usage error", err)
	}
	out, errOut, err = f.sera("known-hosts", "sync", "--accept", "web2", "--dry-run")
	if err != nil || !strings.Contains(errOut, "web2: would accept github.com, 203.0.113.9") {
		t.Errorf("dry run: %v\n%s\n%s", err, out, errOut)
	}
	if b, _ := os.ReadFile(kwPath); !bytes.Equal(b, kwBefore) || !maps2Equal(f.files(), files) {
		t.Errorf("a dry run changed known_watchers or known_hosts")
	}

	// Accepted: what web2 reports becomes the admin's, in known_watchers,
	// except web1's address; web3 cannot take web1's name or address.
	out, errOut, err = f.sera("known-hosts", "sync", "--accept", "web2,web3")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, w := range []string{
		"web2: reports 10.0.0.1, which known_watchers gives to web1: not accepted",
		"web3: reports the name web1, which is another watcher's: not accepted",
		"web3: reports 10.0.0.1, which known_watchers gives to web1: not accepted",
		"--accept web3: it reports no name to accept",
		"web2: accepted github.com, 203.0.113.9: added to its addrs= in known_watchers",
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	accepted := block(map[string]string{"web1": "web1,web1.example,10.0.0.1", "web2": "web2,github.com,web2.example,10.0.0.2,203.0.113.9", "web3": "web3,web3.example,10.0.0.3"})
	files = f.files()
	for n, s := range files {
		if want := map[bool]string{false: accepted, true: own + accepted}[n == "client"]; s != want {
			t.Errorf("%s's known_hosts after --accept:\n%s\nwant:\n%s", n, s, want)
		}
	}
	kw, err := sera.ReadKnownWatchers(kwPath)
	if err != nil {
		t.Fatal(err)
	}
	if w := kw.ByName("web2"); !slices.Equal(w.Addrs, []string{"10.0.0.2", "github.com", "203.0.113.9"}) {
		t.Errorf("web2's known_watchers addresses: %q", w.Addrs)
	}
	if w := kw.ByName("web3"); !slices.Equal(w.Addrs, []string{"10.0.0.3"}) {
		t.Errorf("web3's known_watchers addresses: %q", w.Addrs)
	}
	// From now on they are the admin's: a plain sync keeps them.
	out, errOut, err = f.sera("known-hosts", "sync")
	if err != nil || strings.Contains(out, "done:") || strings.Contains(errOut, "web2 also reports github.com") {
		t.Errorf("sync after --accept: %v\n%s\n%s", err, out, errOut)
	}
	if !maps2Equal(f.files(), files) {
		t.Errorf("a sync after --accept changed files")
	}
}
