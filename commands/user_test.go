package commands

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/accounts"
)

// acctOwner checks a path's type bits, permissions and owner.
func acctOwner(t *testing.T, p string, dir bool, perm os.FileMode, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.IsDir() != dir || fi.Mode().Perm() != perm || fi.Mode()&os.ModeSymlink != 0 || int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s: %v owned by %d:%d, want dir=%v %v owned by %d:%d", p, fi.Mode(), st.Uid, st.Gid, dir, perm, uid, gid)
	}
}

// acctCalls checks the argv the runner saw, in order.
func acctCalls(t *testing.T, f *accountsFixture, want ...[]string) {
	t.Helper()
	got := f.Runner.Calls()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ran\n  %q\nwant\n  %q", got, want)
	}
}

func acctContains(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s does not say %q:\n%s", what, w, got)
		}
	}
}

func TestUserAddNew(t *testing.T) {
	k1, pk1 := acctKey(t, "carol@laptop")
	k2, pk2 := acctKey(t, "carol@phone")
	const hash = "$y$j9T$abcdefghijklmnop$0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcde"
	tests := []struct {
		name      string
		flags     []string
		useradd   []string // between "useradd --create-home" and "-- carol"
		shown     string   // the useradd step as printed
		keyLines  []string // the managed block, if any
		wantUID   int
		wantGID   int
		wantGroup []string
	}{
		{
			name: "minimal", useradd: nil, shown: "useradd --create-home -- carol",
			wantUID: 1002, wantGID: 1004,
		},
		{
			name:  "every attribute",
			flags: []string{"--uid=1500", "--gid=1003", "--groups=ops,dev", "--shell=/bin/bash", "--comment=Carol Example", "--key=" + k1, "--key=" + k2},
			useradd: []string{"--uid", "1500", "--gid", "1003", "--groups", "ops,dev", "--shell", "/bin/bash",
				"--comment", "Carol Example"},
			shown:    "useradd --create-home --uid 1500 --gid 1003 --groups ops,dev --shell /bin/bash --comment 'Carol Example' -- carol",
			keyLines: []string{k1, k2},
			wantUID:  1500, wantGID: 1003, wantGroup: []string{"ops", "dev"},
		},
		{
			name:     "set-groups on a new user, flags as separate words, a key with options",
			flags:    []string{"--set-groups", "dev", "--key", k1, "--options", `from="10.0.0.0/8",no-pty`},
			useradd:  []string{"--groups", "dev"},
			shown:    "useradd --create-home --groups dev -- carol",
			keyLines: []string{`from="10.0.0.0/8",no-pty ` + k1},
			wantUID:  1002, wantGID: 1004, wantGroup: []string{"dev"},
		},
		{
			name:     "the same key twice is written once",
			flags:    []string{"--key=" + k1, "--key=" + k1},
			shown:    "useradd --create-home -- carol",
			keyLines: []string{k1},
			wantUID:  1002, wantGID: 1004,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			argv := append([]string{"user", "add"}, tt.flags...)
			argv = append(argv, "--", "carol")
			out := f.ok(argv...)

			want := append(append([]string{"useradd", "--create-home"}, tt.useradd...), "--", "carol")
			acctCalls(t, f, want)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if lines[0] != "done: "+tt.shown {
				t.Errorf("first line %q, want %q", lines[0], "done: "+tt.shown)
			}
			u := f.user("carol")
			if u.UID != tt.wantUID || u.GID != tt.wantGID || u.Home != "/home/carol" {
				t.Errorf("carol is %+v, want uid %d gid %d", u, tt.wantUID, tt.wantGID)
			}
			if got := f.db().GroupsOf("carol"); !reflect.DeepEqual(got, tt.wantGroup) {
				t.Errorf("carol's groups %q, want %q", got, tt.wantGroup)
			}
			if tt.keyLines == nil {
				if len(lines) != 1 {
					t.Errorf("output %q, want only the useradd step", out)
				}
				if _, err := os.Lstat(f.p("home/carol/.ssh")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("~carol/.ssh was created without keys: %v", err)
				}
			} else {
				if len(lines) != 2 || !strings.HasPrefix(lines[1], "done: write ~carol/.ssh/authorized_keys (0600 carol): add "+acctFP(pk1)+" (ssh-ed25519 carol@laptop)") {
					t.Errorf("output %q, want the write of the keys after useradd", out)
				}
				if len(tt.keyLines) == 2 && !strings.Contains(lines[1], "; add "+acctFP(pk2)+" (ssh-ed25519 carol@phone)") {
					t.Errorf("output %q does not name the second key", out)
				}
				if got, want := f.keys("carol"), acctBlock(tt.keyLines...); got != want {
					t.Errorf("authorized_keys\n%s\nwant\n%s", got, want)
				}
				acctOwner(t, f.p("home/carol/.ssh"), true, 0o700, u.UID, u.GID)
				acctOwner(t, f.p("home/carol/.ssh/authorized_keys"), false, 0o600, u.UID, u.GID)
				ents, _ := os.ReadDir(f.p("home/carol/.ssh"))
				if len(ents) != 1 {
					t.Errorf("~carol/.ssh holds %d entries, want only authorized_keys", len(ents))
				}
			}

			// The same command again: already so, nothing run, no file
			// touched.
			f.Runner.Reset()
			snap := f.snapshot()
			if out := f.ok(argv...); out != "user carol already present\n" {
				t.Errorf("second run printed %q, want %q", out, "user carol already present\n")
			}
			f.noCalls()
			f.unchanged(snap)
		})
	}
}

