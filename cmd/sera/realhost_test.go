//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/hosttest"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// fleet is a client in this machine's namespace and watchers in real
// hosts (network namespaces over a Debian root, real sshd), talking over
// a real SQS server that the hosts reach across the bridge. Every fleet
// has its own network slot, server and hosts, so tests run in parallel.
type fleet struct {
	t       *testing.T
	bin     string
	dir     string
	prefix  string
	env     []string // the client's environment
	hosts   map[string]*hosttest.Host
	clients string // the client's public key
	gateway string // this machine's address on the hosts' network
	// watchers are the hosts' watcher processes, to stop or restart.
	watchers map[string]*hosttest.Proc
	sqs      aws.Config // the SQS server's
}

var (
	staticOnce sync.Once
	staticBin  string
	staticErr  error
)

// staticSera builds sera once per test binary, without cgo, so it runs in
// the hosts' Debian root whatever this machine's libc.
func staticSera(t *testing.T) string {
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sera-bin-")
		if err != nil {
			staticErr = err
			return
		}
		staticBin = filepath.Join(dir, "sera")
		cmd := exec.Command("go", "build", "-o", staticBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	return staticBin
}

func newFleet(t *testing.T, names ...string) *fleet {
	t.Helper()
	net := hosttest.NewNet(t) // skips (or fails with CI=true) without root
	srv := sqstest.Start(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	f := &fleet{t: t, bin: staticSera(t), dir: t.TempDir(), prefix: "rh" + hex.EncodeToString(rnd[:]), hosts: map[string]*hosttest.Host{},
		gateway: net.Gateway, watchers: map[string]*hosttest.Proc{}, sqs: srv.Config}
	port := srv.Endpoint[strings.LastIndex(srv.Endpoint, ":")+1:]
	awsEnv := func(endpoint string) []string {
		return []string{"AWS_ENDPOINT_URL=" + endpoint, "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
			"AWS_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true", "SERA_TRANSPORT=sqs", "SERA_PREFIX=" + f.prefix}
	}
	f.env = append(awsEnv(srv.Endpoint), "SERA_HOME="+filepath.Join(f.dir, "client"), "SERA_STATE="+filepath.Join(f.dir, "client-state"),
		"PATH="+os.Getenv("PATH"), "HOME="+f.dir)
	f.clients = strings.TrimSpace(f.mustSera("keygen"))
	id := f.identity()
	ctx := context.Background()
	if _, err := sqs.CreateQueue(ctx, srv.Config, transport.ClientQueue(f.prefix, id.Public().Fingerprint())); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		h := net.Start(t, name)
		h.Install(t, f.bin, "/usr/local/bin/sera")
		pub := strings.TrimSpace(h.MustExec(t, "sera", "keygen"))
		h.MustExec(t, "sera", "config", "set", "SERA_NAME="+name)
		h.MustExec(t, "sera", "clients", "add", f.clients, "--name", "admin", "--allow", "*")
		if _, err := sqs.CreateQueue(ctx, srv.Config, transport.WatcherQueue(f.prefix, name)); err != nil {
			t.Fatal(err)
		}
		// The hosts reach the SQS server across the bridge.
		env := awsEnv("http://" + net.Gateway + ":" + port)
		f.watchers[name] = h.Start(t, append(append([]string{"env"}, env...), "sera", "watch")...)
		f.mustSera("watchers", "add", name, pub)
		f.hosts[name] = h
	}
	return f
}

// endPolls ends the long poll a stopped watcher may have left open on the
// SQS server: fauxqs goes on serving a poll whose client has gone, and
// would hand it the next request, which then stays invisible for the
// visibility timeout (30 s). Deleting the queue ends its polls at once;
// it is then created again, empty, as before. (Real SQS would not let the
// name be reused for 60 s; these tests run on fauxqs only.)
func endPolls(t *testing.T, cfg aws.Config, queue string) {
	t.Helper()
	ctx := context.Background()
	client := awssqs.NewFromConfig(cfg)
	u, err := client.GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: &queue})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DeleteQueue(ctx, &awssqs.DeleteQueueInput{QueueUrl: u.QueueUrl}); err != nil {
		t.Fatal(err)
	}
	if _, err := sqs.CreateQueue(ctx, cfg, queue); err != nil {
		t.Fatal(err)
	}
}

