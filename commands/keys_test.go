package commands

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/sshkeys"
	"golang.org/x/crypto/ssh"
)

func TestKeyAdd(t *testing.T) {
	k1, p1 := acctKey(t, "k1")
	k2, p2 := acctKey(t, "k2")
	own, po := acctKey(t, "own")
	ownLines := "# alice's own\n" + own + "\n\n"
	k1Renamed := strings.Replace(k1, " k1", " k1-renamed", 1)
	tests := []struct {
		name    string
		initial string // "" for no .ssh at all
		args    []string
		want    string // the file after
		out     string
	}{
		{
			name: "to a user with no .ssh", args: []string{k1, k2},
			want: acctBlock(k1, k2),
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): add " + acctFP(p1) + " (ssh-ed25519 k1); add " + acctFP(p2) + " (ssh-ed25519 k2)\n",
		},
		{
			name: "after the user's own lines", initial: ownLines, args: []string{k1},
			want: ownLines + acctBlock(k1),
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): add " + acctFP(p1) + " (ssh-ed25519 k1)\n",
		},
		{
			name: "into the existing block", initial: ownLines + acctBlock(k1) + "# tail\n", args: []string{k2},
			want: ownLines + acctBlock(k1, k2) + "# tail\n",
		},
		{
			name: "already managed", initial: ownLines + acctBlock(k1), args: []string{k1},
			out: "keys of alice: no change\n",
		},
		{
			name: "present only as the user's own line: left alone", initial: ownLines, args: []string{own},
			out: "key " + acctFP(po) + " is already in the file, not added by sera; left as it is\nkeys of alice: no change\n",
		},
		{
			name: "the same key blob with another comment is the same key", initial: acctBlock(k1), args: []string{k1Renamed},
			want: acctBlock(k1Renamed),
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): update " + acctFP(p1) + " (ssh-ed25519 k1-renamed)\n",
		},
		{
			name: "options given", initial: acctBlock(k1), args: []string{"--options=no-pty,from=\"10.0.0.0/8\"", k1, k2},
			want: acctBlock(`no-pty,from="10.0.0.0/8" `+k1, `no-pty,from="10.0.0.0/8" `+k2),
		},
		{
			name: "a disabled key stays disabled", initial: acctBlock("#sera-locked " + k1), args: []string{k1},
			out: "keys of alice: no change\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			if tt.initial != "" {
				f.writeKeys("alice", tt.initial)
			}
			var opts, keys []string
			for _, a := range tt.args {
				if strings.HasPrefix(a, "--") {
					opts = append(opts, a)
				} else {
					keys = append(keys, a)
				}
			}
			argv := append(append(append([]string{"key", "add"}, opts...), "--", "alice"), keys...)
			snap := f.snapshot()
			out := f.ok(argv...)
			f.noCalls()
			if tt.out != "" && out != tt.out {
				t.Errorf("printed\n%s\nwant\n%s", out, tt.out)
			}
			if tt.want == "" {
				f.unchanged(snap)
				return
			}
			if got := f.keys("alice"); got != tt.want {
				t.Errorf("authorized_keys\n%s\nwant\n%s", got, tt.want)
			}
			acctOwner(t, f.p("home/alice/.ssh"), true, 0o700, 1000, 1000)
			acctOwner(t, f.p("home/alice/.ssh/authorized_keys"), false, 0o600, 1000, 1000)
			acctOnlyKeysFile(t, f, "alice")

			snap = f.snapshot()
			if out := f.ok(argv...); out != "keys of alice: no change\n" {
				t.Errorf("second run printed %q", out)
			}
			f.unchanged(snap)
		})
	}
}