// An existing user with other attributes: without --update nothing is
// run and the error names the difference; with --update exactly the
// usermod for it runs, and then the same command is "already present".
func TestUserAddExisting(t *testing.T) {
	k1, pk1 := acctKey(t, "alice@new")
	const hash2 = "$6$othersalt$ZZZZfXbYWm5mKUZsGhuM0vDz9c4l3cX0n2gHq9tJ8uJ4pGZVt0QeO9X6c0yQzS9c3s8ZqW7kM0qN1rB2pD5fE6."
	tests := []struct {
		name    string
		flags   []string
		diff    string   // how the error names the difference
		usermod []string // the usermod argv --update runs, nil for none
		shown   []string // substrings of the --update output
		check   func(t *testing.T, f *accountsFixture)
	}{
		{
			name: "shell", flags: []string{"--shell=/bin/sh"},
			diff:    "shell /bin/bash (want /bin/sh)",
			usermod: []string{"usermod", "--shell", "/bin/sh", "--", "alice"},
			shown:   []string{"done: usermod --shell /bin/sh -- alice"},
			check: func(t *testing.T, f *accountsFixture) {
				if u := f.user("alice"); u.Shell != "/bin/sh" {
					t.Errorf("shell %s", u.Shell)
				}
			},
		},
		{
			name: "comment", flags: []string{"--comment=Alice B. Example"},
			diff:    `comment "Alice Example" (want "Alice B. Example")`,
			usermod: []string{"usermod", "--comment", "Alice B. Example", "--", "alice"},
			shown:   []string{"done: usermod --comment 'Alice B. Example' -- alice"},
		},
		{
			name: "uid", flags: []string{"--uid=1500"},
			diff:    "uid 1000 (want 1500)",
			usermod: []string{"usermod", "--uid", "1500", "--", "alice"},
			check: func(t *testing.T, f *accountsFixture) {
				acctOwner(t, f.p("home/alice/notes.txt"), false, 0o600, 1500, 1000)
			},
		},
		{
			name: "primary group", flags: []string{"--gid=1003"},
			diff:    "primary gid 1000 (want 1003)",
			usermod: []string{"usermod", "--gid", "1003", "--", "alice"},
		},
		{
			name: "groups add", flags: []string{"--groups=ops,dev"},
			diff:    "not in groups dev",
			usermod: []string{"usermod", "--append", "--groups", "dev", "--", "alice"},
			check: func(t *testing.T, f *accountsFixture) {
				if got := f.db().GroupsOf("alice"); !reflect.DeepEqual(got, []string{"sudo", "ops", "dev"}) {
					t.Errorf("alice's groups %q, want sudo, ops, dev", got)
				}
			},
		},
		{
			name: "set-groups replaces the managed groups and keeps sudo", flags: []string{"--set-groups=dev"},
			diff:    "groups ops (want dev)",
			usermod: []string{"usermod", "--groups", "dev,sudo", "--", "alice"},
			shown:   []string{"done: usermod --groups dev,sudo -- alice\nnote: kept system groups sudo (not managed by sera)\n"},
			check: func(t *testing.T, f *accountsFixture) {
				if got := f.db().GroupsOf("alice"); !reflect.DeepEqual(got, []string{"sudo", "dev"}) {
					t.Errorf("alice's groups %q, want sudo and dev", got)
				}
				if g := f.db().Group("sudo"); g.GID != 27 || !slices.Contains(g.Members, "alice") {
					t.Errorf("alice was dropped from sudo: %+v", g)
				}
			},
		},
		{
			name: "password hash", flags: []string{"--password-hash=" + hash2},
			diff:    "password hash",
			usermod: []string{"chpasswd", "--encrypted"},
			shown:   []string{"done: chpasswd --encrypted (the hash of alice on its standard input)"},
			check: func(t *testing.T, f *accountsFixture) {
				if sh := f.shadow("alice"); sh.Hash != hash2 {
					t.Errorf("hash %q", sh.Hash)
				}
			},
		},
		{
			name: "a missing key", flags: []string{"--key=" + k1},
			diff:  "1 key(s) missing",
			shown: []string{"done: write /home/alice/.ssh/authorized_keys (0600 alice): add " + acctFP(pk1)},
			check: func(t *testing.T, f *accountsFixture) {
				if got := f.keys("alice"); got != acctBlock(k1) {
					t.Errorf("authorized_keys %q", got)
				}
				acctOwner(t, f.p("home/alice/.ssh/authorized_keys"), false, 0o600, 1000, 1000)
			},
		},
		{
			name: "several at once", flags: []string{"--shell=/bin/sh", "--comment=A"},
			diff:    `shell /bin/bash (want /bin/sh), comment "Alice Example" (want "A")`,
			usermod: []string{"usermod", "--shell", "/bin/sh", "--comment", "A", "--", "alice"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			argv := append(append([]string{"user", "add"}, tt.flags...), "--", "alice")

			snap := f.snapshot()
			r := f.run(argv...)
			if r.resolveErr != nil || r.status != cli.ExitFailure {
				t.Fatalf("want a host-side failure:\n%s", r)
			}
			acctContains(t, "the error", r.stderr, "user alice exists with other attributes: "+tt.diff,
				"pass --update", "nothing was changed")
			f.noCalls()
			f.unchanged(snap)

			upd := append(append([]string{"user", "add", "--update"}, tt.flags...), "--", "alice")
			out := f.ok(upd...)
			if tt.usermod == nil {
				f.noCalls()
			} else {
				acctCalls(t, f, tt.usermod)
			}
			acctContains(t, "the output", out, tt.shown...)
			if tt.check != nil {
				tt.check(t, f)
			}

			f.Runner.Reset()
			snap = f.snapshot()
			for _, again := range [][]string{upd, argv} {
				if out := f.ok(again...); out != "user alice already present\n" {
					t.Errorf("%q printed %q, want already present", again, out)
				}
			}
			f.noCalls()
			f.unchanged(snap)
		})
	}
}

// The same attributes, spelled as they are, are "already present" for an
// existing user (sudo is left alone by --set-groups of the same groups).
func TestUserAddExistingSame(t *testing.T) {
	f := newAccountsFixture(t)
	k1, _ := acctKey(t, "a")
	f.writeKeys("alice", "# alice's own\n"+acctBlock(k1))
	snap := f.snapshot()
	for _, argv := range [][]string{
		{"user", "add", "--", "alice"},
		{"user", "add", "--uid=1000", "--gid=1000", "--shell=/bin/bash", "--comment=Alice Example", "--", "alice"},
		{"user", "add", "--groups=ops", "--password-hash=" + acctShadowHash, "--key=" + k1, "--", "alice"},
		{"user", "add", "--set-groups=ops", "--update", "--", "alice"},
	} {
		if out := f.ok(argv...); out != "user alice already present\n" {
			t.Errorf("%q printed %q", argv, out)
		}
	}
	f.noCalls()
	f.unchanged(snap)
}

