package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sudo"
)

// groupFakeRunner is a stateful fake of the programs the group and sudo
// commands run: it records every argv and applies groupadd, groupdel and
// gpasswd to the files under root, and checks files with visudo -cf the
// way the real one would for the shapes sera writes. Any other command, or
// another argv shape, fails: the tests pin the exact command lines.
type groupFakeRunner struct {
	root string

	mu    sync.Mutex
	calls [][]string
	// beforeVisudo, if set, runs before visudo reads its file.
	beforeVisudo func(path string)
}

func (r *groupFakeRunner) Calls() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *groupFakeRunner) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

func (r *groupFakeRunner) Run(_ context.Context, argv ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, slices.Clone(argv))
	fail := func(code int, format string, args ...any) ([]byte, error) {
		return nil, fmt.Errorf("%s failed: exit status %d: %s: %s", argv[0], code, argv[0], fmt.Sprintf(format, args...))
	}
	switch {
	case len(argv) == 3 && argv[0] == "groupadd" && argv[1] == "--",
		len(argv) == 5 && argv[0] == "groupadd" && argv[1] == "--gid" && argv[3] == "--":
		name := argv[len(argv)-1]
		groups := r.readGroups()
		if slices.ContainsFunc(groups, func(g []string) bool { return g[0] == name }) {
			return fail(9, "group '%s' already exists", name)
		}
		gid := 1000
		if len(argv) == 5 {
			gid, _ = strconv.Atoi(argv[2])
			if slices.ContainsFunc(groups, func(g []string) bool { return g[2] == argv[2] }) {
				return fail(4, "GID '%d' already exists", gid)
			}
		} else {
			for _, g := range groups {
				if n, _ := strconv.Atoi(g[2]); n >= gid && n < 60000 {
					gid = n + 1
				}
			}
		}
		r.writeGroups(append(groups, []string{name, "x", strconv.Itoa(gid), ""}))
		return nil, nil
	case len(argv) == 3 && argv[0] == "groupdel" && argv[1] == "--":
		groups := r.readGroups()
		i := slices.IndexFunc(groups, func(g []string) bool { return g[0] == argv[2] })
		if i < 0 {
			return fail(6, "group '%s' does not exist", argv[2])
		}
		for _, u := range r.lines("etc/passwd") {
			if u[3] == groups[i][2] {
				return fail(8, "cannot remove the primary group of user '%s'", u[0])
			}
		}
		r.writeGroups(slices.Delete(groups, i, i+1))
		return nil, nil
	case len(argv) == 5 && argv[0] == "gpasswd" && (argv[1] == "-a" || argv[1] == "-d") && argv[3] == "--":
		user, name := argv[2], argv[4]
		groups := r.readGroups()
		i := slices.IndexFunc(groups, func(g []string) bool { return g[0] == name })
		if i < 0 {
			return fail(3, "group '%s' does not exist", name)
		}
		members := sera.SplitList(groups[i][3])
		if argv[1] == "-a" {
			if !slices.ContainsFunc(r.lines("etc/passwd"), func(u []string) bool { return u[0] == user }) {
				return fail(3, "user '%s' does not exist", user)
			}
			if !slices.Contains(members, user) {
				members = append(members, user)
			}
		} else {
			j := slices.Index(members, user)
			if j < 0 {
				return fail(3, "user '%s' is not a member of '%s'", user, name)
			}
			members = slices.Delete(members, j, j+1)
		}
		groups[i][3] = strings.Join(members, ",")
		r.writeGroups(groups)
		return nil, nil
	case len(argv) == 3 && argv[0] == "visudo" && argv[1] == "-cf":
		if r.beforeVisudo != nil {
			r.beforeVisudo(argv[2])
		}
		b, err := os.ReadFile(argv[2])
		if err != nil {
			return fail(1, "unable to open %s: %v", argv[2], err)
		}
		for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if !fakeSudoersLine.MatchString(line) || strings.Contains(line, "SYNTAX ERROR") {
				return fail(1, "%s:%d:1: syntax error", argv[2], i+1)
			}
		}
		return []byte(argv[2] + ": parsed OK\n"), nil
	}
	return nil, fmt.Errorf("fake runner: unexpected command %q", argv)
}

// fakeSudoersLine is what the fake visudo accepts: comments (never an
// #include directive) and the rules sera writes.
var fakeSudoersLine = regexp.MustCompile(`^(# [^\n]*|%[a-z][-a-z0-9_]* ALL=\(ALL:ALL\) (NOPASSWD: )?ALL)$`)

func (r *groupFakeRunner) lines(rel string) [][]string {
	b, err := os.ReadFile(filepath.Join(r.root, rel))
	if err != nil {
		panic(err)
	}
	var out [][]string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "" {
			out = append(out, strings.Split(l, ":"))
		}
	}
	return out
}

