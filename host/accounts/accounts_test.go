package accounts

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sudo"
	"github.com/sera-dev/sera/plan"
)

// These tests assert on the plan and on the argv it runs, recorded; that
// useradd, usermod and gpasswd do what the argv asks is proven on the
// real hosts of hosttest (cmd/sera's TestAccountsOnRealHosts).

const (
	testPasswd = "root:x:0:0:root:/root:/bin/bash\n" +
		"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
		"bob:x:1001:1001:Bob:/home/bob:/bin/sh\n" +
		"carol:x:1002:1002::/home/carol:/bin/sh\n"
	testGroup = "root:x:0:\nsudo:x:27:\n" +
		"bob:x:1001:\ncarol:x:1002:\nops:x:2000:carol\ndevs:x:2001:\n"
	testShadow = "root:*:19000:0:99999:7:::\nbob:$6$saltsalt$hash:19000:0:99999:7:::\ncarol:!:19000:0:99999:7:::\n"
)

// newTestSystem is a host under a temporary root with the account files
// above, a recording runner and a fixed clock.
func newTestSystem(t *testing.T) (*host.System, *host.Recorder) {
	t.Helper()
	root := t.TempDir()
	for p, c := range map[string]string{
		"etc/passwd": testPasswd, "etc/group": testGroup, "etc/shadow": testShadow,
		"etc/login.defs": "UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\n",
		"etc/shells":     "/bin/sh\n/bin/bash\n",
		"bin/bash":       "#!", "bin/sh": "#!", "bin/nox": "#!",
		"etc/sudoers.d/README": "",
	} {
		writeFile(t, root, p, c, 0o644)
	}
	os.Chmod(filepath.Join(root, "bin/bash"), 0o755)
	os.Chmod(filepath.Join(root, "bin/sh"), 0o755)
	for _, d := range []string{"home/bob", "home/carol"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := &host.Recorder{}
	sys := host.ForTest(root, r, host.FixedClock{T: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)})
	sys.State = t.TempDir()
	return sys, r
}