func TestUserPasswordHashIsSecret(t *testing.T) {
	const hash = "$6$saltsalt$SECRETSECRETmKUZsGhuM0vDz9c4l3cX0n2gHq9tJ8uJ4pGZVt0QeO9X6c0yQzS9c3s8ZqW7kM0qN1rB2pD5fE6."
	h := &Handler{Host: &Host{}}
	for _, tt := range []struct{ argv, want []string }{
		{[]string{"user", "add", "--password-hash", hash, "--", "carol"}, []string{"user", "add", "--password-hash", "***", "--", "carol"}},
		{[]string{"user", "add", "--password-hash=" + hash, "--", "carol"}, []string{"user", "add", "--password-hash=***", "--", "carol"}},
		{[]string{"user", "add", "--uid=1500", "--password-hash=" + hash, "--update", "--", "carol"}, []string{"user", "add", "--uid=1500", "--password-hash=***", "--update", "--", "carol"}},
	} {
		if got := h.Redact(tt.argv); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Redact(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}

	t.Run("new user", func(t *testing.T) {
		f := newAccountsFixture(t)
		argv := []string{"user", "add", "--password-hash=" + hash, "--", "carol"}
		out := f.ok(append(argv[:2:2], append([]string{"--dry-run"}, argv[2:]...)...)...)
		if out != "would: useradd --create-home -- carol\nwould: chpasswd --encrypted (the hash of carol on its standard input)\n" || strings.Contains(out, hash) {
			t.Errorf("dry run printed %q", out)
		}
		out = f.ok(argv...)
		if out != "done: useradd --create-home -- carol\ndone: chpasswd --encrypted (the hash of carol on its standard input)\n" {
			t.Errorf("printed %q", out)
		}
		// The hash is on no program's argv (readable in /proc by anyone).
		acctCalls(t, f, []string{"useradd", "--create-home", "--", "carol"}, []string{"chpasswd", "--encrypted"})
		if sh := f.shadow("carol"); sh.Hash != hash {
			t.Errorf("carol's hash is %q, want the one given", sh.Hash)
		}
	})
	t.Run("failure", func(t *testing.T) {
		f := newAccountsFixture(t)
		f.Runner.fail = func(argv []string) error { return &acctExit{code: 1, msg: "useradd: cannot lock /etc/passwd"} }
		snap := f.snapshot()
		stderr := f.fail("user", "add", "--password-hash", hash, "--", "carol")
		acctContains(t, "the error", stderr, "failed to useradd --create-home -- carol", "cannot lock /etc/passwd", "nothing was changed")
		if strings.Contains(stderr, hash) {
			t.Errorf("the error shows the hash: %s", stderr)
		}
		f.unchanged(snap)
	})
}

// acctLockCase is a user's state before "user lock" and what lock and unlock
// must run.
type acctLockCase struct {
	name    string
	user    string
	hash    string
	expires int
	lock    [][]string
	unlock  [][]string
	procs   int
}

func TestUserLockUnlock(t *testing.T) {
	exp := 20500 // 2026-02-15
	expDate := time.Unix(int64(exp)*86400, 0).UTC().Format("2006-01-02")
	past := 19000
	pastDate := time.Unix(int64(past)*86400, 0).UTC().Format("2006-01-02")
	tests := []acctLockCase{
		{
			name: "active user with keys and sessions", user: "alice", hash: acctShadowHash, expires: -1, procs: 2,
			lock: [][]string{
				{"usermod", "--lock", "--", "alice"},
				{"usermod", "--expiredate", "1970-01-02", "--", "alice"},
				{"pkill", "--signal", "KILL", "--uid", "1000"},
			},
			unlock: [][]string{
				{"usermod", "--unlock", "--", "alice"},
				{"usermod", "--expiredate", "", "--", "alice"},
			},
		},
		{
			name: "an expiry date before the lock comes back", user: "alice", hash: acctShadowHash, expires: exp,
			lock: [][]string{
				{"usermod", "--lock", "--", "alice"},
				{"usermod", "--expiredate", "1970-01-02", "--", "alice"},
			},
			unlock: [][]string{
				{"usermod", "--unlock", "--", "alice"},
				{"usermod", "--expiredate", expDate, "--", "alice"},
			},
		},
		{
			name: "an account expired in the past stays expired then", user: "alice", hash: acctShadowHash, expires: past,
			lock: [][]string{
				{"usermod", "--lock", "--", "alice"},
				{"usermod", "--expiredate", "1970-01-02", "--", "alice"},
			},
			unlock: [][]string{
				{"usermod", "--unlock", "--", "alice"},
				{"usermod", "--expiredate", pastDate, "--", "alice"},
			},
		},
		{
			name: "a password locked before stays locked", user: "alice", hash: "!" + acctShadowHash, expires: -1, procs: 1,
			lock: [][]string{
				{"usermod", "--expiredate", "1970-01-02", "--", "alice"},
				{"pkill", "--signal", "KILL", "--uid", "1000"},
			},
			unlock: [][]string{
				{"usermod", "--expiredate", "", "--", "alice"},
			},
		},
		{
			name: "no password at all", user: "bob", hash: "!", expires: -1,
			lock:   [][]string{{"usermod", "--expiredate", "1970-01-02", "--", "bob"}},
			unlock: [][]string{{"usermod", "--expiredate", "", "--", "bob"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			u := f.user(tt.user)
			f.setShadow(tt.user, tt.hash, tt.expires)
			managed, pm := acctKey(t, "managed")
			withOpts, pw := acctKey(t, "restricted")
			own, _ := acctKey(t, "own")
			keys := "# " + tt.user + "'s own keys\n" + own + "\n" + acctBlock(managed, "no-pty "+withOpts) + "\n# after\n"
			f.writeKeys(tt.user, keys)
			for i := range tt.procs {
				f.addProcess(100+i, u.UID)
			}
			f.addProcess(999, 1001+1000-u.UID) // someone else's: bob's or alice's
			shadowBefore := f.readFile("etc/shadow")

			out := f.ok("user", "lock", "--", tt.user)
			acctCalls(t, f, tt.lock...)
			sh := f.shadow(tt.user)
			if !sh.Locked() || sh.Expires != accounts.ExpiredDay {
				t.Errorf("after lock: %+v, want a locked password and expiry %d", sh, accounts.ExpiredDay)
			}
			wantKeys := "# " + tt.user + "'s own keys\n" + own + "\n" +
				acctBlock("#sera-locked "+managed, "#sera-locked no-pty "+withOpts) + "\n# after\n"
			if got := f.keys(tt.user); got != wantKeys {
				t.Errorf("keys after lock:\n%s\nwant\n%s", got, wantKeys)
			}
			acctOwner(t, f.p(u.Home+"/.ssh/authorized_keys"), false, 0o600, u.UID, u.GID)
			acctContains(t, "the lock's output", out,
				"disable "+acctFP(pm)+" (ssh-ed25519 managed); disable "+acctFP(pw)+" (ssh-ed25519 restricted)")
			if tt.procs > 0 {
				acctContains(t, "the lock's output", out, fmt.Sprintf("done: end the %d running process(es) of %s: pkill --signal KILL --uid %d", tt.procs, tt.user, u.UID))
			}
			if accounts.CountProcesses(f.Host.Sys, u.UID) != 0 {
				t.Errorf("processes of %s still run", tt.user)
			}
			if _, err := os.Stat(f.p("proc/999")); err != nil {
				t.Errorf("someone else's process was ended: %v", err)
			}

			// Locked is locked: nothing more to do.
			f.Runner.Reset()
			snap := f.snapshot()
			if out := f.ok("user", "lock", "--", tt.user); out != "user "+tt.user+" already locked\n" {
				t.Errorf("second lock printed %q", out)
			}
			f.noCalls()
			f.unchanged(snap)

			// Unlock restores exactly what was.
			out = f.ok("user", "unlock", "--", tt.user)
			acctCalls(t, f, tt.unlock...)
			if got := f.readFile("etc/shadow"); got != shadowBefore {
				t.Errorf("shadow after unlock:\n%s\nwant as before the lock:\n%s", got, shadowBefore)
			}
			if got := f.keys(tt.user); got != keys {
				t.Errorf("keys after unlock:\n%s\nwant as before the lock:\n%s", got, keys)
			}
			acctOwner(t, f.p(u.Home+"/.ssh/authorized_keys"), false, 0o600, u.UID, u.GID)
			acctContains(t, "the unlock's output", out, "enable "+acctFP(pm), "enable "+acctFP(pw))
			if _, err := os.Lstat(accounts.LockRecordPath(f.Host.Sys, tt.user)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the lock record is still there: %v", err)
			}

			f.Runner.Reset()
			snap = f.snapshot()
			if out := f.ok("user", "unlock", "--", tt.user); out != "user "+tt.user+" is not locked\n" {
				t.Errorf("second unlock printed %q", out)
			}
			f.noCalls()
			f.unchanged(snap)
		})
	}
}

// A lock that fails half-way says what it did; run again it finishes,
// and unlock still restores the state from before the first attempt.
func TestUserLockPartialFailure(t *testing.T) {
	f := newAccountsFixture(t)
	shadowBefore := f.readFile("etc/shadow")
	f.Runner.fail = func(argv []string) error {
		if slices.Contains(argv, "--expiredate") {
			return &acctExit{code: 1, msg: "usermod: cannot lock /etc/shadow; try again later."}
		}
		return nil
	}
	stderr := f.fail("user", "lock", "--", "alice")
	acctContains(t, "the error", stderr, "failed to usermod --expiredate 1970-01-02 -- alice", "cannot lock /etc/shadow",
		"done before it: record the state to restore on unlock in "+accounts.LockRecordPath(f.Host.Sys, "alice")+"; usermod --lock -- alice")
	if sh := f.shadow("alice"); !sh.Locked() || sh.Expires != -1 {
		t.Errorf("after the failed lock: %+v", sh)
	}

	f.Runner.fail = nil
	f.Runner.Reset()
	f.ok("user", "lock", "--", "alice")
	acctCalls(t, f, []string{"usermod", "--expiredate", "1970-01-02", "--", "alice"})
	f.Runner.Reset()
	f.ok("user", "unlock", "--", "alice")
	acctCalls(t, f, []string{"usermod", "--unlock", "--", "alice"}, []string{"usermod", "--expiredate", "", "--", "alice"})
	if got := f.readFile("etc/shadow"); got != shadowBefore {
		t.Errorf("shadow after unlock:\n%s\nwant\n%s", got, shadowBefore)
	}
}

// pkill's status 1 (no process left to end) is what lock wants.
func TestUserLockProcessesGone(t *testing.T) {
	f := newAccountsFixture(t)
	f.addProcess(100, 1000)
	f.Runner.fail = func(argv []string) error {
		if argv[0] == "pkill" {
			return &acctExit{code: 1, msg: ""}
		}
		return nil
	}
	f.ok("user", "lock", "--", "alice")
	f.Runner.fail = func(argv []string) error {
		if argv[0] == "pkill" {
			return &acctExit{code: 3, msg: "pkill: fatal"}
		}
		return nil
	}
	acctContains(t, "the error", f.fail("user", "lock", "--", "alice"), "failed to end the 1 running process(es) of alice", "pkill: fatal")
}

// A link the user planted in ~/.ssh must not stop a lock: the password and
// the account are locked and the sessions ended; the command then fails,
// saying the keys could not be disabled. The link's target is untouched.
func TestUserLockPlantedLink(t *testing.T) {
	for _, plant := range []string{"symlinked .ssh", "symlinked authorized_keys", "hard-linked authorized_keys"} {
		t.Run(plant, func(t *testing.T) {
			f := newAccountsFixture(t)
			f.mkdir("home/alice/.ssh", 0o700, 1000, 1000)
			switch plant {
			case "symlinked .ssh":
				os.Remove(f.p("home/alice/.ssh"))
				f.symlink(f.p("etc"), "home/alice/.ssh")
			case "symlinked authorized_keys":
				f.symlink(f.p("etc/shadow"), "home/alice/.ssh/authorized_keys")
			case "hard-linked authorized_keys":
				if err := os.Link(f.p("etc/passwd"), f.p("home/alice/.ssh/authorized_keys")); err != nil {
					t.Fatal(err)
				}
			}
			f.addProcess(100, 1000)
			etc := f.snapshot()
			stderr := f.fail("user", "lock", "--", "alice")
			acctCalls(t, f,
				[]string{"usermod", "--lock", "--", "alice"},
				[]string{"usermod", "--expiredate", "1970-01-02", "--", "alice"},
				[]string{"pkill", "--signal", "KILL", "--uid", "1000"})
			acctContains(t, "the error", stderr, "failed to disable the keys sera manages for alice (cannot: refusing ", "/home/alice/.ssh",
				"the keys were not disabled", "done before it:", "usermod --lock -- alice", "usermod --expiredate 1970-01-02 -- alice", "pkill")

			// Run again, it still says the keys are not disabled, and
			// does nothing else.
			f.Runner.Reset()
			acctContains(t, "the second error", f.fail("user", "lock", "--", "alice"), "failed to disable the keys sera manages for alice", "nothing was changed")
			f.noCalls()
			if sh := f.shadow("alice"); !sh.Locked() || sh.Expires != accounts.ExpiredDay {
				t.Errorf("alice is not locked: %+v", sh)
			}
			// Only shadow changed in etc; nothing was written through the
			// link.
			after := f.snapshot()
			for p, b := range etc {
				if strings.HasPrefix(p, f.p("etc")) && p != f.p("etc/shadow") && after[p] != b {
					t.Errorf("%s changed", p)
				}
			}
			for p := range after {
				if _, ok := etc[p]; !ok && strings.HasPrefix(p, f.Root) {
					t.Errorf("%s created", p)
				}
			}
		})
	}
}

func TestUserDel(t *testing.T) {
	f := newAccountsFixture(t)
	f.addProcess(100, 1000)
	f.mkdir("home/alice/src", 0o755, 1000, 1000)
	f.writeFile("home/alice/src/main.go", "package main\n", 0o644, 1000, 1000)
	archive := filepath.Join(f.State, "archive", "alice-20260115T120000Z.tar.gz")

	out := f.ok("user", "del", "--", "alice")
	acctCalls(t, f,
		[]string{"pkill", "--signal", "KILL", "--uid", "1000"},
		[]string{"tar", "--create", "--gzip", "--file", archive, "--directory", "/home/alice", "--", "."},
		[]string{"userdel", "--remove", "--", "alice"})
	want := "done: end the 1 running process(es) of alice: pkill --signal KILL --uid 1000\n" +
		"done: archive /home/alice: tar --create --gzip --file " + archive + " --directory /home/alice -- .\n" +
		"done: userdel --remove -- alice\n"
	if out != want {
		t.Errorf("printed\n%s\nwant\n%s", out, want)
	}
	acctOwner(t, filepath.Join(f.State, "archive"), true, 0o700, 0, 0)
	acctOwner(t, archive, false, 0o600, 0, 0)
	files := acctTarFiles(t, archive)
	for name, content := range map[string]string{"./notes.txt": "alice's notes\n", "./.profile": "# alice's profile\n", "./src/main.go": "package main\n", "./src/": ""} {
		if got, ok := files[name]; !ok || got != content {
			t.Errorf("archive entry %s = %q (present %v), want %q", name, got, ok, content)
		}
	}
	db := f.db()
	if db.User("alice") != nil || len(db.GroupsOf("alice")) != 0 || db.Group("alice") != nil {
		t.Errorf("alice is still in the account database")
	}
	if _, ok := db.Shadow["alice"]; ok {
		t.Errorf("alice is still in shadow")
	}
	if _, err := os.Lstat(f.p("home/alice")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the home is still there: %v", err)
	}

	f.Runner.Reset()
	snap := f.snapshot()
	if out := f.ok("user", "del", "--", "alice"); out != "user alice already absent\n" {
		t.Errorf("second del printed %q", out)
	}
	f.noCalls()
	f.unchanged(snap)
}

func TestUserDelKeepHome(t *testing.T) {
	f := newAccountsFixture(t)
	out := f.ok("user", "del", "--keep-home", "--", "alice")
	acctCalls(t, f, []string{"userdel", "--", "alice"})
	if out != "done: userdel -- alice\n" {
		t.Errorf("printed %q", out)
	}
	if f.readFile("home/alice/notes.txt") != "alice's notes\n" {
		t.Errorf("the home changed")
	}
	if _, err := os.Lstat(filepath.Join(f.State, "archive")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an archive was made with --keep-home: %v", err)
	}
	f.Runner.Reset()
	if out := f.ok("user", "del", "--keep-home", "--", "alice"); out != "user alice already absent\n" {
		t.Errorf("second del printed %q", out)
	}
	f.noCalls()
}

// A home that is a link is not deleted through it: it could not be
// archived, and userdel --remove would empty what it points to. A missing
// home has nothing to archive.
func TestUserDelHomeNotADirectory(t *testing.T) {
	f := newAccountsFixture(t)
	if err := os.Rename(f.p("home/alice"), f.p("srv/alice")); err != nil {
		t.Fatal(err)
	}
	f.symlink(f.p("srv/alice"), "home/alice")
	snap := f.snapshot()
	acctContains(t, "the error", f.fail("user", "del", "--", "alice"), "refusing to delete the home /home/alice of alice: it is not a directory",
		"cannot be archived", "nothing was changed", "--keep-home")
	f.noCalls()
	f.unchanged(snap)
	f.ok("user", "del", "--keep-home", "--", "alice")
	acctCalls(t, f, []string{"userdel", "--", "alice"})
	if f.readFile("srv/alice/notes.txt") != "alice's notes\n" {
		t.Errorf("the link's target changed")
	}

	f = newAccountsFixture(t)
	if err := os.RemoveAll(f.p("home/bob")); err != nil {
		t.Fatal(err)
	}
	if out := f.ok("user", "del", "--", "bob"); out != "done: userdel --remove -- bob\n" {
		t.Errorf("printed %q", out)
	}
}

// A failed archive stops the delete before userdel: the home is all there.
func TestUserDelArchiveFails(t *testing.T) {
	f := newAccountsFixture(t)
	f.Runner.fail = func(argv []string) error {
		if argv[0] == "tar" {
			return &acctExit{code: 2, msg: "tar: ./notes.txt: Cannot open: Permission denied"}
		}
		return nil
	}
	stderr := f.fail("user", "del", "--", "alice")
	acctContains(t, "the error", stderr, "failed to archive /home/alice", "Permission denied", "nothing was changed")
	if f.db().User("alice") == nil || f.readFile("home/alice/notes.txt") != "alice's notes\n" {
		t.Errorf("alice or her home is gone after a failed archive")
	}
	ents, _ := os.ReadDir(filepath.Join(f.State, "archive"))
	if len(ents) != 0 {
		t.Errorf("a failed archive left %v", ents)
	}
}

// Deleting a locked user forgets its lock: a new account of that name
// is locked and unlocked from its own state, not the old one's.
func TestUserDelForgetsLock(t *testing.T) {
	f := newAccountsFixture(t)
	f.setShadow("alice", "!"+acctShadowHash, -1) // locked by hand before sera's lock
	f.ok("user", "lock", "--", "alice")
	f.ok("user", "del", "--", "alice")
	if _, err := os.Lstat(accounts.LockRecordPath(f.Host.Sys, "alice")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted user's lock record is still there: %v", err)
	}
	f.ok("user", "add", "--password-hash="+acctShadowHash, "--", "alice")
	f.ok("user", "lock", "--", "alice")
	f.Runner.Reset()
	f.ok("user", "unlock", "--", "alice")
	acctCalls(t, f, []string{"usermod", "--unlock", "--", "alice"}, []string{"usermod", "--expiredate", "", "--", "alice"})
	if sh := f.shadow("alice"); sh.Hash != acctShadowHash || sh.Expires != -1 {
		t.Errorf("the new alice after unlock: %+v, want her password back", sh)
	}
}

func TestUserListShow(t *testing.T) {
	f := newAccountsFixture(t)
	managed, pm := acctKey(t, "m")
	own, po := acctKey(t, "o")
	f.writeKeys("alice", own+"\n"+acctBlock(managed))
	f.setShadow("bob", "!", 19000) // expired in 2022

	type info struct {
		Name    string   `json:"name"`
		UID     int      `json:"uid"`
		GID     int      `json:"gid"`
		Comment string   `json:"comment"`
		Home    string   `json:"home"`
		Shell   string   `json:"shell"`
		Groups  []string `json:"groups"`
		Keys    []string `json:"keys"`
		Locked  bool     `json:"password_locked"`
		Expired bool     `json:"expired"`
	}
	alice := info{Name: "alice", UID: 1000, GID: 1000, Comment: "Alice Example", Home: "/home/alice", Shell: "/bin/bash",
		Groups: []string{"sudo", "ops"}, Keys: []string{acctFP(pm), acctFP(po)}}
	bob := info{Name: "bob", UID: 1001, GID: 1001, Home: "/home/bob", Shell: "/bin/bash", Groups: []string{}, Keys: []string{},
		Locked: true, Expired: true}
	decode := func(s string) []info {
		t.Helper()
		var out []info
		for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
			var i info
			if err := json.Unmarshal([]byte(line), &i); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			out = append(out, i)
		}
		return out
	}
	check := func(want ...info) {
		t.Helper()
		if got := decode(f.ok("user", "list", "--json")); !reflect.DeepEqual(got, want) {
			t.Errorf("list --json\n%+v\nwant\n%+v", got, want)
		}
		if got := decode(f.ok("user", "show", "--json", "--", "alice")); !reflect.DeepEqual(got, want[:1]) {
			t.Errorf("show --json\n%+v\nwant\n%+v", got, want[0])
		}
	}
	check(alice, bob)
	text := f.ok("user", "list")
	acctContains(t, "list", text, "alice", "active", "sudo,ops", "2 key(s)", "bob", "password-locked,expired", "none")
	for _, system := range []string{"root", "daemon", "nobody"} {
		if strings.Contains(text, system) {
			t.Errorf("list shows %s:\n%s", system, text)
		}
	}
	show := f.ok("user", "show", "--", "alice")
	acctContains(t, "show", show, "name     alice\n", "uid      1000\n", "comment  Alice Example\n", "groups   sudo,ops\n", "state    active\n",
		"key      "+acctFP(pm)+"\n", "key      "+acctFP(po)+"\n")

	f.ok("user", "lock", "--", "alice")
	alice.Locked, alice.Expired = true, true
	check(alice, bob)
	acctContains(t, "show", f.ok("user", "show", "--", "alice"), "state    password-locked,expired\n")

	// An expiry date still to come is not expired.
	f.setShadow("bob", "$6$abcdefghij", 30000)
	bob.Locked, bob.Expired = false, false
	check(alice, bob)

	// Not sera's to show.
	for _, name := range []string{"daemon", "nobody"} {
		r := f.run("user", "show", "--", name)
		if r.resolveErr != nil || r.status == 0 || !strings.Contains(r.stderr, "refusing user "+name) {
			t.Errorf("show %s:\n%s", name, r)
		}
	}
	acctContains(t, "show of a missing user", f.fail("user", "show", "--", "nobodyhere"), "no user nobodyhere on this host")
}

// --dry-run prints exactly the steps a real run makes, as "would:" lines,
// and changes nothing.
func TestAccountsDryRun(t *testing.T) {
	k1, pk1 := acctKey(t, "k1")
	k2, pk2 := acctKey(t, "k2")
	own, _ := acctKey(t, "own")
	withKeys := func(f *accountsFixture) {
		f.writeKeys("alice", own+"\n"+acctBlock(k1))
		f.addProcess(100, 1000)
	}
	locked := func(f *accountsFixture) {
		withKeys(f)
		f.ok("user", "lock", "--", "alice")
	}
	archive := func(f *accountsFixture) string {
		return filepath.Join(f.State, "archive", "alice-20260115T120000Z.tar.gz")
	}
	tests := []struct {
		name  string
		setup func(*accountsFixture)
		argv  []string
		want  func(f *accountsFixture) []string
	}{
		{
			name: "user add new", argv: []string{"user", "add", "--uid=1500", "--key=" + k1, "--", "carol"},
			want: func(*accountsFixture) []string {
				return []string{"useradd --create-home --uid 1500 -- carol",
					"write ~carol/.ssh/authorized_keys (0600 carol): add " + acctFP(pk1) + " (ssh-ed25519 k1)"}
			},
		},
		{
			name: "user add --update", setup: withKeys, argv: []string{"user", "add", "--update", "--shell=/bin/sh", "--set-groups=dev", "--key=" + k2, "--", "alice"},
			want: func(*accountsFixture) []string {
				return []string{"usermod --shell /bin/sh --groups dev,sudo -- alice",
					"note: kept system groups sudo (not managed by sera)",
					"write /home/alice/.ssh/authorized_keys (0600 alice): add " + acctFP(pk2) + " (ssh-ed25519 k2)"}
			},
		},
		{
			name: "user lock", setup: withKeys, argv: []string{"user", "lock", "--", "alice"},
			want: func(f *accountsFixture) []string {
				return []string{"record the state to restore on unlock in " + accounts.LockRecordPath(f.Host.Sys, "alice"),
					"usermod --lock -- alice",
					"usermod --expiredate 1970-01-02 -- alice",
					"write /home/alice/.ssh/authorized_keys (0600 alice): disable " + acctFP(pk1) + " (ssh-ed25519 k1)",
					"end the 1 running process(es) of alice: pkill --signal KILL --uid 1000"}
			},
		},
		{
			name: "user unlock", setup: locked, argv: []string{"user", "unlock", "--", "alice"},
			want: func(f *accountsFixture) []string {
				return []string{"usermod --unlock -- alice",
					"usermod --expiredate '' -- alice",
					"write /home/alice/.ssh/authorized_keys (0600 alice): enable " + acctFP(pk1) + " (ssh-ed25519 k1)",
					"remove " + accounts.LockRecordPath(f.Host.Sys, "alice")}
			},
		},
		{
			name: "user del", setup: withKeys, argv: []string{"user", "del", "--", "alice"},
			want: func(f *accountsFixture) []string {
				return []string{"end the 1 running process(es) of alice: pkill --signal KILL --uid 1000",
					"archive /home/alice: tar --create --gzip --file " + archive(f) + " --directory /home/alice -- .",
					"userdel --remove -- alice"}
			},
		},
		{
			name: "user del --keep-home", argv: []string{"user", "del", "--keep-home", "--", "alice"},
			want: func(*accountsFixture) []string { return []string{"userdel -- alice"} },
		},
		{
			name: "key add", setup: withKeys, argv: []string{"key", "add", "--", "alice", k2},
			want: func(*accountsFixture) []string {
				return []string{"write /home/alice/.ssh/authorized_keys (0600 alice): add " + acctFP(pk2) + " (ssh-ed25519 k2)"}
			},
		},
		{
			name: "key add to a user with no .ssh", argv: []string{"key", "add", "--", "bob", k2},
			want: func(*accountsFixture) []string {
				return []string{"write /home/bob/.ssh/authorized_keys (0600 bob): add " + acctFP(pk2) + " (ssh-ed25519 k2)"}
			},
		},
		{
			name: "key remove", setup: withKeys, argv: []string{"key", "remove", "--", "alice", acctFP(pk1)},
			want: func(*accountsFixture) []string {
				return []string{"write /home/alice/.ssh/authorized_keys (0600 alice): remove " + acctFP(pk1) + " (ssh-ed25519 k1)"}
			},
		},
		{
			name: "key sync --exclusive", setup: withKeys, argv: []string{"key", "sync", "--exclusive", "--", "alice", k2},
			want: func(*accountsFixture) []string {
				return []string{"write /home/alice/.ssh/authorized_keys (0600 alice): remove " + acctFP(pk1) + " (ssh-ed25519 k1); add " +
					acctFP(pk2) + " (ssh-ed25519 k2); remove "}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			if tt.setup != nil {
				tt.setup(f)
			}
			f.Runner.Reset()
			snap := f.snapshot()
			argv := append(append(slices.Clone(tt.argv[:2]), "--dry-run"), tt.argv[2:]...)
			out := f.ok(argv...)
			f.noCalls()
			f.unchanged(snap)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			want := tt.want(f)
			if len(lines) != len(want) {
				t.Fatalf("printed\n%s\nwant %d lines:\n%s", out, len(want), strings.Join(want, "\n"))
			}
			for i, w := range want {
				if !strings.HasPrefix(w, "note: ") {
					w = "would: " + w
				}
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d: %q, want %q", i+1, lines[i], w)
				}
			}

			// The real run makes exactly those steps.
			real := f.ok(tt.argv...)
			if got := strings.ReplaceAll(real, "done: ", "would: "); got != out {
				t.Errorf("the real run printed\n%s\nthe dry run\n%s", real, out)
			}
		})
	}
}

