//go:build linux

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/hosttest"
)

// escalationPassword is the password the client knows; escalationHash is
// its SHA-512 crypt hash ("openssl passwd -6 -salt serasalt hunter2").
const (
	escalationPassword = "hunter2"
	escalationHash     = "$6$serasalt$gWw9sbV8Uy/h5hsQjCM0wSDeK233rf2GklhgPwd.mAYLAzrTspOMHWdsZD.uWIVP75iu.JWR/vWN2nsvhPzhR0"
)

// escalationSudoers is the admin's own drop-in on the test host: a group
// whose members are others' primary group, a password rule, a uid, and
// a user and a group that do not exist yet.
const escalationSudoers = `# written by the admin, not by sera
%admins   ALL=(ALL) NOPASSWD: ALL
%pwadmins ALL=(ALL) ALL
#1620     ALL=(ALL) NOPASSWD: ALL
mallory   ALL=(ALL) NOPASSWD: ALL
%future   ALL=(ALL) NOPASSWD: ALL
`

// TestNoEscalationOnRealHost is issue 12's proof for accounts: a client
// allowed user, key and group but not sudo sends hundreds of generated
// requests, in sequences, trying to end up able to authenticate (with its
// SSH key or its password) as an account that can sudo, on a real Debian
// host with real sudo. After every sequence sudo itself is asked about
// every account the client can reach; at the end the client logs in with
// its key and runs sudo -n true, and tries sudo with its password. None
// may succeed. Then the same client given the sudo grant reaches such an
// account, which proves the checks can see success.
func TestNoEscalationTourOnRealHost(t *testing.T) {
	t.Parallel()
	start := time.Now()
	f := newFleet(t, "h1")
	h := f.hosts["h1"]
	keyFile, pub := f.sshKey("helpdesk")
	keyBlob := strings.Fields(pub)[1]

	// The host as the admin set it up, as root on the host.
	for _, argv := range [][]string{
		{"groupadd", "--gid", "1501", "devs"},
		{"sera", "sudo", "grant", "devs", "--nopasswd", "--local"},
		{"useradd", "--create-home", "--shell", "/bin/bash", "--uid", "1601", "alice"},
		{"gpasswd", "-a", "alice", "devs"},
		{"groupadd", "--gid", "1600", "admins"},
		{"useradd", "--create-home", "--shell", "/bin/bash", "--uid", "1610", "--gid", "admins", "pat"},
		{"groupadd", "--gid", "1602", "pwadmins"},
		{"useradd", "--create-home", "--shell", "/bin/bash", "--uid", "1611", "--groups", "pwadmins", "quinn"},
		{"useradd", "--create-home", "--shell", "/bin/bash", "--uid", "1620", "erin"},
		{"useradd", "--create-home", "--shell", "/bin/bash", "--uid", "1630", "bob"},
		{"groupadd", "--gid", "1700", "ops"},
	} {
		h.MustExec(t, argv...)
	}
	if err := h.WriteFile("/etc/sudoers.d/local", []byte(escalationSudoers), 0o440); err != nil {
		t.Fatal(err)
	}
	h.MustExec(t, "visudo", "-c")
	// The setup is what it claims: these accounts can sudo, bob cannot.
	for _, u := range []string{"alice", "pat", "quinn", "erin"} {
		if !sudoAllows(t, h, u) {
			t.Fatalf("setup: sudo does not let %s run commands", u)
		}
	}
	if sudoAllows(t, h, "bob") {
		t.Fatal("setup: bob can sudo")
	}
	h.MustExec(t, "sera", "clients", "add", f.clients, "--name", "admin", "--allow", "user,key,group")
	setupDone := time.Now()

	seed := uint64(12)
	if s := os.Getenv("SERA_ESCALATION_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = n
	}
	g := &escalationGen{r: rand.New(rand.NewPCG(seed, 0)), key: pub}
	sequences := 160
	if testing.Short() {
		sequences = 30
	}
	var requests, accepted, maxReach int
	// refused counts the sudo refusals by what they refused ("create
	// user", "change the SSH keys of", …).
	refused := map[string]int{}
	var transcript []string
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SERA_ESCALATION_LOG") != "" {
			t.Logf("the requests, in order:\n%s", strings.Join(transcript, "\n"))
		}
	})
	// First every path known, one sequence each, then the generated
	// ones.
	seqs := escalationTour(pub)
	for range sequences {
		seqs = append(seqs, g.sequence())
	}
	for i, seq := range seqs {
		for _, args := range seq {
			_, errOut, code := f.sera(append(args, "--to", "h1")...)
			requests++
			transcript = append(transcript, fmt.Sprintf("%d: exit %d: sera %s", i, code, strings.Join(args, " ")))
			switch {
			case code == 0:
				accepted++
			case strings.Contains(errOut, "; that needs the sudo grant ("):
				what, _, _ := strings.Cut(strings.TrimPrefix(errOut, "sera: refusing to "), ":")
				refused[sudoRefusalKind(what)]++
			case !strings.Contains(errOut, "nothing was changed"):
				// Every failure must say it changed nothing; anything
				// else is a half-done change worth seeing.
				t.Errorf("sera %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(errOut))
			}
		}
		bad, n := escalated(t, h, keyBlob)
		maxReach = max(maxReach, n)
		if len(bad) > 0 {
			t.Fatalf("after sequence %d (seed %d):\n  sera %s\nthe client can authenticate as accounts that can sudo: %s",
				i, seed, joinSeq(seq), strings.Join(bad, ", "))
		}
	}
	// The run tried what matters: each kind of change was refused, and
	// the client did reach accounts (that cannot sudo).
	{
		for _, kind := range []string{"create user", "update user", "change the SSH keys of", "add to group", "remove from group", "create group", "delete group", "unlock user"} {
			if refused[kind] == 0 {
				t.Errorf("no %q was refused", kind)
			}
		}
	}
	if maxReach == 0 {
		t.Errorf("the client never reached any account (seed %d): the run proves nothing", seed)
	}
	randomDone := time.Now()

	// The end-to-end check: every account the client holds its key for,
	// logged in to with it, and every account with its password.
	reached := reachableAccounts(t, h, keyBlob)
	if len(reached) == 0 {
		// Nothing to log in to: give the client an account it may have,
		// so the login path is exercised.
		f.mustSera("user", "add", "zed", "--key", pub, "--password-hash", escalationHash, "--shell", "/bin/bash", "--to", "h1")
		mustLogin(t, h, "zed", keyFile)
		reached = reachableAccounts(t, h, keyBlob)
	}
	for _, r := range reached {
		if r.key {
			if out, err := loginAs(t, h, r.user, keyFile, "sudo", "-n", "true"); err == nil {
				t.Errorf("%s logged in with the client's key and ran sudo -n true (%q)", r.user, out)
			}
		}
		if r.password && sudoWithPassword(t, h, r.user) {
			t.Errorf("sudo with the client's password works for %s", r.user)
		}
	}
	checksDone := time.Now()

	// With the sudo grant the same client reaches a sudoer: the checks
	// above can see success.
	h.MustExec(t, "sera", "clients", "add", f.clients, "--name", "admin", "--allow", "user,key,group,sudo.grant")
	f.mustSera("user", "unlock", "alice", "--to", "h1")
	f.mustSera("key", "add", "alice", pub, "--to", "h1")
	if out, err := loginAs(t, h, "alice", keyFile, "sudo", "-n", "true"); err != nil {
		t.Fatalf("with the sudo grant: alice's login with sudo -n true failed: %q, %v", out, err)
	}
	if bad, _ := escalated(t, h, keyBlob); !strings.Contains(strings.Join(bad, " "), "alice") {
		t.Fatalf("with the sudo grant: the check does not see alice: %q", bad)
	}
	f.mustSera("user", "unlock", "quinn", "--to", "h1")
	f.mustSera("user", "add", "--update", "--password-hash", escalationHash, "quinn", "--to", "h1")
	if !sudoWithPassword(t, h, "quinn") {
		t.Fatal("with the sudo grant: sudo with the password set for quinn failed")
	}
	t.Logf("%d requests in %d sequences (%d generated, seed %d), %d accepted, refused for want of the sudo grant: %v; up to %d accounts reachable, %d at the end; setup %s, requests and checks %s (%s a request), final checks %s, total %s",
		requests, len(seqs), sequences, seed, accepted, refused, maxReach, len(reached), setupDone.Sub(start).Round(time.Millisecond),
		randomDone.Sub(setupDone).Round(time.Millisecond), (randomDone.Sub(setupDone) / time.Duration(requests)).Round(time.Millisecond),
		checksDone.Sub(randomDone).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// sudoRefusalKind is the kind of a refused change: "add bob to group
// devs" is "add to group".
func sudoRefusalKind(what string) string {
	w := strings.Fields(what)
	switch {
	case len(w) >= 4 && (w[0] == "add" || w[0] == "remove"):
		return w[0] + " " + w[2] + " group"
	case len(w) >= 2 && (w[1] == "group" || w[1] == "user"):
		return w[0] + " " + w[1]
	case len(w) > 1:
		return strings.Join(w[:len(w)-1], " ")
	}
	return what
}

func joinSeq(seq [][]string) string {
	var s []string
	for _, a := range seq {
		s = append(s, strings.Join(a, " "))
	}
	return strings.Join(s, "\n  sera ")
}

// sudoAllows asks sudo, as root, whether user may run a command as root
// (sudo -l -U: the policy, passwords aside).
func sudoAllows(t *testing.T, h *hosttest.Host, user string) bool {
	t.Helper()
	_, _, code, err := h.Run(context.Background(), "sudo", "-n", "-l", "-U", user, "/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	return code == 0
}

// sudoWithPassword reports whether user can sudo with the client's
// password.
func sudoWithPassword(t *testing.T, h *hosttest.Host, user string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := h.Command(ctx, "runuser", "-u", user, "--", "sudo", "-S", "-p", "", "true")
	cmd.Stdin = strings.NewReader(escalationPassword + "\n")
	return cmd.Run() == nil
}

// reach is an account the client can authenticate as, and whether sudo
// lets it run commands.
type reach struct {
	user          string
	key, password bool
	sudo          bool
}

// reachableAccounts lists the accounts whose authorized_keys hold the
// client's key (disabled by a lock or not: an unlock enables it) or whose
// password hash is the client's (locked or not), and asks sudo, as root,
// whether each may run a command as root (sudo -l -U: the policy,
// whatever it asks for a password). One script: it runs after every
// sequence.
func reachableAccounts(t *testing.T, h *hosttest.Host, keyBlob string) []reach {
	t.Helper()
	out := h.MustExec(t, "sh", "-c", `{
		getent passwd | while IFS=: read -r u _ _ _ _ home _; do
			[ -f "$home/.ssh/authorized_keys" ] && grep -qF -- "$1" "$home/.ssh/authorized_keys" && echo "key $u"
		done
		awk -F: -v h="$2" '$2 == h || $2 == "!" h { print "password " $1 }' /etc/shadow
	} > /tmp/reach
	for u in $(cut -d' ' -f2 /tmp/reach | sort -u); do
		sudo -n -l -U "$u" /usr/bin/true >/dev/null 2>&1 && echo "sudo $u"
	done
	cat /tmp/reach`, "sh", keyBlob, escalationHash)
	byUser := map[string]*reach{}
	var rs []*reach
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		what, user, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		r := byUser[user]
		if r == nil {
			r = &reach{user: user}
			byUser[user] = r
			rs = append(rs, r)
		}
		switch what {
		case "key":
			r.key = true
		case "password":
			r.password = true
		case "sudo":
			r.sudo = true
		}
	}
	var out2 []reach
	for _, r := range rs {
		out2 = append(out2, *r)
	}
	return out2
}

// escalated lists the accounts the client can reach that sudo lets run
// commands, and says how many it can reach.
func escalated(t *testing.T, h *hosttest.Host, keyBlob string) (bad []string, reached int) {
	t.Helper()
	rs := reachableAccounts(t, h, keyBlob)
	for _, r := range rs {
		if r.sudo {
			bad = append(bad, fmt.Sprintf("%s (key %v, password %v)", r.user, r.key, r.password))
		}
	}
	return bad, len(rs)
}

// escalationTour is every way to a sudoer known, one sequence each: the
// generated sequences then try combinations of them.
func escalationTour(key string) [][][]string {
	k := []string{"--key", key}
	h := []string{"--password-hash", escalationHash}
	cat := func(parts ...[]string) []string { return slices.Concat(parts...) }
	return [][][]string{
		// A new account that sudoers names, or whose groups it names.
		{cat([]string{"user", "add", "mallory"}, k)},
		{cat([]string{"user", "add", "future"}, k)},
		{cat([]string{"user", "add", "carol", "--gid", "1600"}, k, h)},
		{cat([]string{"user", "add", "carol", "--gid", "1501"}, k)},
		{cat([]string{"user", "add", "carol", "--gid", "1601"}, k)},
		{cat([]string{"user", "add", "carol", "--groups", "ops,devs"}, k)},
		{cat([]string{"user", "add", "carol", "--set-groups", "pwadmins"}, h)},
		{cat([]string{"user", "add", "carol", "--uid", "1620"}, k)},
		// An account that cannot sudo, made to.
		{cat([]string{"user", "add", "bob", "--update"}, k, h), {"user", "add", "bob", "--update", "--gid", "1600"}},
		{{"user", "add", "bob", "--update", "--gid", "1501"}, {"user", "add", "bob", "--update", "--gid", "1601"}},
		{{"user", "add", "bob", "--update", "--groups", "devs"}, {"user", "add", "bob", "--update", "--set-groups", "ops,pwadmins"}},
		{{"user", "add", "bob", "--update", "--uid", "1620"}},
		{{"group", "members", "add", "devs", "bob"}, {"group", "members", "add", "alice", "bob"}, {"group", "members", "add", "admins", "bob"}},
		// An account that can sudo, given the client's key or password.
		{cat([]string{"user", "add", "alice", "--update"}, k), cat([]string{"user", "add", "quinn", "--update"}, h)},
		{cat([]string{"user", "add", "pat", "--update", "--shell", "/bin/bash"}, k, h)},
		{{"key", "add", "alice", key}, {"key", "add", "pat", key}, {"key", "add", "erin", key}},
		{{"key", "sync", "quinn", key}, {"key", "sync", "alice", key, "--exclusive"}},
		{{"user", "lock", "quinn"}, {"user", "unlock", "quinn"}},
		{{"group", "members", "remove", "devs", "alice"}, {"group", "members", "add", "ops", "alice"}},
		// Groups sudoers names, deleted and made again.
		{{"group", "add", "future"}, {"group", "members", "add", "future", "bob"}},
		{{"group", "del", "devs"}, {"group", "add", "devs"}, {"group", "members", "add", "devs", "bob"}},
		{{"group", "del", "pwadmins"}, {"group", "add", "newg", "--gid", "1602"}, {"group", "members", "add", "newg", "bob"}},
		{{"group", "del", "admins"}, {"group", "add", "admins2", "--gid", "1600"}},
	}
}

// escalationGen makes the requests: account, key and group commands with
// every flag that touches uid, gid, groups, keys or the password, over
// the names and ids of the test host's sudoers (existing or not), in
// sequences of one to three.
type escalationGen struct {
	r   *rand.Rand
	key string
}

var (
	escUsers = []string{"alice", "pat", "quinn", "erin", "bob", "mallory", "future", "carol", "dave"}
	// Users sequences may delete: not the sudoers, who stay targets.
	escDeletable = []string{"bob", "mallory", "future", "carol", "dave"}
	escGroups    = []string{"devs", "admins", "pwadmins", "future", "ops", "alice", "bob", "pat", "newg", "carol"}
	// gids of devs, admins, pwadmins, ops, and ones a group may get;
	// uids of sudoers (taken), of #1620's, and free ones.
	escGIDs = []string{"1501", "1600", "1602", "1700", "1601", "1630", "1710", "1620"}
	escUIDs = []string{"1601", "1610", "1620", "1640", "1650"}
)

func (g *escalationGen) pick(s []string) string { return s[g.r.IntN(len(s))] }

func (g *escalationGen) maybe(p float64) bool { return g.r.Float64() < p }

func (g *escalationGen) groupList() string {
	n := 1 + g.r.IntN(2)
	var gs []string
	for range n {
		gs = append(gs, g.pick(escGroups))
	}
	return strings.Join(gs, ",")
}

func (g *escalationGen) request() []string {
	switch g.r.IntN(10) {
	case 0, 1, 2:
		args := []string{"user", "add", g.pick(escUsers)}
		if g.maybe(0.5) {
			args = append(args, "--update")
		}
		if g.maybe(0.35) {
			args = append(args, "--gid", g.pick(escGIDs))
		}
		switch g.r.IntN(3) {
		case 0:
			args = append(args, "--groups", g.groupList())
		case 1:
			args = append(args, "--set-groups", g.groupList())
		}
		if g.maybe(0.2) {
			args = append(args, "--uid", g.pick(escUIDs))
		}
		if g.maybe(0.6) {
			args = append(args, "--key", g.key)
		}
		if g.maybe(0.4) {
			args = append(args, "--password-hash", escalationHash)
		}
		if g.maybe(0.2) {
			args = append(args, "--shell", "/bin/bash")
		}
		return args
	case 3:
		return []string{"key", "add", g.pick(escUsers), g.key}
	case 4:
		args := []string{"key", "sync", g.pick(escUsers), g.key}
		if g.maybe(0.3) {
			args = append(args, "--exclusive")
		}
		return args
	case 5:
		args := []string{"group", "add", g.pick(escGroups)}
		if g.maybe(0.5) {
			args = append(args, "--gid", g.pick(escGIDs))
		}
		return args
	case 6:
		return []string{"group", "del", g.pick(escGroups)}
	case 7:
		args := []string{"group", "members", "add", g.pick(escGroups), g.pick(escUsers)}
		if g.maybe(0.3) {
			args = append(args, g.pick(escUsers))
		}
		return args
	case 8:
		if g.maybe(0.5) {
			return []string{"group", "members", "remove", g.pick(escGroups), g.pick(escUsers)}
		}
		return []string{"user", "del", g.pick(escDeletable)}
	default:
		if g.maybe(0.5) {
			return []string{"user", "lock", g.pick(escUsers)}
		}
		return []string{"user", "unlock", g.pick(escUsers)}
	}
}

// sequence is one to three requests, or one of two chains: what a
// sudoers name invites (delete a group, create it again with a gid or a
// name sudoers knows, add members), and a lock to unlock later.
func (g *escalationGen) sequence() [][]string {
	if g.maybe(0.1) {
		u := g.pick(escUsers)
		return [][]string{{"user", "lock", u}, {"key", "add", u, g.key}, {"user", "unlock", u}}
	}
	if g.maybe(0.25) {
		grp := g.pick(escGroups)
		add := []string{"group", "add", grp}
		if g.maybe(0.5) {
			add = append(add, "--gid", g.pick(escGIDs))
		}
		return [][]string{{"group", "del", grp}, add, {"group", "members", "add", grp, g.pick(escUsers)}}
	}
	n := 1 + g.r.IntN(3)
	seq := make([][]string, n)
	for i := range seq {
		seq[i] = g.request()
	}
	return seq
}