// acctOnlyKeysFile checks no temporary file was left in ~/.ssh.
func acctOnlyKeysFile(t *testing.T, f *accountsFixture, user string) {
	t.Helper()
	ents, err := os.ReadDir(f.p(f.user(user).Home + "/.ssh"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "authorized_keys" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("~%s/.ssh holds %q, want only authorized_keys", user, names)
	}
}

func TestKeyRemove(t *testing.T) {
	k1, p1 := acctKey(t, "k1")
	k2, p2 := acctKey(t, "k2")
	own, po := acctKey(t, "own")
	absent, pa := acctKey(t, "absent")
	ownLines := "# alice's own\n" + own + "\n"
	initial := ownLines + acctBlock(k1, "no-pty "+k2) + "# tail\n"
	tests := []struct {
		name string
		args []string
		want string
		out  string
	}{
		{
			name: "by key", args: []string{k1},
			want: ownLines + acctBlock("no-pty "+k2) + "# tail\n",
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): remove " + acctFP(p1) + " (ssh-ed25519 k1)\n",
		},
		{
			name: "by key with another comment", args: []string{strings.Replace(k1, " k1", " laptop", 1)},
			want: ownLines + acctBlock("no-pty "+k2) + "# tail\n",
		},
		{
			name: "by fingerprint", args: []string{acctFP(p2)},
			want: ownLines + acctBlock(k1) + "# tail\n",
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): remove " + acctFP(p2) + " (ssh-ed25519 k2)\n",
		},
		{
			name: "the last managed keys: the block goes", args: []string{acctFP(p2), k1},
			want: ownLines + "# tail\n",
		},
		{
			name: "the user's own key is left alone", args: []string{own},
			out: "key " + acctFP(po) + " was not added by sera; left as it is (use 'key sync --exclusive' to replace the whole file)\nkeys of alice: no change\n",
		},
		{
			name: "the user's own key by fingerprint", args: []string{acctFP(po)},
			out: "key " + acctFP(po) + " was not added by sera; left as it is (use 'key sync --exclusive' to replace the whole file)\nkeys of alice: no change\n",
		},
		{
			name: "absent", args: []string{acctFP(pa)},
			out: "key " + acctFP(pa) + " already absent\nkeys of alice: no change\n",
		},
		{
			name: "absent, by key", args: []string{absent},
			out: "key " + acctFP(pa) + " already absent\nkeys of alice: no change\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			f.writeKeys("alice", initial)
			argv := append([]string{"key", "remove", "--", "alice"}, tt.args...)
			snap := f.snapshot()
			out := f.ok(argv...)
			f.noCalls()
			if tt.out != "" && out != tt.out {
				t.Errorf("printed\n%s\nwant\n%s", out, tt.out)
			}
			if tt.want == "" {
				f.unchanged(snap)
				return
			}
			if got := f.keys("alice"); got != tt.want {
				t.Errorf("authorized_keys\n%s\nwant\n%s", got, tt.want)
			}
			acctOwner(t, f.p("home/alice/.ssh/authorized_keys"), false, 0o600, 1000, 1000)
			acctOnlyKeysFile(t, f, "alice")
			snap = f.snapshot()
			if out := f.ok(argv...); !strings.HasSuffix(out, "keys of alice: no change\n") {
				t.Errorf("second run printed %q", out)
			}
			f.unchanged(snap)
		})
	}
}