// acctBadInput is a command line that must be refused with nothing run and no
// file changed.
type acctBadInput struct {
	name  string
	setup func(f *accountsFixture)
	argv  []string
	// client: the command's own checks refuse it, so the watcher's
	// Resolve does, before anything runs; otherwise only the host can tell
	// (Resolve accepts, the run fails).
	client bool
	want   []string // substrings of the error
	secret string   // must not be in the output
	// flagErr: cobra's own flag parsing refuses it; the watcher's tree
	// does not make that a usage error (status 1, not 2).
	flagErr bool
}

func (tt acctBadInput) check(t *testing.T) {
	t.Helper()
	f := newAccountsFixture(t)
	if tt.setup != nil {
		tt.setup(f)
	}
	snap := f.snapshot()
	// The watcher's path: Resolve, then Run.
	r := f.run(tt.argv...)
	switch {
	case tt.client && r.resolveErr == nil:
		t.Errorf("Resolve accepted it, want it refused before anything runs:\n%s", r)
	case !tt.client && r.resolveErr != nil:
		t.Errorf("Resolve refused it (%v), want the host to", r.resolveErr)
	case !tt.client && r.status != cli.ExitFailure:
		t.Errorf("want exit status %d:\n%s", cli.ExitFailure, r)
	}
	acctContains(t, "the refusal", r.stderr, tt.want...)
	// The host's own checks, without Resolve.
	d := f.runDirect(tt.argv...)
	if d.status == 0 {
		t.Errorf("the host ran it:\n%s", d)
	}
	if tt.client && !tt.flagErr && d.status != cli.ExitUsage {
		t.Errorf("want a usage error (status %d):\n%s", cli.ExitUsage, d)
	}
	acctContains(t, "the host's refusal", d.stderr, tt.want...)
	if !tt.client && !slices.Contains([]string{"show", "list"}, tt.argv[1]) {
		acctContains(t, "the host's refusal", d.stderr, "nothing was changed")
	}
	if tt.secret != "" && (strings.Contains(r.stdout+r.stderr+d.stdout+d.stderr, tt.secret)) {
		t.Errorf("the output shows the secret %q:\n%s\n%s", tt.secret, r, d)
	}
	f.noCalls()
	f.unchanged(snap)
}