func (r *groupFakeRunner) readGroups() [][]string { return r.lines("etc/group") }

func (r *groupFakeRunner) writeGroups(groups [][]string) {
	var b strings.Builder
	for _, g := range groups {
		b.WriteString(strings.Join(g, ":") + "\n")
	}
	// As shadow-utils does (a new file renamed into place), so that a
	// check reading /etc/group while a change runs never sees it half
	// written.
	tmp := filepath.Join(r.root, "etc/group+")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		panic(err)
	}
	if err := os.Rename(tmp, filepath.Join(r.root, "etc/group")); err != nil {
		panic(err)
	}
}

const (
	testPasswd = `root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
svc:x:999:999::/var/lib/svc:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
carol:x:1002:1002::/home/carol:/bin/bash
`
	testGroup = `root:x:0:
daemon:x:1:
sudo:x:27:alice
users:x:100:
svc:x:999:
alice:x:1000:
bob:x:1001:
carol:x:1002:
ops:x:1500:alice
devs:x:1501:
`
	// testOtherDropIn is a drop-in sera did not write: never touched.
	testOtherDropIn = "%ops ALL=(ALL) /usr/bin/true\n"
)

// newGroupTestHost is a host whose files are under a temporary root, with
// users, groups, /etc/sudoers and two drop-ins sera did not write.
func newGroupTestHost(t *testing.T) (*Host, *groupFakeRunner) {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, root, "etc/passwd", testPasswd, 0o644)
	writeTestFile(t, root, "etc/group", testGroup, 0o644)
	writeTestFile(t, root, "etc/sudoers", "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n", 0o440)
	if err := os.Mkdir(filepath.Join(root, "etc/sudoers.d"), 0o750); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, root, "etc/sudoers.d/README", "# files with a '.' are ignored\n", 0o440)
	writeTestFile(t, root, "etc/sudoers.d/other-ops", testOtherDropIn, 0o440)
	r := &groupFakeRunner{root: root}
	return &Host{Name: "web1", Sys: &host.System{Exec: r, FS: host.FS{Root: root}, Clock: host.ClockFunc(time.Now), Net: host.NoNet{}, State: t.TempDir()}}, r
}

func writeTestFile(t *testing.T, root, rel, content string, mode fs.FileMode) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// snapshotRoot is every file and directory under root: mode and content
// (a link's target).
func snapshotRoot(t *testing.T, root string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			snap[rel] = "link " + target
		case fi.IsDir():
			snap[rel] = fi.Mode().String()
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			snap[rel] = fi.Mode().String() + " " + string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func sameSnapshot(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for k, v := range after {
		if w, ok := before[k]; !ok {
			t.Errorf("%s: %s appeared: %q", what, k, v)
		} else if w != v {
			t.Errorf("%s: %s changed:\n%q\nto\n%q", what, k, w, v)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("%s: %s disappeared", what, k)
		}
	}
}

// runGroupSudo runs argv as the watcher does (Handler.Run), in a tree of
// the group and sudo commands alone, so these tests do not depend on the
// registration in hostTree.commands (TestGroupSudoHandler checks that).
func runGroupSudo(h *Host, argv ...string) sera.Result {
	root := &cobra.Command{Use: "sera", SilenceUsage: true, SilenceErrors: true}
	root.CompletionOptions.DisableDefaultCmd = true
	t := &hostTree{host: h}
	root.AddCommand(t.groupCmd(), t.sudoCmd())
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs(argv)
	err := root.ExecuteContext(context.Background())
	code, show := cli.ExitCode(err)
	if show {
		fmt.Fprintf(&stderr, "sera: %v\n", err)
	}
	return sera.Result{Status: code, Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
}

// withDryRun adds --dry-run to argv, before a "--" if there is one.
func withDryRun(argv []string) []string {
	i := slices.Index(argv, "--")
	if i < 0 {
		i = len(argv)
	}
	return slices.Insert(slices.Clone(argv), i, "--dry-run")
}

// hostScenario is a changing command that succeeds: its plan (the exact
// step descriptions), the commands it runs, and what a second run says.
type hostScenario struct {
	name  string
	setup func(t *testing.T, h *Host)
	argv  []string
	// plan is the steps, as --dry-run shows them ("would: …") and a real
	// run does them ("done: …"); empty when there is nothing to do.
	plan []string
	// calls are the commands run, joined by spaces; "$ROOT" stands for
	// the host root and a trailing "*" for any suffix.
	calls []string
	// again is what a run with nothing to do prints.
	again string
	check func(t *testing.T, h *Host)
}

func matchCall(want string, got []string, root string) bool {
	want = strings.ReplaceAll(want, "$ROOT", root)
	g := strings.Join(got, " ")
	if p, ok := strings.CutSuffix(want, "*"); ok {
		return strings.HasPrefix(g, p)
	}
	return g == want
}

func checkCalls(t *testing.T, r *groupFakeRunner, want []string) {
	t.Helper()
	got := r.Calls()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = matchCall(want[i], got[i], r.root)
	}
	if !ok {
		t.Errorf("commands run:\n%q\nwant:\n%q", got, want)
	}
}

// runScenarios checks each scenario four ways: --dry-run prints the plan
// and changes nothing; the real run does exactly the plan; a second run
// runs nothing, says so and leaves every file as it was; and a --dry-run
// then has nothing to show.
func runScenarios(t *testing.T, scenarios []hostScenario) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			h, r := newGroupTestHost(t)
			if sc.setup != nil {
				sc.setup(t, h)
				r.reset()
			}
			var wantDry, wantDone string
			for _, d := range sc.plan {
				if strings.HasPrefix(d, "note: ") {
					// Notes are shown, not done.
					wantDry += d + "\n"
					wantDone += d + "\n"
					continue
				}
				wantDry += "would: " + d + "\n"
				wantDone += "done: " + d + "\n"
			}
			if len(sc.plan) == 0 {
				wantDry, wantDone = sc.again+"\n", sc.again+"\n"
			}

			before := snapshotRoot(t, h.Sys.FS.Root)
			res := runGroupSudo(h, withDryRun(sc.argv)...)
			if res.Status != 0 || string(res.Stdout) != wantDry {
				t.Errorf("--dry-run: status %d, stdout %q, stderr %q; want stdout %q", res.Status, res.Stdout, res.Stderr, wantDry)
			}
			checkCalls(t, r, nil)
			sameSnapshot(t, "--dry-run", before, snapshotRoot(t, h.Sys.FS.Root))

			res = runGroupSudo(h, sc.argv...)
			if res.Status != 0 || string(res.Stdout) != wantDone || len(res.Stderr) != 0 {
				t.Fatalf("run: status %d, stdout %q, stderr %q; want stdout %q", res.Status, res.Stdout, res.Stderr, wantDone)
			}
			checkCalls(t, r, sc.calls)
			if sc.check != nil {
				sc.check(t, h)
			}

			r.reset()
			after := snapshotRoot(t, h.Sys.FS.Root)
			for _, args := range [][]string{sc.argv, withDryRun(sc.argv)} {
				res = runGroupSudo(h, args...)
				if res.Status != 0 || string(res.Stdout) != sc.again+"\n" {
					t.Errorf("%q again: status %d, stdout %q, stderr %q; want %q", args, res.Status, res.Stdout, res.Stderr, sc.again)
				}
			}
			checkCalls(t, r, nil)
			sameSnapshot(t, "second run", after, snapshotRoot(t, h.Sys.FS.Root))
		})
	}
}