func writeFile(t *testing.T, root, rel, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// descs are the plan's step descriptions, notes marked "note: ".
func descs(p plan.Plan) []string {
	var out []string
	for _, s := range p.Steps {
		if s.Do == nil {
			out = append(out, "note: "+s.Desc)
		} else {
			out = append(out, s.Desc)
		}
	}
	return out
}

// execute runs p for real (against the recorder) and returns the argv run.
func execute(t *testing.T, p plan.Plan, r *host.Recorder) []string {
	t.Helper()
	var out bytes.Buffer
	if err := p.Execute(context.Background(), &out, false, "nothing to do"); err != nil {
		t.Fatalf("execute: %v\n%s", err, out.String())
	}
	return r.Calls()
}

func ptr[T any](v T) *T { return &v }

func TestLoad(t *testing.T) {
	sys, _ := newTestSystem(t)
	db, err := Load(sys)
	if err != nil {
		t.Fatal(err)
	}
	if u := db.User("bob"); u == nil || u.UID != 1001 || u.Home != "/home/bob" || u.Comment != "Bob" {
		t.Errorf("bob: %+v", u)
	}
	if g := db.Groups; len(g) != 6 || !slices.Equal(db.GroupsOf("carol"), []string{"ops"}) {
		t.Errorf("groups %+v, carol in %q", g, db.GroupsOf("carol"))
	}
	if !db.Shadow["carol"].Locked() || db.Shadow["bob"].Locked() {
		t.Errorf("shadow %+v", db.Shadow)
	}
	if db.ManagedUID(0) || db.ManagedUID(1) || !db.ManagedUID(1001) || db.ManagedGID(27) {
		t.Error("managed ranges wrong")
	}
	if _, err := db.ManageableUser("daemon"); err == nil || !strings.Contains(err.Error(), "outside the range sera manages") {
		t.Errorf("daemon manageable: %v", err)
	}
	if _, err := db.ManageableGroup("sudo"); err == nil {
		t.Error("group sudo manageable")
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"alice", "a-b_c9", strings.Repeat("a", MaxName)} {
		if err := CheckName("user", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"root", "", "Alice", "9a", "-a", "a b", "a:b", strings.Repeat("a", MaxName+1)} {
		if err := CheckName("user", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPlanAddNewUser(t *testing.T) {
	sys, r := newTestSystem(t)
	p, noChange, err := PlanAdd(sys, &UserSpec{Name: "alice", UID: ptr(1500), Groups: []string{"ops"}, Shell: ptr("/bin/bash"), Comment: ptr("Alice A"), PasswordHash: ptr("$6$saltsalt$x")})
	if err != nil || noChange != "" {
		t.Fatalf("plan: %v %q", err, noChange)
	}
	want := []string{
		"useradd --create-home --uid 1500 --groups ops --shell /bin/bash --comment 'Alice A' -- alice",
		"chpasswd --encrypted (the hash of alice on its standard input)",
	}
	if got := descs(p); !slices.Equal(got, want) {
		t.Errorf("steps\n%q\nwant\n%q", got, want)
	}
	if calls := r.Calls(); len(calls) != 0 {
		t.Fatalf("planning ran %q", calls)
	}
	calls := execute(t, p, r)
	wantCalls := []string{"useradd --create-home --uid 1500 --groups ops --shell /bin/bash --comment Alice A -- alice", "chpasswd --encrypted"}
	if !slices.Equal(calls, wantCalls) {
		t.Errorf("ran\n%q\nwant\n%q", calls, wantCalls)
	}
}

func TestPlanAddRefuses(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec UserSpec
		want string
	}{
		{"uid below the range", UserSpec{Name: "alice", UID: ptr(999)}, "outside this host's regular range"},
		{"gid of no group", UserSpec{Name: "alice", GID: ptr(3000)}, "no group with gid 3000"},
		{"system group", UserSpec{Name: "alice", Groups: []string{"sudo"}}, "refusing group sudo"},
		{"shell not there", UserSpec{Name: "alice", Shell: ptr("/bin/zsh")}, "no such program"},
		{"shell not executable", UserSpec{Name: "alice", Shell: ptr("/bin/nox")}, "no such program"},
		{"system account", UserSpec{Name: "daemon"}, "is a system account"},
		{"uid taken", UserSpec{Name: "alice", UID: ptr(1001)}, "already used by bob"},
		{"group named like the user", UserSpec{Name: "devs"}, "a group called devs already exists"},
		{"existing user differs", UserSpec{Name: "bob", Shell: ptr("/bin/bash")}, "pass --update"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sys, r := newTestSystem(t)
			_, _, err := PlanAdd(sys, &tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want %q", err, tt.want)
			}
			if calls := r.Calls(); len(calls) != 0 {
				t.Errorf("ran %q", calls)
			}
		})
	}
}

func TestPlanAddExistingUser(t *testing.T) {
	sys, r := newTestSystem(t)
	if _, noChange, err := PlanAdd(sys, &UserSpec{Name: "bob", Shell: ptr("/bin/sh"), Comment: ptr("Bob")}); err != nil || noChange != "user bob already present" {
		t.Errorf("same attributes: %v %q", err, noChange)
	}
	p, _, err := PlanAdd(sys, &UserSpec{Name: "carol", Groups: []string{"devs"}, SetGroups: true, Shell: ptr("/bin/bash"), Update: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"usermod --shell /bin/bash --groups devs -- carol"}
	if calls := execute(t, p, r); !slices.Equal(calls, want) {
		t.Errorf("ran %q, want %q", calls, want)
	}
}

func TestPlanLockUnlock(t *testing.T) {
	sys, r := newTestSystem(t)
	db, _ := Load(sys)
	p := PlanLock(sys, db, db.User("bob"))
	rec := LockRecordPath(sys, "bob")
	want := []string{
		"record the state to restore on unlock in " + rec,
		"usermod --lock -- bob",
		"usermod --expiredate 1970-01-02 -- bob",
	}
	if got := descs(p); !slices.Equal(got, want) {
		t.Fatalf("lock steps\n%q\nwant\n%q", got, want)
	}
	if calls := execute(t, p, r); !slices.Equal(calls, want[1:]) {
		t.Errorf("lock ran %q", calls)
	}
	if b, err := os.ReadFile(rec); err != nil || string(b) != `{"password_locked":true,"expires_before":-1}` {
		t.Errorf("record %s: %v", b, err)
	}

	// As usermod would have left it: locked and expired.
	writeFile(t, sys.FS.Root, "etc/shadow", strings.Replace(testShadow, "bob:$6$saltsalt$hash:19000:0:99999:7:::", "bob:!$6$saltsalt$hash:19000:0:99999:7::1:", 1), 0o640)
	db, _ = Load(sys)
	if !LockedBySera(sys, db, db.User("bob")) {
		t.Error("bob not locked by sera")
	}
	if p := PlanLock(sys, db, db.User("bob")); p.Changes() {
		t.Errorf("second lock: %q", descs(p))
	}
	p, err := PlanUnlock(sys, db, db.User("bob"))
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"usermod --unlock -- bob", "usermod --expiredate '' -- bob", "remove " + rec}
	if got := descs(p); !slices.Equal(got, want) {
		t.Fatalf("unlock steps\n%q\nwant\n%q", got, want)
	}
	r2 := &host.Recorder{}
	sys.Exec = r2
	p, _ = PlanUnlock(sys, db, db.User("bob"))
	if calls := execute(t, p, r2); !slices.Equal(calls, []string{"usermod --unlock -- bob", "usermod --expiredate  -- bob"}) {
		t.Errorf("unlock ran %q", calls)
	}
	if _, err := os.Lstat(rec); !os.IsNotExist(err) {
		t.Errorf("record left: %v", err)
	}
}

func TestPlanDel(t *testing.T) {
	sys, r := newTestSystem(t)
	db, _ := Load(sys)
	if _, noChange, err := PlanDel(sys, db, "nobody", false); err != nil || noChange != "user nobody already absent" {
		t.Errorf("absent: %v %q", err, noChange)
	}
	if _, _, err := PlanDel(sys, db, "daemon", false); err == nil {
		t.Error("system account deleted")
	}
	p, _, err := PlanDel(sys, db, "bob", true)
	if err != nil || !slices.Equal(descs(p), []string{"userdel -- bob"}) {
		t.Errorf("--keep-home: %q %v", descs(p), err)
	}
	p, _, err = PlanDel(sys, db, "bob", false)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(sys.State, "archive", "bob-20261207T100000Z.tar.gz")
	want := []string{
		"archive /home/bob: tar --create --gzip --file " + archive + " --directory /home/bob -- .",
		"userdel --remove -- bob",
	}
	if got := descs(p); !slices.Equal(got, want) {
		t.Fatalf("steps\n%q\nwant\n%q", got, want)
	}
	wantCalls := []string{"tar --create --gzip --file " + archive + " --directory /home/bob -- .", "userdel --remove -- bob"}
	if calls := execute(t, p, r); !slices.Equal(calls, wantCalls) {
		t.Errorf("ran %q", calls)
	}
	if fi, err := os.Stat(archive); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("archive: %v %v", fi, err)
	}

	// A home that is a link is refused: userdel --remove would follow it.
	os.RemoveAll(filepath.Join(sys.FS.Root, "home/carol"))
	os.Symlink("/etc", filepath.Join(sys.FS.Root, "home/carol"))
	if _, _, err := PlanDel(sys, db, "carol", false); err == nil || !strings.Contains(err.Error(), "it is not a directory") {
		t.Errorf("linked home: %v", err)
	}
}

func TestPlanGroups(t *testing.T) {
	sys, r := newTestSystem(t)
	db, _ := Load(sys)
	if _, noChange, err := PlanGroupAdd(sys, db, "ops", 2000, true); err != nil || noChange != "group ops already present (gid 2000)" {
		t.Errorf("present: %v %q", err, noChange)
	}
	for _, bad := range []struct {
		name   string
		gid    int
		gidSet bool
		want   string
	}{
		{"ops", 2100, true, "sera does not renumber groups"},
		{"web", 2001, true, "already used by group devs"},
		{"sudo", 0, false, "it is a system group"},
		{"web", 27, true, "outside this host's regular range"},
	} {
		if _, _, err := PlanGroupAdd(sys, db, bad.name, bad.gid, bad.gidSet); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("group add %s %d: %v, want %q", bad.name, bad.gid, err, bad.want)
		}
	}
	// A drop-in left behind by a deleted group of the same name is said.
	writeFile(t, sys.FS.Root, "etc/sudoers.d/sera-web", string(sudo.Content("web", false)), 0o440)
	p, _, err := PlanGroupAdd(sys, db, "web", 2100, true)
	if err != nil || !slices.Equal(descs(p), []string{"groupadd --gid 2100 -- web", "note: /etc/sudoers.d/sera-web grants sudo to the members of web (remove it with 'sera sudo revoke web')"}) {
		t.Errorf("group add web: %q %v", descs(p), err)
	}

	// Deleting revokes sudo first, then runs groupdel.
	writeFile(t, sys.FS.Root, "etc/sudoers.d/sera-devs", string(sudo.Content("devs", false)), 0o440)
	p, _, err = PlanGroupDel(sys, db, "devs")
	if err != nil || !slices.Equal(descs(p), []string{"remove /etc/sudoers.d/sera-devs", "groupdel -- devs"}) {
		t.Fatalf("group del: %q %v", descs(p), err)
	}
	if calls := execute(t, p, r); !slices.Equal(calls, []string{"groupdel -- devs"}) {
		t.Errorf("ran %q", calls)
	}
	if _, err := os.Lstat(filepath.Join(sys.FS.Root, "etc/sudoers.d/sera-devs")); !os.IsNotExist(err) {
		t.Errorf("drop-in left: %v", err)
	}
	if _, _, err := PlanGroupDel(sys, db, "bob"); err == nil || !strings.Contains(err.Error(), "primary group of user bob") {
		t.Errorf("primary group deleted: %v", err)
	}

	r2 := &host.Recorder{}
	sys.Exec = r2
	p, _, err = PlanMembers(sys, db, true, "ops", []string{"bob", "carol", "bob"})
	if err != nil || !slices.Equal(descs(p), []string{"gpasswd -a bob -- ops"}) {
		t.Errorf("members add: %q %v", descs(p), err)
	}
	if _, noChange, _ := PlanMembers(sys, db, false, "ops", []string{"bob", "gone"}); noChange != "group ops: no change, already not members: bob, gone" {
		t.Errorf("members remove: %q", noChange)
	}
	if _, _, err := PlanMembers(sys, db, true, "ops", []string{"daemon"}); err == nil {
		t.Error("system account added to a group")
	}
	if calls := r2.Calls(); len(calls) != 0 {
		t.Errorf("planning ran %q", calls)
	}
}

func TestPrivileged(t *testing.T) {
	sys, _ := newTestSystem(t)
	db, _ := Load(sys)
	v := sudo.NewView()
	v.Groups["ops"] = "/etc/sudoers.d/sera-ops"
	v.UIDs[1500] = "/etc/sudoers"
	if why := Privileged(v, db, db.Current(db.User("carol"))); !strings.Contains(why, "group ops") {
		t.Errorf("carol, in ops: %q", why)
	}
	if why := Privileged(v, db, db.Current(db.User("bob"))); why != "" {
		t.Errorf("bob: %q", why)
	}
	if why := Privileged(v, db, Account{Name: "new", UID: -1, GID: -1}); !strings.Contains(why, "free uid 1500") {
		t.Errorf("a new account whose uid useradd picks: %q", why)
	}
	if why := Privileged(v, db, Account{Name: "new", UID: 1600, GID: 1600, Groups: []string{"docker"}}); !strings.Contains(why, "root-equivalent") {
		t.Errorf("docker member: %q", why)
	}
}

// FuzzLoad feeds the account files anything: Load never fails on their
// content, and what it reads of passwd is what the lines say.
func FuzzLoad(f *testing.F) {
	f.Add(testPasswd, testGroup, testShadow, "UID_MIN 500\n")
	f.Add("a:x:1:2:::\n#c\n::::::\n", "g:x:notanumber:\n", "a:!:::::::\n", "GID_MAX -1\n")
	f.Fuzz(func(t *testing.T, passwd, group, shadow, defs string) {
		root := t.TempDir()
		writeFile(t, root, "etc/passwd", passwd, 0o644)
		writeFile(t, root, "etc/group", group, 0o644)
		writeFile(t, root, "etc/shadow", shadow, 0o640)
		writeFile(t, root, "etc/login.defs", defs, 0o644)
		db, err := Load(host.ForTest(root, nil, host.FixedClock{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range db.Users {
			if strings.ContainsAny(u.Name, ":\n") || strings.ContainsAny(u.Shell, ":\n") {
				t.Fatalf("user %+v", u)
			}
		}
		if db.Defs.UIDMin <= 0 || db.Defs.GIDMax <= 0 {
			t.Fatalf("defs %+v", db.Defs)
		}
	})
}