func TestKeySync(t *testing.T) {
	k1, p1 := acctKey(t, "k1")
	k2, _ := acctKey(t, "k2")
	k3, p3 := acctKey(t, "k3")
	own, po := acctKey(t, "own")
	ownLines := "# alice's own\n" + own + "\n"
	initial := ownLines + acctBlock(k1, k2) + "# tail\n"
	tests := []struct {
		name    string
		initial string
		args    []string
		want    string
		out     string
	}{
		{
			name: "adds the missing, removes other managed keys, keeps the user's", initial: initial, args: []string{k2, k3},
			want: ownLines + acctBlock(k2, k3) + "# tail\n",
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): remove " + acctFP(p1) + " (ssh-ed25519 k1); add " + acctFP(p3) + " (ssh-ed25519 k3)\n",
		},
		{
			name: "exclusive: only the given keys remain", initial: initial, args: []string{"--exclusive", k3},
			want: acctBlock(k3),
		},
		{
			name: "exclusive keeps a given key that was the user's own, now managed", initial: initial, args: []string{"--exclusive", own},
			want: acctBlock(own),
			out:  "done: write /home/alice/.ssh/authorized_keys (0600 alice): remove " + acctFP(p1) + " (ssh-ed25519 k1); remove " + acctFP(acctParse(t, k2)) + " (ssh-ed25519 k2); add " + acctFP(po) + " (ssh-ed25519 own); remove " + acctFP(po) + " (ssh-ed25519 own), not added by sera\n",
		},
		{
			name: "a key on the user's own line is left alone, not copied into the block", initial: `from="10.1.1.1" ` + own + "\n" + acctBlock(k1), args: []string{own, k1},
			out: "key " + acctFP(po) + " is already in the file, not added by sera; left as it is\nkeys of alice: no change\n",
		},
		{
			name: "already so", initial: initial, args: []string{k1, k2},
			out: "keys of alice: no change\n",
		},
		{
			name: "the same keys in another order", initial: initial, args: []string{k2, k1},
			want: ownLines + acctBlock(k2, k1) + "# tail\n",
		},
		{
			name: "a key given twice", initial: initial, args: []string{k1, k2, k1},
			out: "keys of alice: no change\n",
		},
		{
			name: "another comment on the same key is an update, not a second key", initial: initial, args: []string{k1, strings.Replace(k2, " k2", " k2-new", 1)},
			want: ownLines + acctBlock(k1, strings.Replace(k2, " k2", " k2-new", 1)) + "# tail\n",
		},
		{
			name: "options", initial: initial, args: []string{"--options=restrict,pty", k1, k2},
			want: ownLines + acctBlock("restrict,pty "+k1, "restrict,pty "+k2) + "# tail\n",
		},
		{
			name: "disabled keys of a locked user stay disabled", initial: acctBlock("#sera-locked "+k1, "#sera-locked "+k2), args: []string{k1},
			want: acctBlock("#sera-locked " + k1),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			f.writeKeys("alice", tt.initial)
			var flags, keys []string
			for _, a := range tt.args {
				if strings.HasPrefix(a, "--") {
					flags = append(flags, a)
				} else {
					keys = append(keys, a)
				}
			}
			argv := append(append(append([]string{"key", "sync"}, flags...), "--", "alice"), keys...)
			snap := f.snapshot()
			out := f.ok(argv...)
			f.noCalls()
			if tt.out != "" && out != tt.out {
				t.Errorf("printed\n%s\nwant\n%s", out, tt.out)
			}
			if tt.want == "" {
				f.unchanged(snap)
				return
			}
			if got := f.keys("alice"); got != tt.want {
				t.Errorf("authorized_keys\n%s\nwant\n%s", got, tt.want)
			}
			acctOwner(t, f.p("home/alice/.ssh/authorized_keys"), false, 0o600, 1000, 1000)
			acctOnlyKeysFile(t, f, "alice")
			snap = f.snapshot()
			if out := f.ok(argv...); out != "keys of alice: no change\n" {
				t.Errorf("second run printed %q", out)
			}
			f.unchanged(snap)
		})
	}
}

func acctParse(t *testing.T, line string) ssh.PublicKey {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyList(t *testing.T) {
	f := newAccountsFixture(t)
	k1, p1 := acctKey(t, "k1")
	k2, p2 := acctKey(t, "k2")
	own, po := acctKey(t, "own")
	f.writeKeys("alice", own+"\n"+acctBlock(`from="10.0.0.0/8" `+k1, "#sera-locked "+k2))
	out := f.ok("key", "list", "--", "alice")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("key list printed %q", out)
	}
	for i, want := range [][]string{
		{acctFP(p1), "ssh-ed25519", "sera", "active", "k1"},
		{acctFP(p2), "ssh-ed25519", "sera", "disabled", "k2"},
		{acctFP(po), "ssh-ed25519", "other", "active", "own"},
	} {
		if got := strings.Fields(lines[i]); !reflect.DeepEqual(got, want) {
			t.Errorf("line %d %q, want %q", i+1, got, want)
		}
	}
	type entry struct {
		Fingerprint string   `json:"fingerprint"`
		Type        string   `json:"type"`
		Comment     string   `json:"comment"`
		Options     []string `json:"options"`
		Managed     bool     `json:"managed"`
		Disabled    bool     `json:"disabled"`
	}
	var got []entry
	for _, line := range strings.Split(strings.TrimSpace(f.ok("key", "list", "--json", "--", "alice")), "\n") {
		var e entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		got = append(got, e)
	}
	want := []entry{
		{acctFP(p1), "ssh-ed25519", "k1", []string{`from="10.0.0.0/8"`}, true, false},
		{acctFP(p2), "ssh-ed25519", "k2", nil, true, true},
		{acctFP(po), "ssh-ed25519", "own", nil, false, false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("key list --json\n%+v\nwant\n%+v", got, want)
	}
	if out := f.ok("key", "list", "--", "bob"); out != "" {
		t.Errorf("bob has no keys, list printed %q", out)
	}
	f.noCalls()
}

// The files sera writes: .ssh made 0700 and the user's, the file 0600 and
// the user's, replaced by a rename (a new inode), no temporary file left.
func TestKeyFileModes(t *testing.T) {
	k1, _ := acctKey(t, "k1")
	tests := []struct {
		name  string
		setup func(f *accountsFixture)
	}{
		{"a .ssh of mode 0755", func(f *accountsFixture) {
			f.writeKeys("alice", "# mine\n")
			f.mkdir("home/alice/.ssh", 0o755, 1000, 1000)
		}},
		{"a group-writable .ssh and a world-readable file", func(f *accountsFixture) {
			f.writeKeys("alice", "# mine\n")
			f.mkdir("home/alice/.ssh", 0o775, 1000, 1000)
			f.writeFile("home/alice/.ssh/authorized_keys", "# mine\n", 0o644, 1000, 1000)
		}},
		{"a .ssh and file root made", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh", 0o755, 0, 0)
			f.writeFile("home/alice/.ssh/authorized_keys", "# mine\n", 0o644, 0, 0)
		}},
		{"no .ssh", func(f *accountsFixture) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			tt.setup(f)
			var ino uint64
			if fi, err := os.Stat(f.p("home/alice/.ssh/authorized_keys")); err == nil {
				ino = fi.Sys().(*syscall.Stat_t).Ino
			}
			home, _ := os.Stat(f.p("home/alice"))
			f.ok("key", "add", "--", "alice", k1)
			acctOwner(t, f.p("home/alice/.ssh"), true, 0o700, 1000, 1000)
			acctOwner(t, f.p("home/alice/.ssh/authorized_keys"), false, 0o600, 1000, 1000)
			acctOwner(t, f.p("home/alice"), true, home.Mode().Perm(), 1000, 1000)
			acctOnlyKeysFile(t, f, "alice")
			fi, _ := os.Stat(f.p("home/alice/.ssh/authorized_keys"))
			if ino != 0 && fi.Sys().(*syscall.Stat_t).Ino == ino {
				t.Errorf("authorized_keys was written in place, not replaced by a rename")
			}
			if got := f.keys("alice"); !strings.HasSuffix(got, acctBlock(k1)) {
				t.Errorf("authorized_keys %q", got)
			}
		})
	}
}