// badCase is an input that must be refused with nothing run and nothing
// changed, --dry-run or not.
type badCase struct {
	name  string
	setup func(t *testing.T, h *Host)
	argv  []string
	err   string
}

func runBadCases(t *testing.T, cases []badCase) {
	for _, bc := range cases {
		t.Run(bc.name, func(t *testing.T) {
			h, r := newGroupTestHost(t)
			if bc.setup != nil {
				bc.setup(t, h)
			}
			before := snapshotRoot(t, h.Sys.FS.Root)
			for _, args := range [][]string{bc.argv, withDryRun(bc.argv)} {
				res := runGroupSudo(h, args...)
				if res.Status == 0 || !strings.Contains(string(res.Stderr), bc.err) {
					t.Errorf("%q: status %d, stdout %q, stderr %q; want an error containing %q", args, res.Status, res.Stdout, res.Stderr, bc.err)
				}
				if len(res.Stdout) != 0 {
					t.Errorf("%q: stdout %q, want none", args, res.Stdout)
				}
			}
			checkCalls(t, r, nil)
			sameSnapshot(t, "refused", before, snapshotRoot(t, h.Sys.FS.Root))
		})
	}
}

// groupLine returns the /etc/group line of name, "" if there is none.
func groupLine(t *testing.T, h *Host, name string) string {
	t.Helper()
	b, err := os.ReadFile(h.Sys.Path("/etc/group"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+":") {
			return l
		}
	}
	return ""
}

func wantGroupLine(name, line string) func(t *testing.T, h *Host) {
	return func(t *testing.T, h *Host) {
		t.Helper()
		if got := groupLine(t, h, name); got != line {
			t.Errorf("group %s: %q, want %q", name, got, line)
		}
	}
}

func writeDropIn(name, content string) func(t *testing.T, h *Host) {
	return func(t *testing.T, h *Host) {
		t.Helper()
		writeTestFile(t, h.Sys.FS.Root, "etc/sudoers.d/sera-"+name, content, 0o440)
	}
}

