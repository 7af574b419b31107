package commands

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/accounts"
	"github.com/sera-dev/sera/host/hostkeys/keystest"
	"github.com/sera-dev/sera/host/sshkeys"
)

// The account tests run the user and key commands exactly as the watcher
// does (Handler.Resolve, then Handler.Run) against a host whose root is a
// temporary directory, with a fake Runner that applies useradd, usermod,
// userdel, pkill and tar to that root's files. Homes and keys are real
// files owned by the test users, so the tests need root.

// acctNow is the fixture host's clock.
var acctNow = time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)

// acctShadowHash is a well-formed sha512-crypt hash for the fixture's users.
const acctShadowHash = "$6$saltsalt$Vn7fXbYWm5mKUZsGhuM0vDz9c4l3cX0n2gHq9tJ8uJ4pGZVt0QeO9X6c0yQzS9c3s8ZqW7kM0qN1rB2pD5fE6."

const (
	acctPasswd = `root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1000:1000:Alice Example:/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
`
	acctGroup = `root:x:0:
daemon:x:1:
shadow:x:42:
sudo:x:27:alice
users:x:100:
nogroup:x:65534:
alice:x:1000:
bob:x:1001:
ops:x:1002:alice
dev:x:1003:
`
	acctShadow = `root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
alice:` + acctShadowHash + `:19000:0:99999:7:::
bob:!:19000:0:99999:7:::
`
	acctLoginDefs = `# /etc/login.defs (fixture)
MAIL_DIR        /var/mail
UID_MIN                  1000
UID_MAX                 60000
SYS_UID_MAX               999
GID_MIN                  1000
GID_MAX                 60000
`
	acctShells = `# /etc/shells: valid login shells
/bin/sh
/bin/bash
/usr/bin/bash
`
)

// accountsFixture is a host with a temporary root: alice (1000, in sudo
// and ops) and bob (1001) are regular users with homes; root, daemon and
// nobody are not sera's to manage.
type accountsFixture struct {
	t      *testing.T
	Root   string // the host's filesystem root
	State  string // SERA_STATE, outside Root
	Host   *Host
	Runner *accountsRunner
}

// acctNeedRoot skips a test that needs root (to own files as other
// users), except in CI, where every test must run.
func acctNeedRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the account tests need root (they chown files to test users); CI must run them as root")
	}
	t.Skip("the account tests need root (they chown files to test users)")
}

func newAccountsFixture(t *testing.T) *accountsFixture {
	t.Helper()
	acctNeedRoot(t)
	root := t.TempDir()
	// t.TempDir is 0700 for root; a host's / is 0755, and the paths
	// below must look like a host's.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &accountsFixture{t: t, Root: root, State: t.TempDir()}
	f.Runner = &accountsRunner{root: root}
	f.Host = &Host{Name: "web1", Version: "test", Sys: &host.System{Exec: f.Runner, FS: host.FS{Root: root}, Clock: host.FixedClock{T: acctNow}, Net: host.NoNet{}, State: f.State}}

	for _, d := range []string{"etc", "bin", "usr/bin", "usr/sbin", "proc", "home", "srv", "var/lib"} {
		f.mkdir(d, 0o755, 0, 0)
	}
	f.mkdir("root", 0o700, 0, 0)
	f.writeFile("etc/passwd", acctPasswd, 0o644, 0, 0)
	f.writeFile("etc/group", acctGroup, 0o644, 0, 0)
	f.writeFile("etc/shadow", acctShadow, 0o640, 0, 42)
	f.writeFile("etc/login.defs", acctLoginDefs, 0o644, 0, 0)
	f.writeFile("etc/shells", acctShells, 0o644, 0, 0)
	for _, sh := range []string{"bin/bash", "bin/sh", "usr/bin/bash", "usr/sbin/nologin", "bin/zsh"} {
		// bin/zsh is a program that is not a listed login shell.
		f.writeFile(sh, "#!/bin/false\n", 0o755, 0, 0)
	}
	f.mkdir("home/alice", 0o750, 1000, 1000)
	f.writeFile("home/alice/.profile", "# alice's profile\n", 0o644, 1000, 1000)
	f.writeFile("home/alice/notes.txt", "alice's notes\n", 0o600, 1000, 1000)
	f.mkdir("home/bob", 0o750, 1001, 1001)
	f.writeFile("home/bob/.profile", "# bob's profile\n", 0o644, 1001, 1001)
	return f
}