// A link or a file that is not the user's, in the home, .ssh or
// authorized_keys, is refused by every command that reads or writes the
// keys: nothing is run, no file changes, the link's target is not read
// into the user's file.
func TestKeysRefuseLinks(t *testing.T) {
	k1, p1 := acctKey(t, "k1")
	plants := []struct {
		name  string
		plant func(f *accountsFixture)
		want  []string
	}{
		{"symlinked .ssh to a directory outside the home", func(f *accountsFixture) {
			f.symlink(f.p("etc"), "home/alice/.ssh")
		}, []string{"refusing", "/home/alice/.ssh", "symbolic link"}},
		{"symlinked authorized_keys", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh", 0o700, 1000, 1000)
			f.symlink(f.p("etc/shadow"), "home/alice/.ssh/authorized_keys")
		}, []string{"refusing", "/home/alice/.ssh/authorized_keys", "symbolic link"}},
		{"hard-linked authorized_keys", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh", 0o700, 1000, 1000)
			if err := os.Link(f.p("etc/shadow"), f.p("home/alice/.ssh/authorized_keys")); err != nil {
				t.Fatal(err)
			}
		}, []string{"refusing", "/home/alice/.ssh/authorized_keys", "2 hard links"}},
		{"symlinked home", func(f *accountsFixture) {
			if err := os.Rename(f.p("home/alice"), f.p("srv/alice")); err != nil {
				t.Fatal(err)
			}
			f.symlink(f.p("srv/alice"), "home/alice")
			f.writeKeys("alice", acctBlock(k1))
		}, []string{"refusing", "/home/alice", "symbolic link"}},
		{".ssh owned by another user", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh", 0o700, 1001, 1001)
		}, []string{"refusing", "/home/alice/.ssh", "owned by uid 1001"}},
		{"authorized_keys owned by another user", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh", 0o700, 1000, 1000)
			f.writeFile("home/alice/.ssh/authorized_keys", "# bob's\n", 0o644, 1001, 1001)
		}, []string{"refusing", "/home/alice/.ssh/authorized_keys", "owned by uid 1001"}},
		{"authorized_keys is a fifo", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh", 0o700, 1000, 1000)
			if err := syscall.Mkfifo(f.p("home/alice/.ssh/authorized_keys"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"refusing", "/home/alice/.ssh/authorized_keys", "not a regular file"}},
		{"authorized_keys is a directory", func(f *accountsFixture) {
			f.mkdir("home/alice/.ssh/authorized_keys", 0o700, 1000, 1000)
		}, []string{"refusing", "/home/alice/.ssh/authorized_keys", "not a regular file"}},
	}
	commands := []struct {
		argv     []string
		readOnly bool
	}{
		{[]string{"key", "add", "--", "alice", k1}, false},
		{[]string{"key", "sync", "--", "alice", k1}, false},
		{[]string{"key", "sync", "--exclusive", "--", "alice", k1}, false},
		{[]string{"key", "remove", "--", "alice", acctFP(p1)}, false},
		{[]string{"key", "list", "--", "alice"}, true},
		{[]string{"user", "add", "--update", "--key=" + k1, "--", "alice"}, false},
		{[]string{"user", "unlock", "--", "alice"}, false},
	}
	for _, pl := range plants {
		for _, c := range commands {
			t.Run(pl.name+"/"+strings.Join(c.argv[:2], " "), func(t *testing.T) {
				f := newAccountsFixture(t)
				pl.plant(f)
				snap := f.snapshot()
				for _, run := range []func(...string) acctRun{f.run, f.runDirect} {
					r := run(c.argv...)
					if r.resolveErr != nil || r.status != cli.ExitFailure {
						t.Fatalf("want a host-side refusal:\n%s", r)
					}
					acctContains(t, "the error", r.stderr, pl.want...)
					if !c.readOnly {
						acctContains(t, "the error", r.stderr, "nothing was changed")
					}
				}
				f.noCalls()
				f.unchanged(snap)
			})
		}
	}
}