func setGroupLine(name, line string) func(t *testing.T, h *Host) {
	return func(t *testing.T, h *Host) {
		t.Helper()
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(testGroup), "\n") {
			if strings.HasPrefix(l, name+":") {
				l = line
			}
			out = append(out, l)
		}
		writeTestFile(t, h.Sys.FS.Root, "etc/group", strings.Join(out, "\n")+"\n", 0o644)
	}
}

func TestGroupCommands(t *testing.T) {
	long := strings.Repeat("a", 32)
	runScenarios(t, []hostScenario{
		{
			name:  "add with the next free gid",
			argv:  []string{"group", "add", "web"},
			plan:  []string{"groupadd -- web"},
			calls: []string{"groupadd -- web"},
			again: "group web already present (gid 1502)",
			check: wantGroupLine("web", "web:x:1502:"),
		},
		{
			name:  "add with a gid",
			argv:  []string{"group", "add", "web", "--gid", "2000"},
			plan:  []string{"groupadd --gid 2000 -- web"},
			calls: []string{"groupadd --gid 2000 -- web"},
			again: "group web already present (gid 2000)",
			check: wantGroupLine("web", "web:x:2000:"),
		},
		{
			name:  "add a 32-byte name",
			argv:  []string{"group", "add", long},
			plan:  []string{"groupadd -- " + long},
			calls: []string{"groupadd -- " + long},
			again: "group " + long + " already present (gid 1502)",
		},
		{
			name: "add with a gid up to this host's GID_MAX",
			setup: func(t *testing.T, h *Host) {
				writeTestFile(t, h.Sys.FS.Root, "etc/login.defs", "GID_MIN 1000\nGID_MAX 65000\n", 0o644)
			},
			argv:  []string{"group", "add", "big", "--gid=62000"},
			plan:  []string{"groupadd --gid 62000 -- big"},
			calls: []string{"groupadd --gid 62000 -- big"},
			again: "group big already present (gid 62000)",
		},
		{
			name:  "add where a stale sudo drop-in waits",
			setup: writeDropIn("web", string(sudo.Content("web", false))),
			argv:  []string{"group", "add", "web"},
			plan: []string{"groupadd -- web",
				"note: /etc/sudoers.d/sera-web grants sudo to the members of web (remove it with 'sera sudo revoke web')"},
			calls: []string{"groupadd -- web"},
			again: "group web already present (gid 1502)",
		},
		{
			name:  "add present",
			argv:  []string{"group", "add", "ops"},
			again: "group ops already present (gid 1500)",
		},
		{
			name:  "add present with its gid",
			argv:  []string{"group", "add", "--gid=1500", "ops"},
			again: "group ops already present (gid 1500)",
		},
		{
			name:  "del",
			argv:  []string{"group", "del", "devs"},
			plan:  []string{"groupdel -- devs"},
			calls: []string{"groupdel -- devs"},
			again: "group devs already absent",
			check: wantGroupLine("devs", ""),
		},
		{
			name:  "del a group with members",
			argv:  []string{"group", "del", "ops"},
			plan:  []string{"groupdel -- ops"},
			calls: []string{"groupdel -- ops"},
			again: "group ops already absent",
			check: func(t *testing.T, h *Host) {
				// A drop-in sera did not write is not sera's to remove.
				if b, err := os.ReadFile(h.Sys.Path("/etc/sudoers.d/other-ops")); err != nil || string(b) != testOtherDropIn {
					t.Errorf("other-ops: %q, %v", b, err)
				}
			},
		},
		{
			name:  "del absent",
			argv:  []string{"group", "del", "nope"},
			again: "group nope already absent",
		},
		{
			name:  "del revokes the group's sudo first",
			setup: writeDropIn("devs", string(sudo.Content("devs", true))),
			argv:  []string{"group", "del", "devs"},
			plan:  []string{"remove /etc/sudoers.d/sera-devs", "groupdel -- devs"},
			calls: []string{"groupdel -- devs"},
			again: "group devs already absent",
			check: func(t *testing.T, h *Host) {
				if sudo.Present(h.Sys, "devs") {
					t.Error("sera-devs left behind")
				}
			},
		},
		{
			name:  "del of a gone group removes its stale drop-in",
			setup: writeDropIn("gone", string(sudo.Content("gone", false))),
			argv:  []string{"group", "del", "gone"},
			plan:  []string{"remove /etc/sudoers.d/sera-gone"},
			again: "group gone already absent",
		},
		{
			name:  "members add",
			argv:  []string{"group", "members", "add", "ops", "bob", "carol"},
			plan:  []string{"gpasswd -a bob -- ops", "gpasswd -a carol -- ops"},
			calls: []string{"gpasswd -a bob -- ops", "gpasswd -a carol -- ops"},
			again: "group ops: no change, already members: bob, carol",
			check: wantGroupLine("ops", "ops:x:1500:alice,bob,carol"),
		},
		{
			name:  "members add, some already in",
			argv:  []string{"group", "members", "add", "ops", "alice", "bob", "bob"},
			plan:  []string{"gpasswd -a bob -- ops"},
			calls: []string{"gpasswd -a bob -- ops"},
			again: "group ops: no change, already members: alice, bob",
			check: wantGroupLine("ops", "ops:x:1500:alice,bob"),
		},
		{
			name:  "members add, all already in",
			argv:  []string{"group", "members", "add", "ops", "alice"},
			again: "group ops: no change, already members: alice",
		},
		{
			name:  "members remove",
			argv:  []string{"group", "members", "remove", "ops", "alice"},
			plan:  []string{"gpasswd -d alice -- ops"},
			calls: []string{"gpasswd -d alice -- ops"},
			again: "group ops: no change, already not members: alice",
			check: wantGroupLine("ops", "ops:x:1500:"),
		},
		{
			name:  "members remove, not a member",
			argv:  []string{"group", "members", "remove", "ops", "bob"},
			again: "group ops: no change, already not members: bob",
		},
		{
			name:  "members remove a user that does not exist",
			argv:  []string{"group", "members", "remove", "ops", "ghost"},
			again: "group ops: no change, already not members: ghost",
		},
		{
			name:  "members remove a deleted user's entry",
			setup: setGroupLine("ops", "ops:x:1500:alice,ghost"),
			argv:  []string{"group", "members", "remove", "ops", "ghost"},
			plan:  []string{"gpasswd -d ghost -- ops"},
			calls: []string{"gpasswd -d ghost -- ops"},
			again: "group ops: no change, already not members: ghost",
			check: wantGroupLine("ops", "ops:x:1500:alice"),
		},
	})
}