func TestAccountsBadNames(t *testing.T) {
	key, _ := acctKey(t, "k")
	names := []struct {
		name   string
		client bool
		want   string
	}{
		{"root", true, `refusing user "root": root is never managed by sera`},
		{"daemon", false, "refusing user daemon"},
		{"nobody", false, "refusing user nobody"},
		{"-rf", true, `invalid user name "-rf"`},
		{"a;b", true, `invalid user name "a;b"`},
		{"../x", true, `invalid user name "../x"`},
		{"Alice", true, `invalid user name "Alice"`},
		{"a b", true, `invalid user name "a b"`},
		{"alice\n", true, "invalid user name"},
		{"", true, "invalid user name"},
		{"1abc", true, "invalid user name"},
		{"a" + strings.Repeat("b", 32), true, "longer than 32 bytes"},
	}
	commands := [][]string{
		{"user", "add"}, {"user", "lock"}, {"user", "unlock"}, {"user", "del"}, {"user", "del", "--keep-home"},
		{"user", "show"}, {"key", "add", "K"}, {"key", "remove", "K"}, {"key", "sync", "K"}, {"key", "list"},
	}
	for _, n := range names {
		for _, c := range commands {
			argv := []string{c[0], c[1]}
			var rest []string
			for _, a := range c[2:] {
				if a == "K" {
					rest = append(rest, key)
				} else {
					argv = append(argv, a)
				}
			}
			argv = append(append(argv, "--", n.name), rest...)
			tt := acctBadInput{name: n.name, argv: argv, client: n.client, want: []string{n.want}}
			t.Run(strings.Join(c[:2], " ")+"/"+n.name, tt.check)
		}
	}
	// Unseparated, "-rf" is taken for flags and refused as such.
	t.Run("user add -rf", acctBadInput{argv: []string{"user", "add", "-rf"}, client: true, flagErr: true, want: []string{"unknown shorthand flag"}}.check)
}