// Options given with --options are written as given, survive a lock and
// an unlock, and count in a key's identity only as an update of its line.
func TestKeyOptionsRoundTrip(t *testing.T) {
	f := newAccountsFixture(t)
	k1, _ := acctKey(t, "k1")
	opts := `command="/usr/bin/rrsync -ro /srv/backup",from="10.0.0.0/8,192.168.0.0/16",no-pty,environment="A=b c",expiry-time="20300101"`
	f.ok("key", "add", "--options", opts, "--", "alice", k1)
	if got := f.keys("alice"); got != acctBlock(opts+" "+k1) {
		t.Errorf("authorized_keys %q", got)
	}
	ak := sshkeys.Parse([]byte(f.keys("alice")))
	if len(ak.Managed) != 1 || strings.Join(ak.Managed[0].Options, ",") != opts {
		t.Errorf("parsed back %+v", ak.Managed)
	}
	// Locked and unlocked, the options are kept.
	f.ok("user", "lock", "--", "alice")
	if got := f.keys("alice"); got != acctBlock("#sera-locked "+opts+" "+k1) {
		t.Errorf("locked: %q", got)
	}
	f.ok("user", "unlock", "--", "alice")
	if got := f.keys("alice"); got != acctBlock(opts+" "+k1) {
		t.Errorf("unlocked: %q", got)
	}
	// The same options again: no change.
	if out := f.ok("key", "add", "--options", opts, "--", "alice", k1); out != "keys of alice: no change\n" {
		t.Errorf("printed %q", out)
	}
	// Other options for the same key: an update of that line.
	out := f.ok("key", "add", "--options", "no-pty", "--", "alice", k1)
	acctContains(t, "the output", out, "update ")
	if got := f.keys("alice"); got != acctBlock("no-pty "+k1) {
		t.Errorf("updated: %q", got)
	}
}

// A key added while sera has the user locked must not open the account:
// it goes in disabled, and unlock enables it with the others.
func TestKeyAddWhileLocked(t *testing.T) {
	f := newAccountsFixture(t)
	k1, p1 := acctKey(t, "one")
	k2, p2 := acctKey(t, "two")
	f.ok("key", "add", "--", "alice", k1)
	f.ok("user", "lock", "alice")
	out := f.ok("key", "add", "--", "alice", k2)
	if !strings.Contains(out, "alice is locked: the new keys are added disabled") {
		t.Errorf("key add on a locked user says:\n%s", out)
	}
	ak := sshkeys.Parse([]byte(f.keys("alice")))
	for _, k := range ak.Managed {
		if !k.Disabled {
			t.Errorf("key %s is active while alice is locked", k.Fingerprint())
		}
	}
	f.ok("user", "unlock", "alice")
	ak = sshkeys.Parse([]byte(f.keys("alice")))
	if len(ak.Managed) != 2 || ak.Managed[0].Disabled || ak.Managed[1].Disabled {
		t.Errorf("after unlock: %q", f.keys("alice"))
	}
	if acctFP(p1) == acctFP(p2) {
		t.Fatal("test keys are equal")
	}
}