// badNames are names no command may pass to the host.
var badNames = []struct{ name, err string }{
	{"root", "root is never managed by sera"},
	{"-rf", "invalid group name"},
	{"a;b", "invalid group name"},
	{"../x", "invalid group name"},
	{"Alice", "invalid group name"},
	{"a b", "invalid group name"},
	{"", "invalid group name"},
	{strings.Repeat("a", 33), "longer than 32 bytes"},
}

func TestGroupRefused(t *testing.T) {
	var cases []badCase
	for _, cmd := range [][]string{{"group", "add"}, {"group", "del"}} {
		for _, n := range badNames {
			cases = append(cases, badCase{name: strings.Join(cmd, " ") + " " + n.name, argv: append(slices.Clone(cmd), "--", n.name), err: n.err})
		}
	}
	for _, n := range badNames {
		err := strings.Replace(n.err, "group name", "user name", 1)
		cases = append(cases,
			badCase{name: "members add group " + n.name, argv: []string{"group", "members", "add", "--", n.name, "alice"}, err: n.err},
			badCase{name: "members add user " + n.name, argv: []string{"group", "members", "add", "--", "ops", "bob", n.name}, err: err},
			badCase{name: "members remove user " + n.name, argv: []string{"group", "members", "remove", "--", "ops", n.name}, err: err},
		)
	}
	cases = append(cases, []badCase{
		{name: "a name that looks like a flag", argv: []string{"group", "add", "-rf"}, err: "unknown shorthand flag"},
		{name: "no name", argv: []string{"group", "add"}, err: "sera group add needs NAME"},
		{name: "two names", argv: []string{"group", "del", "ops", "devs"}, err: "sera group del takes only NAME; unexpected \"devs\""},
		{name: "gid 0", argv: []string{"group", "add", "web", "--gid=0"}, err: "refusing --gid 0: sera only manages regular groups (gid 1000 and up)"},
		{name: "gid 999", argv: []string{"group", "add", "web", "--gid=999"}, err: "refusing --gid 999"},
		{name: "gid -1", argv: []string{"group", "add", "web", "--gid=-1"}, err: "refusing --gid -1"},
		{name: "gid 70000", argv: []string{"group", "add", "web", "--gid=70000"}, err: "refusing --gid 70000: outside this host's regular range 1000..60000"},
		{name: "gid 2^32-1", argv: []string{"group", "add", "web", "--gid=4294967295"}, err: "invalid --gid 4294967295"},
		{name: "gid not a number", argv: []string{"group", "add", "web", "--gid=x"}, err: "invalid argument"},
		{name: "gid below this host's GID_MIN", setup: func(t *testing.T, h *Host) {
			writeTestFile(t, h.Sys.FS.Root, "etc/login.defs", "GID_MIN 2000\n", 0o644)
		}, argv: []string{"group", "add", "web", "--gid=1999"}, err: "outside this host's regular range 2000..60000"},
		{name: "add a system group", argv: []string{"group", "add", "daemon"}, err: "refusing group daemon: it is a system group (gid 1"},
		{name: "add with another gid", argv: []string{"group", "add", "ops", "--gid=1600"}, err: "group ops exists with gid 1500, not 1600"},
		{name: "add with a used gid", argv: []string{"group", "add", "web", "--gid=1500"}, err: "gid 1500 is already used by group ops"},
		{name: "del a system group", argv: []string{"group", "del", "daemon"}, err: "refusing group daemon: gid 1 is outside the range sera manages (1000..60000)"},
		{name: "del sudo", argv: []string{"group", "del", "sudo"}, err: "refusing group sudo: gid 27"},
		{name: "del a primary group", argv: []string{"group", "del", "alice"}, err: "refusing to delete group alice: it is the primary group of user alice"},
		{name: "del the primary group of two users", setup: func(t *testing.T, h *Host) {
			writeTestFile(t, h.Sys.FS.Root, "etc/passwd", testPasswd+"dave:x:1003:1500::/home/dave:/bin/bash\nerin:x:1004:1500::/home/erin:/bin/bash\n", 0o644)
		}, argv: []string{"group", "del", "ops"}, err: "primary group of user dave, erin"},
		{name: "del with a drop-in that is a directory", setup: func(t *testing.T, h *Host) {
			if err := os.Mkdir(h.Sys.Path("/etc/sudoers.d/sera-devs"), 0o750); err != nil {
				t.Fatal(err)
			}
		}, argv: []string{"group", "del", "devs"}, err: "refusing /etc/sudoers.d/sera-devs: a directory"},
		{name: "members add no user", argv: []string{"group", "members", "add", "ops"}, err: "sera group members add needs USER... after ops"},
		{name: "members add a missing user", argv: []string{"group", "members", "add", "ops", "ghost"}, err: "no user ghost on this host; nothing was changed"},
		{name: "members add all or nothing", argv: []string{"group", "members", "add", "ops", "bob", "ghost", "svc"},
			err: "no user ghost on this host; refusing user svc: uid 999 is outside the range sera manages (1000..60000)"},
		{name: "members add a system user", argv: []string{"group", "members", "add", "ops", "daemon"}, err: "refusing user daemon: uid 1"},
		{name: "members add root", argv: []string{"group", "members", "add", "ops", "root"}, err: `refusing user "root"`},
		{name: "members add to a system group", argv: []string{"group", "members", "add", "sudo", "bob"}, err: "refusing group sudo: gid 27"},
		{name: "members add to a missing group", argv: []string{"group", "members", "add", "nope", "bob"}, err: "no group nope on this host; nothing was changed"},
		{name: "members remove a system user", argv: []string{"group", "members", "remove", "ops", "svc"}, err: "refusing user svc"},
		{name: "members remove from a system group", argv: []string{"group", "members", "remove", "sudo", "alice"}, err: "refusing group sudo"},
	}...)
	runBadCases(t, cases)
}