// p is the fixture path of the host path hp ("etc/passwd" or "/etc/passwd").
func (f *accountsFixture) p(hp string) string { return filepath.Join(f.Root, hp) }

func (f *accountsFixture) mkdir(hp string, mode os.FileMode, uid, gid int) {
	f.t.Helper()
	p := f.p(hp)
	if err := os.MkdirAll(p, 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		f.t.Fatal(err)
	}
}

func (f *accountsFixture) writeFile(hp, content string, mode os.FileMode, uid, gid int) {
	f.t.Helper()
	p := f.p(hp)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		f.t.Fatal(err)
	}
}

func (f *accountsFixture) readFile(hp string) string {
	f.t.Helper()
	b, err := os.ReadFile(f.p(hp))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

// symlink makes the fixture path hp a symbolic link to target (a real
// path).
func (f *accountsFixture) symlink(target, hp string) {
	f.t.Helper()
	if err := os.Symlink(target, f.p(hp)); err != nil {
		f.t.Fatal(err)
	}
}

// writeKeys writes alice's (or another user's) authorized_keys as the user
// would: a 0700 .ssh and a 0600 file they own.
func (f *accountsFixture) writeKeys(user, content string) {
	f.t.Helper()
	u := f.user(user)
	f.mkdir(u.Home+"/.ssh", 0o700, u.UID, u.GID)
	f.writeFile(u.Home+"/.ssh/authorized_keys", content, 0o600, u.UID, u.GID)
}

// keys reads a user's authorized_keys ("" if it is missing).
func (f *accountsFixture) keys(user string) string {
	f.t.Helper()
	b, err := os.ReadFile(f.p(f.user(user).Home + "/.ssh/authorized_keys"))
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	} else if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

// db reads the fixture's account database as sera does.
func (f *accountsFixture) db() *accounts.DB {
	f.t.Helper()
	db, err := accounts.Load(f.Host.Sys)
	if err != nil {
		f.t.Fatal(err)
	}
	return db
}

// user is name's passwd entry; the test fails if there is none.
func (f *accountsFixture) user(name string) accounts.User {
	f.t.Helper()
	u := f.db().User(name)
	if u == nil {
		f.t.Fatalf("no user %s in the fixture", name)
	}
	return *u
}

// setShadow changes name's password hash and expiry (days since 1970, -1
// for never) in the fixture's /etc/shadow.
func (f *accountsFixture) setShadow(name, hash string, expires int) {
	f.t.Helper()
	err := acctEditTable(f.p("etc/shadow"), func(rows [][]string) ([][]string, error) {
		for _, r := range rows {
			if r[0] == name {
				r[1] = hash
				r[7] = ""
				if expires >= 0 {
					r[7] = strconv.Itoa(expires)
				}
				return rows, nil
			}
		}
		return nil, fmt.Errorf("no %s in shadow", name)
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// shadow is what sera reads of name's /etc/shadow line.
func (f *accountsFixture) shadow(name string) accounts.Shadow {
	f.t.Helper()
	sh, ok := f.db().Shadow[name]
	if !ok {
		f.t.Fatalf("no %s in shadow", name)
	}
	return sh
}

// addProcess makes /proc/PID/status say a process of uid runs.
func (f *accountsFixture) addProcess(pid, uid int) {
	f.t.Helper()
	dir := fmt.Sprintf("proc/%d", pid)
	f.mkdir(dir, 0o555, 0, 0)
	f.writeFile(dir+"/status", fmt.Sprintf("Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t%d\nUid:\t%d\t%d\t%d\t%d\nGid:\t%d\t%d\t%d\t%d\n",
		pid, uid, uid, uid, uid, uid, uid, uid, uid), 0o444, 0, 0)
}

// setLoginDefs replaces /etc/login.defs.
func (f *accountsFixture) setLoginDefs(content string) {
	f.t.Helper()
	f.writeFile("etc/login.defs", content, 0o644, 0, 0)
}

// acctRun is the outcome of one command line.
type acctRun struct {
	argv []string
	// resolveErr is set when Resolve refused the line: the watcher
	// replies StatusRejected and runs nothing.
	resolveErr error
	status     int
	stdout     string
	stderr     string
}

func (r acctRun) String() string {
	return fmt.Sprintf("sera %s: status %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.argv, " "), r.status, r.stdout, r.stderr)
}

// run handles argv exactly as the watcher does: Resolve (the allowlist and
// the command's own checks), then, if it resolved, Run.
func (f *accountsFixture) run(argv ...string) acctRun {
	f.t.Helper()
	h := &Handler{Host: f.Host}
	if _, err := h.Resolve(argv); err != nil {
		return acctRun{argv: argv, resolveErr: err, status: sera.StatusRejected, stderr: err.Error() + "\n"}
	}
	return f.runDirect(argv...)
}

// runDirect runs argv without Resolve: only the host-side checks stand
// between it and the host.
func (f *accountsFixture) runDirect(argv ...string) acctRun {
	f.t.Helper()
	h := &Handler{Host: f.Host}
	res := h.Run(context.Background(), &sera.Call{Argv: argv, Command: strings.Join(argv[:min(2, len(argv))], " ")})
	return acctRun{argv: argv, status: res.Status, stdout: string(res.Stdout), stderr: string(res.Stderr)}
}

// ok runs argv, which must succeed, and returns its stdout.
func (f *accountsFixture) ok(argv ...string) string {
	f.t.Helper()
	r := f.run(argv...)
	if r.resolveErr != nil || r.status != 0 {
		f.t.Fatalf("want success:\n%s", r)
	}
	return r.stdout
}

// fail runs argv, which must fail, and returns its stderr.
func (f *accountsFixture) fail(argv ...string) string {
	f.t.Helper()
	r := f.run(argv...)
	if r.status == 0 {
		f.t.Fatalf("want failure:\n%s", r)
	}
	return r.stderr
}

// snapshot records every file under the root and the state directory:
// type, mode, owner, content or link target. The accounts lock file is
// left out: taking the lock is not a change.
func (f *accountsFixture) snapshot() map[string]string {
	f.t.Helper()
	snap := map[string]string{}
	for _, base := range []string{f.Root, f.State} {
		err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if filepath.Base(p) == "accounts.lock" {
				return nil
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			st := fi.Sys().(*syscall.Stat_t)
			desc := fmt.Sprintf("%v %d:%d ino=%d", fi.Mode(), st.Uid, st.Gid, st.Ino)
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				desc += " -> " + target
			case fi.Mode().IsRegular():
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				desc += fmt.Sprintf(" mtime=%d %q", fi.ModTime().UnixNano(), b)
			}
			snap[p] = desc
			return nil
		})
		if err != nil {
			f.t.Fatal(err)
		}
	}
	return snap
}

// unchanged fails the test if the host's files differ from before.
func (f *accountsFixture) unchanged(before map[string]string) {
	f.t.Helper()
	after := f.snapshot()
	var diffs []string
	for p, b := range before {
		if a, ok := after[p]; !ok {
			diffs = append(diffs, "removed "+p)
		} else if a != b {
			diffs = append(diffs, fmt.Sprintf("changed %s:\n  before %s\n  after  %s", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "created "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		f.t.Errorf("the host's files changed:\n%s", strings.Join(diffs, "\n"))
	}
}

// noCalls fails the test if the runner ran anything.
func (f *accountsFixture) noCalls() {
	f.t.Helper()
	if calls := f.Runner.Calls(); len(calls) > 0 {
		f.t.Errorf("ran %q, want nothing run", calls)
	}
}

// acctKey is a fresh ed25519 key: its authorized_keys line (with comment)
// and the parsed key.
func acctKey(t *testing.T, comment string) (string, ssh.PublicKey) {
	return keystest.AuthorizedLine(t, comment)
}

// acctFP is a key's SHA256 fingerprint.
func acctFP(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

// acctBlock is the managed block holding lines.
func acctBlock(lines ...string) string {
	return sshkeys.BlockBegin + "\n" + strings.Join(lines, "\n") + "\n" + sshkeys.BlockEnd + "\n"
}

// acctExit is a program's failure with an exit status, as exec.ExitError
// reports it.
type acctExit struct {
	code int
	msg  string
}

func (e *acctExit) Error() string { return fmt.Sprintf("exit status %d: %s", e.code, e.msg) }
func (e *acctExit) ExitCode() int { return e.code }

// accountsRunner is a fake host's shadow-utils, pkill and tar: it records
// every argv and applies it to the files under root, strictly (an option
// it does not know, or a name not after "--", is an error), so that a
// second run of a command sees what the first one did.
type accountsRunner struct {
	root string

	mu    sync.Mutex
	calls [][]string
	// fail, if set, is asked before each argv is applied; an error it
	// returns is the program's failure and nothing is applied.
	fail func(argv []string) error
}

// Calls is every argv run so far.
func (r *accountsRunner) Calls() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// Reset forgets the calls so far.
func (r *accountsRunner) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

// RunInput implements InputRunner: chpasswd --encrypted, reading
// "user:hash" lines as the real one does (the call is recorded without its
// input, as argv is all another user could see).
func (r *accountsRunner) RunInput(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	if len(argv) != 2 || argv[0] != "chpasswd" || argv[1] != "--encrypted" {
		return r.Run(ctx, argv...)
	}
	r.mu.Lock()
	r.calls = append(r.calls, slices.Clone(argv))
	r.mu.Unlock()
	for _, line := range strings.Split(strings.TrimSuffix(string(stdin), "\n"), "\n") {
		user, hash, ok := strings.Cut(line, ":")
		if !ok {
			return nil, &acctExit{code: 1, msg: "chpasswd: line 1: missing new password"}
		}
		r.mu.Lock()
		err := r.usermod([]string{"--password", hash, "--", user})
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// Run implements Runner.
func (r *accountsRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, slices.Clone(argv))
	if len(argv) == 0 {
		return nil, errors.New("empty argv")
	}
	if r.fail != nil {
		if err := r.fail(argv); err != nil {
			return nil, err
		}
	}
	var err error
	switch argv[0] {
	case "useradd":
		err = r.useradd(argv[1:])
	case "usermod":
		err = r.usermod(argv[1:])
	case "userdel":
		err = r.userdel(argv[1:])
	case "pkill":
		err = r.pkill(argv[1:])
	case "tar":
		err = r.tar(argv[1:])
	default:
		err = &acctExit{code: 127, msg: argv[0] + ": not a program the fake host has"}
	}
	return nil, err
}

func (r *accountsRunner) path(hp string) string { return filepath.Join(r.root, hp) }

// acctArgs walks an argv's options; the operand must follow "--".
type acctArgs struct {
	args    []string
	i       int
	operand string
	err     error
}

// next returns the next option, or "" at "--" (the operand is then set)
// or at the end.
func (a *acctArgs) next() string {
	if a.err != nil || a.i >= len(a.args) {
		return ""
	}
	o := a.args[a.i]
	a.i++
	if o == "--" {
		if len(a.args)-a.i != 1 {
			a.err = &acctExit{code: 2, msg: fmt.Sprintf("want exactly one operand after --, got %q", a.args[a.i:])}
			return ""
		}
		a.operand = a.args[a.i]
		a.i = len(a.args)
		return ""
	}
	if !strings.HasPrefix(o, "--") {
		a.err = &acctExit{code: 2, msg: fmt.Sprintf("%q is not an option; operands go after --", o)}
		return ""
	}
	return o
}

func (a *acctArgs) value() string {
	if a.i >= len(a.args) {
		a.err = &acctExit{code: 2, msg: "option " + a.args[a.i-1] + " needs a value"}
		return ""
	}
	v := a.args[a.i]
	a.i++
	return v
}

func (a *acctArgs) intValue() int {
	v := a.value()
	n, err := strconv.Atoi(v)
	if err != nil && a.err == nil {
		a.err = &acctExit{code: 3, msg: fmt.Sprintf("invalid numeric argument %q", v)}
	}
	return n
}

func (a *acctArgs) unknown(o string) {
	if a.err == nil {
		a.err = &acctExit{code: 2, msg: "unrecognized option " + o}
	}
}

func (a *acctArgs) done() error {
	if a.err == nil && a.operand == "" {
		a.err = &acctExit{code: 2, msg: "no operand after --"}
	}
	return a.err
}

// acctReadTable reads a colon-separated account file.
func acctReadTable(p string) ([][]string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line != "" {
			rows = append(rows, strings.Split(line, ":"))
		}
	}
	return rows, nil
}

// acctEditTable rewrites a colon-separated account file in place (same
// inode, mode and owner).
func acctEditTable(p string, edit func([][]string) ([][]string, error)) error {
	rows, err := acctReadTable(p)
	if err != nil {
		return err
	}
	if rows, err = edit(rows); err != nil {
		return err
	}
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.Join(r, ":") + "\n")
	}
	if old, err := os.ReadFile(p); err == nil && string(old) == b.String() {
		return nil // like shadow-utils, leave an unchanged file alone
	}
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	return os.WriteFile(p, []byte(b.String()), fi.Mode())
}

func acctFindRow(rows [][]string, name string) []string {
	for _, r := range rows {
		if r[0] == name {
			return r
		}
	}
	return nil
}

func acctRowWithID(rows [][]string, id int) []string {
	for _, r := range rows {
		if r[2] == strconv.Itoa(id) {
			return r
		}
	}
	return nil
}

func acctFreeID(rows [][]string, from int) int {
	for id := from; ; id++ {
		if acctRowWithID(rows, id) == nil {
			return id
		}
	}
}

// acctGroupsExist checks a --groups list the way useradd and usermod do.
func acctGroupsExist(groups [][]string, list string) ([]string, error) {
	names := strings.Split(list, ",")
	if list == "" {
		names = nil
	}
	for _, g := range names {
		if acctFindRow(groups, g) == nil {
			return nil, &acctExit{code: 6, msg: "group '" + g + "' does not exist"}
		}
	}
	return names, nil
}

func acctSetMember(g []string, user string, member bool) {
	members := sera.SplitList(g[3])
	members = slices.DeleteFunc(members, func(m string) bool { return m == user })
	if member {
		members = append(members, user)
	}
	g[3] = strings.Join(members, ",")
}

func (r *accountsRunner) useradd(args []string) error {
	a := &acctArgs{args: args}
	uid, gid := -1, -1
	var groups, shell, comment string
	hash, createHome := "!", false
	for o := a.next(); o != ""; o = a.next() {
		switch o {
		case "--create-home":
			createHome = true
		case "--uid":
			uid = a.intValue()
		case "--gid":
			gid = a.intValue()
		case "--groups":
			groups = a.value()
		case "--shell":
			shell = a.value()
		case "--comment":
			comment = a.value()
		case "--password":
			hash = a.value()
		default:
			a.unknown(o)
		}
	}
	if err := a.done(); err != nil {
		return err
	}
	name := a.operand
	passwd, err := acctReadTable(r.path("etc/passwd"))
	if err != nil {
		return err
	}
	group, err := acctReadTable(r.path("etc/group"))
	if err != nil {
		return err
	}
	if acctFindRow(passwd, name) != nil {
		return &acctExit{code: 9, msg: "user '" + name + "' already exists"}
	}
	if uid < 0 {
		uid = acctFreeID(passwd, 1000)
	} else if acctRowWithID(passwd, uid) != nil {
		return &acctExit{code: 4, msg: "UID " + strconv.Itoa(uid) + " is not unique"}
	}
	supplementary, err := acctGroupsExist(group, groups)
	if err != nil {
		return err
	}
	if gid < 0 {
		if acctFindRow(group, name) != nil {
			return &acctExit{code: 9, msg: "group " + name + " exists"}
		}
		gid = uid
		if acctRowWithID(group, gid) != nil {
			gid = acctFreeID(group, 1000)
		}
		group = append(group, []string{name, "x", strconv.Itoa(gid), ""})
	} else if acctRowWithID(group, gid) == nil {
		return &acctExit{code: 6, msg: "group '" + strconv.Itoa(gid) + "' does not exist"}
	}
	for _, g := range supplementary {
		acctSetMember(acctFindRow(group, g), name, true)
	}
	if shell == "" {
		shell = "/bin/sh"
	}
	home := "/home/" + name
	passwd = append(passwd, []string{name, "x", strconv.Itoa(uid), strconv.Itoa(gid), comment, home, shell})
	if err := acctEditTable(r.path("etc/passwd"), func([][]string) ([][]string, error) { return passwd, nil }); err != nil {
		return err
	}
	if err := acctEditTable(r.path("etc/group"), func([][]string) ([][]string, error) { return group, nil }); err != nil {
		return err
	}
	err = acctEditTable(r.path("etc/shadow"), func(rows [][]string) ([][]string, error) {
		return append(rows, []string{name, hash, "20468", "0", "99999", "7", "", "", ""}), nil
	})
	if err != nil {
		return err
	}
	if createHome {
		p := r.path(home)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(p, ".profile"), []byte("# skel\n"), 0o644); err != nil {
			return err
		}
		for _, q := range []string{p, filepath.Join(p, ".profile")} {
			if err := os.Lchown(q, uid, gid); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *accountsRunner) usermod(args []string) error {
	a := &acctArgs{args: args}
	type edit struct {
		opt, val string
	}
	var edits []edit
	appendGroups := false
	for o := a.next(); o != ""; o = a.next() {
		switch o {
		case "--lock", "--unlock":
			edits = append(edits, edit{opt: o})
		case "--append":
			appendGroups = true
		case "--expiredate", "--shell", "--comment", "--uid", "--gid", "--groups", "--password":
			edits = append(edits, edit{o, a.value()})
		default:
			a.unknown(o)
		}
	}
	if err := a.done(); err != nil {
		return err
	}
	name := a.operand
	passwd, err := acctReadTable(r.path("etc/passwd"))
	if err != nil {
		return err
	}
	group, err := acctReadTable(r.path("etc/group"))
	if err != nil {
		return err
	}
	shadow, err := acctReadTable(r.path("etc/shadow"))
	if err != nil {
		return err
	}
	pw, sh := acctFindRow(passwd, name), acctFindRow(shadow, name)
	if pw == nil || sh == nil {
		return &acctExit{code: 6, msg: "user '" + name + "' does not exist"}
	}
	for _, e := range edits {
		switch e.opt {
		case "--lock":
			sh[1] = "!" + sh[1]
		case "--unlock":
			if len(sh[1]) <= 1 || sh[1][0] != '!' {
				return &acctExit{code: 1, msg: "unlocking the user's password would result in a passwordless account"}
			}
			sh[1] = sh[1][1:]
		case "--password":
			sh[1] = e.val
		case "--expiredate":
			if e.val == "" {
				sh[7] = ""
				break
			}
			d, err := time.Parse("2006-01-02", e.val)
			if err != nil {
				return &acctExit{code: 3, msg: "invalid date '" + e.val + "'"}
			}
			sh[7] = strconv.FormatInt(d.Unix()/86400, 10)
		case "--shell":
			pw[6] = e.val
		case "--comment":
			pw[4] = e.val
		case "--uid":
			uid, err := strconv.Atoi(e.val)
			if err != nil {
				return &acctExit{code: 3, msg: "invalid user ID '" + e.val + "'"}
			}
			if other := acctRowWithID(passwd, uid); other != nil && other[0] != name {
				return &acctExit{code: 4, msg: "UID '" + e.val + "' already exists"}
			}
			// usermod -u moves the home's files to the new uid.
			old, _ := strconv.Atoi(pw[2])
			err = filepath.WalkDir(r.path(pw[5]), func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				fi, err := os.Lstat(p)
				if err != nil {
					return err
				}
				if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) == old {
					return os.Lchown(p, uid, -1)
				}
				return nil
			})
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			pw[2] = e.val
		case "--gid":
			gid, err := strconv.Atoi(e.val)
			if err != nil || acctRowWithID(group, gid) == nil {
				return &acctExit{code: 6, msg: "group '" + e.val + "' does not exist"}
			}
			pw[3] = e.val
		case "--groups":
			want, err := acctGroupsExist(group, e.val)
			if err != nil {
				return err
			}
			for _, g := range group {
				if slices.Contains(want, g[0]) {
					acctSetMember(g, name, true)
				} else if !appendGroups {
					acctSetMember(g, name, false)
				}
			}
		}
	}
	for _, t := range []struct {
		file string
		rows [][]string
	}{{"etc/passwd", passwd}, {"etc/group", group}, {"etc/shadow", shadow}} {
		if err := acctEditTable(r.path(t.file), func([][]string) ([][]string, error) { return t.rows, nil }); err != nil {
			return err
		}
	}
	return nil
}

func (r *accountsRunner) userdel(args []string) error {
	a := &acctArgs{args: args}
	remove := false
	for o := a.next(); o != ""; o = a.next() {
		if o == "--remove" {
			remove = true
		} else {
			a.unknown(o)
		}
	}
	if err := a.done(); err != nil {
		return err
	}
	name := a.operand
	passwd, err := acctReadTable(r.path("etc/passwd"))
	if err != nil {
		return err
	}
	pw := acctFindRow(passwd, name)
	if pw == nil {
		return &acctExit{code: 6, msg: "user '" + name + "' does not exist"}
	}
	drop := func(rows [][]string) ([][]string, error) {
		return slices.DeleteFunc(rows, func(r []string) bool { return r[0] == name }), nil
	}
	if err := acctEditTable(r.path("etc/passwd"), drop); err != nil {
		return err
	}
	if err := acctEditTable(r.path("etc/shadow"), drop); err != nil {
		return err
	}
	err = acctEditTable(r.path("etc/group"), func(rows [][]string) ([][]string, error) {
		for _, g := range rows {
			acctSetMember(g, name, false)
		}
		// The user's own group goes with it (USERGROUPS_ENAB).
		return slices.DeleteFunc(rows, func(g []string) bool { return g[0] == name && g[2] == pw[3] && g[3] == "" }), nil
	})
	if err != nil {
		return err
	}
	if remove {
		return os.RemoveAll(r.path(pw[5]))
	}
	return nil
}

func (r *accountsRunner) pkill(args []string) error {
	if len(args) != 4 || args[0] != "--signal" || args[1] != "KILL" || args[2] != "--uid" {
		return &acctExit{code: 2, msg: fmt.Sprintf("unexpected pkill arguments %q", args)}
	}
	ents, err := os.ReadDir(r.path("proc"))
	if err != nil {
		return err
	}
	killed := 0
	for _, e := range ents {
		b, err := os.ReadFile(r.path("proc/" + e.Name() + "/status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" && f[1] == args[3] {
				if err := os.RemoveAll(r.path("proc/" + e.Name())); err != nil {
					return err
				}
				killed++
			}
		}
	}
	if killed == 0 {
		return &acctExit{code: 1, msg: "no process matched"}
	}
	return nil
}

// tar handles "tar --create --gzip --file F --directory D -- .": F is a
// real path (SERA_STATE is outside the fake root), D a host path.
func (r *accountsRunner) tar(args []string) error {
	want := []string{"--create", "--gzip", "--file", "F", "--directory", "D", "--", "."}
	if len(args) != len(want) {
		return &acctExit{code: 2, msg: fmt.Sprintf("unexpected tar arguments %q", args)}
	}
	for i, w := range want {
		if w != "F" && w != "D" && args[i] != w {
			return &acctExit{code: 2, msg: fmt.Sprintf("unexpected tar arguments %q", args)}
		}
	}
	file, dir := args[3], r.path(args[5])
	// Like tar, write into the file as it is (sera created it 0600).
	out, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	zw := gzip.NewWriter(out)
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr.Name = "./" + filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name = strings.TrimSuffix(hdr.Name, "/.") + "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			if _, err := io.Copy(tw, in); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return out.Close()
}

// acctTarFiles lists a .tar.gz's entries with the contents of its
// regular files.
func acctTarFiles(t *testing.T, path string) map[string]string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = string(b)
	}
}