// The longest name sera accepts, and one with every kind of character.
func TestUserAddNameLimits(t *testing.T) {
	f := newAccountsFixture(t)
	for _, name := range []string{"a" + strings.Repeat("b", 31), "a-b_c9"} {
		f.ok("user", "add", "--", name)
		if f.db().User(name) == nil {
			t.Errorf("%s was not created", name)
		}
	}
}

func TestAccountsBadInputs(t *testing.T) {
	key, _ := acctKey(t, "k")
	const hash = "$6$saltsalt$abcdefghijklmnopqrstuvwxyz0123456789"
	carol := func(flags ...string) []string {
		return append(append([]string{"user", "add"}, flags...), "--", "carol")
	}
	alice := func(flags ...string) []string {
		return append(append([]string{"user", "add", "--update"}, flags...), "--", "alice")
	}
	tests := []acctBadInput{
		{name: "uid 0", argv: carol("--uid=0"), client: true, want: []string{"refusing --uid 0", "regular accounts"}},
		{name: "uid 999", argv: carol("--uid=999"), client: true, want: []string{"refusing --uid 999"}},
		{name: "negative uid", argv: carol("--uid=-5"), client: true, want: []string{"refusing --uid -5"}},
		{name: "uid 999 for an existing user", argv: alice("--uid=999"), client: true, want: []string{"refusing --uid 999"}},
		{name: "uid above UID_MAX", argv: carol("--uid=65534"), want: []string{"refusing --uid 65534: outside this host's regular range 1000..60000"}},
		{name: "uid below this host's UID_MIN", setup: func(f *accountsFixture) {
			f.setLoginDefs("UID_MIN 2000\nUID_MAX 3000\nGID_MIN 2000\nGID_MAX 3000\n")
		}, argv: carol("--uid=1500"), want: []string{"refusing --uid 1500: outside this host's regular range 2000..3000"}},
		{name: "a user outside this host's UID_MIN..UID_MAX", setup: func(f *accountsFixture) {
			f.setLoginDefs("UID_MIN 2000\nUID_MAX 3000\n")
		}, argv: []string{"user", "lock", "--", "alice"}, want: []string{"refusing user alice: uid 1000 is outside the range sera manages (2000..3000)"}},
		{name: "uid of another user", argv: carol("--uid=1001"), want: []string{"uid 1001 is already used by bob"}},
		{name: "uid of another user for an existing one", argv: alice("--uid=1001"), want: []string{"uid 1001 is already used by bob"}},
		{name: "gid 27", argv: carol("--gid=27"), client: true, want: []string{"refusing --gid 27"}},
		{name: "gid 0", argv: carol("--gid=0"), client: true, want: []string{"refusing --gid 0"}},
		{name: "gid of no group", argv: carol("--gid=1500"), want: []string{"no group with gid 1500"}},
		{name: "gid above GID_MAX", argv: carol("--gid=65534"), want: []string{"refusing --gid 65534: outside this host's regular range 1000..60000"}},
		{name: "gid below this host's GID_MIN", setup: func(f *accountsFixture) {
			f.setLoginDefs("GID_MIN 2000\nGID_MAX 3000\n")
		}, argv: carol("--gid=1003"), want: []string{"refusing --gid 1003: outside this host's regular range 2000..3000"}},
		{name: "a group below this host's GID_MIN", setup: func(f *accountsFixture) {
			f.setLoginDefs("GID_MIN 2000\nGID_MAX 3000\n")
		}, argv: carol("--groups=dev"), want: []string{"refusing group dev: gid 1003 is outside the range sera manages (2000..3000)"}},
		{name: "a group named like the new user exists", setup: func(f *accountsFixture) {
			if err := acctEditTable(f.p("etc/group"), func(rows [][]string) ([][]string, error) {
				return append(rows, []string{"carol", "x", "1500", ""}), nil
			}); err != nil {
				t.Fatal(err)
			}
		}, argv: carol(), want: []string{"a group called carol already exists"}},

		{name: "password hash: plain text", argv: carol("--password-hash=secret"), client: true, want: []string{"invalid --password-hash"}, secret: "secret"},
		{name: "password hash: $6$", argv: carol("--password-hash=$6$"), client: true, want: []string{"invalid --password-hash"}},
		{name: "password hash: locked", argv: carol("--password-hash=!$6$x"), client: true, want: []string{"invalid --password-hash"}, secret: "!$6$x"},
		{name: "password hash: locked, long", argv: carol("--password-hash=!" + hash), client: true, want: []string{"invalid --password-hash"}, secret: hash},
		{name: "password hash: a colon", argv: carol("--password-hash=" + hash + ":0:0"), client: true, want: []string{"invalid --password-hash"}, secret: hash},
		{name: "password hash: a line break", argv: carol("--password-hash=" + hash + "\nroot::0:0:::::"), client: true, want: []string{"invalid --password-hash"}, secret: hash},
		{name: "password hash: unknown method", argv: carol("--password-hash=$9$saltsalt$abcdefgh"), client: true, want: []string{"invalid --password-hash"}},
		{name: "password hash for an existing user", argv: alice("--password-hash=secret"), client: true, want: []string{"invalid --password-hash"}, secret: "secret"},

		{name: "relative shell", argv: carol("--shell=relative/path"), client: true, want: []string{`invalid --shell "relative/path"`}},
		{name: "shell with ..", argv: carol("--shell=/bin/../bin/bash"), client: true, want: []string{"invalid --shell"}},
		{name: "shell with a colon", argv: carol("--shell=/bin/bash:x"), client: true, want: []string{"invalid --shell"}},
		{name: "empty shell", argv: carol("--shell="), client: true, want: []string{"invalid --shell"}},
		{name: "shell not in /etc/shells", argv: carol("--shell=/bin/zsh"), want: []string{"invalid --shell /bin/zsh: not listed in /etc/shells"}},
		{name: "shell not on the host", argv: carol("--shell=/bin/fish"), want: []string{"invalid --shell /bin/fish: no such program on this host"}},
		{name: "shell change to one not in /etc/shells", argv: alice("--shell=/bin/zsh"), want: []string{"not listed in /etc/shells"}},

		{name: "a system group", argv: carol("--groups=sudo"), want: []string{"refusing group sudo: gid 27 is outside the range sera manages"}},
		{name: "a system group among others", argv: carol("--groups=ops,users"), want: []string{"refusing group users: gid 100"}},
		{name: "a system group for an existing user", argv: alice("--groups=sudo"), want: []string{"refusing group sudo"}},
		{name: "set-groups with a system group", argv: alice("--set-groups=dev,sudo"), want: []string{"refusing group sudo"}},
		{name: "a missing group", argv: carol("--groups=nosuch"), want: []string{"no group nosuch on this host"}},
		{name: "group root", argv: carol("--groups=root"), client: true, want: []string{`refusing group "root"`}},
		{name: "a bad group name", argv: carol("--groups=Ops"), client: true, want: []string{`invalid group name "Ops"`}},
		{name: "a group name with a colon", argv: carol("--groups=ops:x"), client: true, want: []string{"invalid group name"}},
		{name: "groups and set-groups", argv: carol("--groups=ops", "--set-groups=dev"), client: true, want: []string{"give one"}},

		{name: "comment with a colon", argv: carol("--comment=a:b"), client: true, want: []string{"invalid --comment"}},
		{name: "comment with a line break", argv: carol("--comment=a\nb"), client: true, want: []string{"invalid --comment"}},

		{name: "a malformed key", argv: carol("--key=ssh-ed25519 AAAAnotakey"), client: true, want: []string{"invalid key"}},
		{name: "a key with options", argv: carol(`--key=command="/bin/sh" ` + key), client: true, want: []string{"carries options", "only through --options"}},
		{name: "an unknown option", argv: carol("--key="+key, "--options=bogus"), client: true, want: []string{`"bogus" is not an sshd authorized_keys option`}},
		{name: "a malformed key to key add", argv: []string{"key", "add", "--", "alice", "garbage"}, client: true, want: []string{`invalid key "garbage"`}},
		{name: "a malformed key among good ones", argv: []string{"key", "add", "--", "alice", key, "ssh-ed25519 AAAA"}, client: true, want: []string{"invalid key"}},
		{name: "a malformed key to key sync", argv: []string{"key", "sync", "--exclusive", "--", "alice", "garbage"}, client: true, want: []string{"invalid key"}},
		{name: "a malformed key to key remove", argv: []string{"key", "remove", "--", "alice", "garbage"}, client: true, want: []string{"invalid key"}},
		{name: "two keys in one argument", argv: []string{"key", "add", "--", "alice", key + "\n" + key}, client: true, want: []string{"spans several lines"}},
		{name: "smuggled options to key add", argv: []string{"key", "add", "--", "alice", `command="/bin/sh",no-pty ` + key}, client: true, want: []string{"carries options"}},
		{name: "smuggled options to key sync", argv: []string{"key", "sync", "--", "alice", `from="*" ` + key}, client: true, want: []string{"carries options"}},
		{name: "unknown option to key add", argv: []string{"key", "add", "--options=no-pty,shell=/bin/sh", "--", "alice", key}, client: true, want: []string{`"shell" is not an sshd authorized_keys option`}},
		{name: "option list with a line break", argv: []string{"key", "add", "--options=no-pty\n" + key, "--", "alice", key}, client: true, want: []string{"line break"}},
		{name: "keys of a missing user", argv: []string{"key", "add", "--", "zed", key}, want: []string{"no user zed on this host"}},
		{name: "lock of a missing user", argv: []string{"user", "lock", "--", "zed"}, want: []string{"no user zed on this host"}},
		{name: "a key command without keys", argv: []string{"key", "add", "--", "alice"}, client: true, want: []string{"sera key add needs KEY… after alice"}},
		{name: "two names", argv: []string{"user", "lock", "--", "alice", "bob"}, client: true, want: []string{"sera user lock takes only NAME; unexpected \"bob\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}