func TestGroupList(t *testing.T) {
	h, r := newGroupTestHost(t)
	res := runGroupSudo(h, "group", "list")
	want := "alice              1000  none\n" +
		"bob                1001  none\n" +
		"carol              1002  none\n" +
		"ops                1500  alice\n" +
		"devs               1501  none\n"
	if res.Status != 0 || string(res.Stdout) != want {
		t.Errorf("group list: status %d, stderr %q, stdout\n%s\nwant\n%s", res.Status, res.Stderr, res.Stdout, want)
	}
	res = runGroupSudo(h, "group", "list", "--json")
	var got []groupInfo
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		var g groupInfo
		if err := json.Unmarshal([]byte(line), &g); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, g)
	}
	if len(got) != 5 || got[3].Name != "ops" || got[3].GID != 1500 || !slices.Equal(got[3].Members, []string{"alice"}) {
		t.Errorf("group list --json: %+v", got)
	}
	if !strings.Contains(string(res.Stdout), `{"name":"devs","gid":1501,"members":[]}`) {
		t.Errorf("an empty group's members must be [], got %s", res.Stdout)
	}
	checkCalls(t, r, nil)
}

// The accounts lock is taken around every change: two runs on one host
// never interleave, and neither loses the other's change.
func TestGroupMembersConcurrent(t *testing.T) {
	h, _ := newGroupTestHost(t)
	var wg sync.WaitGroup
	for _, u := range []string{"bob", "carol"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res := runGroupSudo(h, "group", "members", "add", "devs", u); res.Status != 0 {
				t.Errorf("add %s: %s", u, res.Stderr)
			}
		}()
	}
	wg.Wait()
	if l := groupLine(t, h, "devs"); l != "devs:x:1501:bob,carol" && l != "devs:x:1501:carol,bob" {
		t.Errorf("devs: %q", l)
	}
	if _, err := os.Stat(filepath.Join(h.Sys.State, "accounts.lock")); err != nil {
		t.Errorf("no accounts lock: %v", err)
	}
}

// These go through the real watcher Handler and the real client tree:
// they need the group and sudo commands registered in
// hostCommands().