func (f *fleet) identity() *crypto.Identity {
	b, err := os.ReadFile(filepath.Join(f.dir, "client", "key"))
	if err != nil {
		f.t.Fatal(err)
	}
	id, err := crypto.ParseIdentityFile(b)
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

// sera runs the client and returns its output and exit status.
func (f *fleet) sera(args ...string) (stdout, stderr string, code int) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bin, args...)
	cmd.Env = f.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		f.t.Fatalf("sera %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

func (f *fleet) mustSera(args ...string) string {
	f.t.Helper()
	out, errOut, code := f.sera(args...)
	if code != 0 {
		f.t.Fatalf("sera %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// failSera runs a command that must fail, and returns its stderr.
func (f *fleet) failSera(args ...string) string {
	f.t.Helper()
	out, errOut, code := f.sera(args...)
	if code == 0 {
		f.t.Fatalf("sera %s succeeded, want failure\nstdout: %s", strings.Join(args, " "), out)
	}
	return errOut
}

// sshKey makes a key pair for logins; it returns the private key file and
// the public key line.
func (f *fleet) sshKey(name string) (string, string) {
	f.t.Helper()
	file := filepath.Join(f.dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", file).CombinedOutput(); err != nil {
		f.t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(file + ".pub")
	if err != nil {
		f.t.Fatal(err)
	}
	return file, strings.TrimSpace(string(pub))
}

func loginAs(t *testing.T, h *hosttest.Host, user, key string, args ...string) (string, error) {
	t.Helper()
	if len(args) == 0 {
		args = []string{"id", "-un"}
	}
	out, err := h.SSH(t, user, key, args...)
	return strings.TrimSpace(string(out)), err
}

func mustLogin(t *testing.T, h *hosttest.Host, user, key string) {
	t.Helper()
	if out, err := loginAs(t, h, user, key); err != nil || out != user {
		t.Fatalf("login as %s on %s: %q, %v", user, h.Name, out, err)
	}
}

func mustNotLogin(t *testing.T, h *hosttest.Host, user, key string) {
	t.Helper()
	if out, err := loginAs(t, h, user, key); err == nil {
		t.Fatalf("login as %s on %s succeeded (%q), want refused", user, h.Name, out)
	}
}

// snapshot is the account state of a host that a second run of a command
// must leave identical.
func snapshot(t *testing.T, h *hosttest.Host) string {
	t.Helper()
	return h.MustExec(t, "sh", "-c", `cat /etc/passwd /etc/group /etc/shadow /etc/gshadow;
		ls -la /etc/sudoers.d; cat /etc/sudoers.d/sera-* 2>/dev/null;
		for h in /home/*; do ls -la "$h/.ssh" 2>/dev/null; cat "$h/.ssh/authorized_keys" 2>/dev/null; done; true`)
}

// twice runs a changing command, then runs it again and requires that the
// second run says it changed nothing and the host state is identical.
func (f *fleet) twice(h *hosttest.Host, want string, args ...string) string {
	f.t.Helper()
	first := f.mustSera(args...)
	before := snapshot(f.t, h)
	second := f.mustSera(args...)
	if !strings.Contains(second, want) || strings.Contains(second, "done:") {
		f.t.Errorf("second run of %q did not report no change:\n%s", strings.Join(args, " "), second)
	}
	if after := snapshot(f.t, h); after != before {
		f.t.Errorf("second run of %q changed the host:\nbefore:\n%s\nafter:\n%s", strings.Join(args, " "), before, after)
	}
	return first
}

// TestAccountsOnRealHosts is issue 3's proof: accounts, keys, groups and
// sudo changed by sera on real hosts, checked by real SSH logins.
func TestAccountsOnRealHosts(t *testing.T) {
	t.Parallel()
	f := newFleet(t, "h1", "h2")
	h1, h2 := f.hosts["h1"], f.hosts["h2"]
	key, pub := f.sshKey("alice")

	// 1. user add on h1: alice logs in with the real ssh client; h2 has no alice.
	f.twice(h1, "already present", "user", "add", "alice", "--key", pub, "--shell", "/bin/bash", "--to", "h1")
	mustLogin(t, h1, "alice", key)
	if _, _, code, _ := h2.Run(context.Background(), "getent", "passwd", "alice"); code == 0 {
		t.Fatal("alice exists on h2")
	}
	if got := h1.MustExec(t, "stat", "-c", "%a %U", "/home/alice/.ssh", "/home/alice/.ssh/authorized_keys"); got != "700 alice\n600 alice\n" {
		t.Errorf(".ssh modes: %q", got)
	}

	// 2. group, membership and sudo: sudo -n works, and stops after revoke.
	f.twice(h1, "already present", "group", "add", "ops", "--to", "h1")
	f.twice(h1, "no change", "group", "members", "add", "ops", "alice", "--to", "h1")
	f.twice(h1, "already granted", "sudo", "grant", "ops", "--nopasswd", "--to", "h1")
	if out, err := loginAs(t, h1, "alice", key, "sudo", "-n", "id", "-u"); err != nil || out != "0" {
		t.Fatalf("sudo -n id -u as alice: %q, %v", out, err)
	}
	if got := h1.MustExec(t, "stat", "-c", "%a %U", "/etc/sudoers.d/sera-ops"); got != "440 root\n" {
		t.Errorf("sudoers drop-in mode: %q", got)
	}
	f.twice(h1, "already revoked", "sudo", "revoke", "ops", "--to", "h1")
	if out, err := loginAs(t, h1, "alice", key, "sudo", "-n", "id", "-u"); err == nil {
		t.Fatalf("sudo still works after revoke: %q", out)
	}

	// 3. lock refuses the login; unlock restores it.
	f.twice(h1, "already locked", "user", "lock", "alice", "--to", "h1")
	mustNotLogin(t, h1, "alice", key)
	f.twice(h1, "not locked", "user", "unlock", "alice", "--to", "h1")
	mustLogin(t, h1, "alice", key)

	// 4. keys: remove refuses, add restores; a hand-added key survives
	// add/remove and goes only with sync --exclusive.
	handKey, handPub := f.sshKey("hand")
	h1.MustExec(t, "sh", "-c", `echo "$1" >> /home/alice/.ssh/authorized_keys`, "sh", handPub)
	f.twice(h1, "no change", "key", "remove", "alice", pub, "--to", "h1")
	mustNotLogin(t, h1, "alice", key)
	mustLogin(t, h1, "alice", handKey)
	f.twice(h1, "no change", "key", "add", "alice", pub, "--to", "h1")
	mustLogin(t, h1, "alice", key)
	mustLogin(t, h1, "alice", handKey)
	out := f.mustSera("key", "list", "alice", "--to", "h1")
	if !strings.Contains(out, " sera ") || !strings.Contains(out, " other ") {
		t.Errorf("key list: %s", out)
	}
	f.twice(h1, "no change", "key", "sync", "alice", pub, "--exclusive", "--to", "h1")
	mustLogin(t, h1, "alice", key)
	mustNotLogin(t, h1, "alice", handKey)

	// 5. del: no account, a root-only archive of the home.
	f.twice(h1, "already absent", "user", "del", "alice", "--to", "h1")
	if _, _, code, _ := h1.Run(context.Background(), "getent", "passwd", "alice"); code == 0 {
		t.Fatal("alice still exists after user del")
	}
	archive := h1.MustExec(t, "sh", "-c", "stat -c '%a %U %s' /var/lib/sera/archive/alice-*.tar.gz")
	if !strings.HasPrefix(archive, "600 root ") {
		t.Errorf("archive: %q", archive)
	}
	if ls := h1.MustExec(t, "sh", "-c", "tar -tzf /var/lib/sera/archive/alice-*.tar.gz"); !strings.Contains(ls, "./.ssh/authorized_keys") {
		t.Errorf("archive holds: %s", ls)
	}
	mustNotLogin(t, h1, "alice", key)
}

// TestAccountBadInputsOnRealHost: each bad input is refused with a clear
// error and leaves the host exactly as it was.
func TestAccountBadInputsOnRealHost(t *testing.T) {
	t.Parallel()
	f := newFleet(t, "h1")
	h1 := f.hosts["h1"]
	_, pub := f.sshKey("k")
	// bob's ~/.ssh is a link to /etc: sera must not write through it.
	h1.MustExec(t, "useradd", "-m", "bob")
	h1.MustExec(t, "ln", "-s", "/etc", "/home/bob/.ssh")
	before := snapshot(t, h1)
	etc := h1.MustExec(t, "ls", "-la", "/etc")
	long := strings.Repeat("a", 33)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"user", "add", "root"}, "root is never managed"},
		{[]string{"user", "add", "daemon"}, "refusing user daemon"},
		{[]string{"user", "add", "--", "-rf"}, "invalid user name"},
		{[]string{"user", "add", "a;b"}, "invalid user name"},
		{[]string{"user", "add", "../x"}, "invalid user name"},
		{[]string{"user", "add", "Alice"}, "invalid user name"},
		{[]string{"user", "add", "a b"}, "invalid user name"},
		{[]string{"user", "add", long}, "longer than 32 bytes"},
		{[]string{"user", "add", "carol", "--uid", "0"}, "refusing --uid 0"},
		{[]string{"user", "add", "carol", "--uid", "999"}, "refusing --uid 999"},
		{[]string{"user", "add", "carol", "--key", "ssh-ed25519 notbase64"}, "invalid key"},
		{[]string{"user", "add", "carol", "--key", `command="/bin/sh" ` + pub}, "carries options"},
		{[]string{"user", "add", "carol", "--password-hash", "secret"}, "not a crypt(3) hash"},
		{[]string{"user", "lock", "daemon"}, "refusing user daemon"},
		{[]string{"key", "add", "bob", pub}, "refusing"},
	}
	for _, c := range cases {
		// --to goes before a "--", after which everything is an argument.
		args := append([]string{}, c.args[:2]...)
		args = append(append(args, "--to", "h1"), c.args[2:]...)
		errOut := f.failSera(args...)
		if !strings.Contains(errOut, c.want) {
			t.Errorf("sera %s: stderr %q, want %q", strings.Join(c.args, " "), errOut, c.want)
		}
	}
	if after := snapshot(t, h1); after != before {
		t.Errorf("bad inputs changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if after := h1.MustExec(t, "ls", "-la", "/etc"); after != etc {
		t.Errorf("/etc changed through bob's symlinked .ssh")
	}
	if _, _, code, _ := h1.Run(context.Background(), "getent", "passwd", "carol"); code == 0 {
		t.Error("carol was created")
	}
}