// The watcher's Resolve refuses every bad input, so none ever runs
// remotely; Run runs the good ones.
func TestGroupSudoHandler(t *testing.T) {
	paths := HostCommands()
	for _, want := range []string{"group add", "group del", "group members add", "group members remove", "group list", "sudo grant", "sudo revoke", "sudo list"} {
		if !slices.Contains(paths, want) {
			t.Fatalf("%q is not a host command: register t.groupCmd(), t.sudoCmd() in hostCommands()", want)
		}
	}
	h, r := newGroupTestHost(t)
	hd := &Handler{Host: h}
	before := snapshotRoot(t, h.Sys.FS.Root)

	good := []struct {
		argv []string
		want string
	}{
		{[]string{"group", "add", "--", "web"}, "group add"},
		{[]string{"group", "add", "--gid=2000", "--dry-run=true", "--", "web"}, "group add"},
		{[]string{"group", "add", "--", "ops"}, "group add"},
		{[]string{"group", "del", "--", "devs"}, "group del"},
		{[]string{"group", "del", "--", "nope"}, "group del"},
		{[]string{"group", "members", "add", "--", "ops", "bob", "carol"}, "group members add"},
		{[]string{"group", "members", "remove", "--", "ops", "alice"}, "group members remove"},
		{[]string{"group", "list", "--json=true"}, "group list"},
		{[]string{"sudo", "grant", "--nopasswd=true", "--", "ops"}, "sudo grant"},
		{[]string{"sudo", "revoke", "--", "ops"}, "sudo revoke"},
		{[]string{"sudo", "list"}, "sudo list"},
	}
	for _, g := range good {
		if got, err := hd.Resolve(g.argv); err != nil || got != g.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", g.argv, got, err, g.want)
		}
	}

	var bad []badCase
	for _, cmd := range [][]string{{"group", "add"}, {"group", "del"}, {"sudo", "grant"}, {"sudo", "revoke"}} {
		for _, n := range badNames {
			bad = append(bad, badCase{argv: append(slices.Clone(cmd), "--", n.name), err: n.err})
		}
	}
	for _, n := range badNames {
		bad = append(bad,
			badCase{argv: []string{"group", "members", "add", "--", n.name, "bob"}, err: n.err},
			badCase{argv: []string{"group", "members", "add", "--", "ops", n.name}, err: strings.Replace(n.err, "group", "user", 1)})
	}
	bad = append(bad, []badCase{
		{argv: []string{"group", "add", "-rf"}, err: "unknown shorthand flag"},
		{argv: []string{"group", "add", "--gid=0", "--", "web"}, err: "refusing --gid 0"},
		{argv: []string{"group", "add", "--gid=999", "--", "web"}, err: "refusing --gid 999"},
		{argv: []string{"group", "add", "--gid=70000", "--", "web"}, err: "refusing --gid 70000: outside this host's regular range 1000..60000"},
		{argv: []string{"group", "add", "--gid=1500", "--", "web"}, err: "gid 1500 is already used by group ops"},
		{argv: []string{"group", "add", "--gid=1600", "--", "ops"}, err: "group ops exists with gid 1500"},
		{argv: []string{"group", "add", "--", "daemon"}, err: "system group"},
		{argv: []string{"group", "del", "--", "daemon"}, err: "refusing group daemon"},
		{argv: []string{"group", "del", "--", "alice"}, err: "primary group of user alice"},
		{argv: []string{"group", "members", "add", "--", "ops", "ghost"}, err: "no user ghost on this host"},
		{argv: []string{"group", "members", "add", "--", "ops", "daemon"}, err: "refusing user daemon"},
		{argv: []string{"group", "members", "add", "--", "sudo", "bob"}, err: "refusing group sudo"},
		{argv: []string{"group", "members", "remove", "--", "ops", "svc"}, err: "refusing user svc"},
		{argv: []string{"sudo", "grant", "--", "sudo"}, err: "refusing group sudo: gid 27"},
		{argv: []string{"sudo", "grant", "--", "nope"}, err: "no group nope"},
		{argv: []string{"sudo", "revoke", "--", "sudo"}, err: "refusing sudo for sudo"},
		{argv: []string{"group", "list", "--", "x"}, err: "takes no arguments; unexpected \"x\""},
		{argv: []string{"group", "members"}, err: "not a command this watcher runs"},
	}...)
	for _, b := range bad {
		if _, err := hd.Resolve(b.argv); err == nil || !strings.Contains(err.Error(), b.err) {
			t.Errorf("Resolve(%q) = %v, want an error containing %q", b.argv, err, b.err)
		}
	}
	checkCalls(t, r, nil)
	sameSnapshot(t, "Resolve", before, snapshotRoot(t, h.Sys.FS.Root))

	// Run as the watcher does: the group, its members, its sudo.
	for _, step := range []struct {
		argv []string
		out  string
	}{
		{[]string{"group", "add", "--gid=2000", "--", "web"}, "done: groupadd --gid 2000 -- web\n"},
		{[]string{"group", "add", "--gid=2000", "--", "web"}, "group web already present (gid 2000)\n"},
		{[]string{"group", "members", "add", "--", "web", "alice", "bob"}, "done: gpasswd -a alice -- web\ndone: gpasswd -a bob -- web\n"},
		{[]string{"sudo", "grant", "--nopasswd=true", "--", "web"}, "done: write /etc/sudoers.d/sera-web (0440): %web ALL=(ALL:ALL) NOPASSWD: ALL\n"},
		{[]string{"sudo", "grant", "--nopasswd=true", "--", "web"}, "sudo for group web already granted (/etc/sudoers.d/sera-web: %web ALL=(ALL:ALL) NOPASSWD: ALL)\n"},
		{[]string{"sudo", "list"}, "web              nopasswd  /etc/sudoers.d/sera-web\n"},
		{[]string{"group", "list", "--json=true"}, `{"name":"web","gid":2000,"members":["alice","bob"]}`},
		{[]string{"group", "del", "--", "web"}, "done: remove /etc/sudoers.d/sera-web\ndone: groupdel -- web\n"},
	} {
		if _, err := hd.Resolve(step.argv); err != nil {
			t.Fatalf("Resolve(%q): %v", step.argv, err)
		}
		res := hd.Run(context.Background(), &sera.Call{Argv: step.argv})
		if res.Status != 0 || !strings.Contains(string(res.Stdout), step.out) {
			t.Errorf("Run(%q): status %d, stdout %q, stderr %q; want %q", step.argv, res.Status, res.Stdout, res.Stderr, step.out)
		}
	}
	checkCalls(t, r, []string{"groupadd --gid 2000 -- web", "gpasswd -a alice -- web", "gpasswd -a bob -- web",
		"visudo -cf $ROOT/etc/sudoers.d/.sera-web.tmp-*", "groupdel -- web"})
	sameSnapshot(t, "add, grant, del", before, snapshotRoot(t, h.Sys.FS.Root))

	// A bad input that reaches Run anyway (Resolve skipped) still fails.
	r.reset()
	res := hd.Run(context.Background(), &sera.Call{Argv: []string{"sudo", "grant", "--", "sudo"}})
	if res.Status != 1 || !strings.Contains(string(res.Stderr), "refusing group sudo") {
		t.Errorf("Run(sudo grant sudo): status %d, stderr %q", res.Status, res.Stderr)
	}
	checkCalls(t, r, nil)
}

// On the client, bad input is a usage error before anything is sent or
// run, with --to and with --local; and a forgotten --to is an error, not
// a change to the admin's own machine.
func TestGroupSudoClient(t *testing.T) {
	run := func(args ...string) (int, string) {
		var stdout, stderr bytes.Buffer
		o := &cli.Options{Stdout: &stdout, Stderr: &stderr, Env: testEnv(t)}
		root := NewRoot(o)
		root.SetArgs(args)
		err := root.Execute()
		code, _ := cli.ExitCode(err)
		msg := stderr.String()
		if err != nil {
			msg += err.Error()
		}
		return code, msg
	}
	var cases []badCase
	for _, cmd := range [][]string{{"group", "add"}, {"group", "del"}, {"sudo", "grant"}, {"sudo", "revoke"}} {
		for _, n := range badNames {
			cases = append(cases, badCase{argv: append(slices.Clone(cmd), "--", n.name), err: n.err})
		}
	}
	cases = append(cases, []badCase{
		{argv: []string{"group", "add", "web", "--gid=999"}, err: "refusing --gid 999"},
		{argv: []string{"group", "add", "web", "--gid=0"}, err: "refusing --gid 0"},
		{argv: []string{"group", "members", "add", "ops", "Bob"}, err: "invalid user name"},
		{argv: []string{"group", "members", "remove", "--", "ops", "-rf"}, err: "invalid user name"},
		{argv: []string{"group", "add", "-rf"}, err: "unknown shorthand flag"},
	}...)
	for _, c := range cases {
		for _, target := range [][]string{{"--to", "web1"}, {"--local"}} {
			i := slices.Index(c.argv, "--")
			if i < 0 {
				i = len(c.argv)
			}
			args := slices.Insert(slices.Clone(c.argv), i, target...)
			if code, msg := run(args...); code != cli.ExitUsage || !strings.Contains(msg, c.err) {
				t.Errorf("%q: exit %d, %q; want exit 2 and %q", args, code, msg, c.err)
			}
		}
	}
	if code, msg := run("group", "add", "web"); code != cli.ExitUsage || !strings.Contains(msg, "no target: give --to HOST, --group GROUP or --all, or --local") {
		t.Errorf("no target: exit %d, %q", code, msg)
	}
}
