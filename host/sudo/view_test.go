package sudo

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/host"
)

// nameRE is Debian's NAME_REGEX, as package accounts checks names.
var nameRE = regexp.MustCompile(`^[a-z][-a-z0-9_]*$`)

// newViewHost is a host with sudoers reading /etc/sudoers.d, where a
// drop-in sera did not write grants group ops.
func newViewHost(t *testing.T) *host.System {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/sudoers.d"), 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, root, "etc/sudoers", "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n", 0o440)
	writeFile(t, root, "etc/sudoers.d/README", "# files with a '.' are ignored\n", 0o440)
	writeFile(t, root, "etc/sudoers.d/other-ops", "%ops ALL=(ALL:ALL) ALL\n", 0o440)
	return host.ForTest(root, &host.Recorder{}, host.FixedClock{T: time.Unix(0, 0)})
}

func writeFile(t *testing.T, root, rel, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func TestSudoersView(t *testing.T) {
	sys := newViewHost(t)
	writeFile(t, sys.FS.Root, "etc/sudoers", "Defaults:alice !lecture\n"+
		"alice ,bob\tweb1 , db1 = (ALL) ALL   # two users\n"+
		"#1234 ALL = ALL\n%#1300 ALL=ALL\n"+
		"User_Alias A = carol, %team : B = dave\nA ALL=ALL\n"+
		"Host_Alias H = erin\nCmnd_Alias C = /bin/frank\n"+
		"#includedir /etc/sudoers.d\n@include extra\n", 0o440)
	writeFile(t, sys.FS.Root, "etc/sudoers.d/skip.me", "zed ALL=ALL\n", 0o440)
	writeFile(t, sys.FS.Root, "etc/sudoers.d/skipme~", "zed ALL=ALL\n", 0o440)
	writeFile(t, sys.FS.Root, "etc/extra", "gina ALL=\\\n ALL\n", 0o440)
	v, err := ReadView(sys)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob", "carol", "gina"} {
		if _, ok := v.Users[u]; !ok {
			t.Errorf("user %s not seen", u)
		}
	}
	for _, u := range []string{"web1", "db1", "dave", "erin", "frank", "zed"} {
		if _, ok := v.Users[u]; ok {
			t.Errorf("%s taken for a user", u)
		}
	}
	if _, ok := v.Groups["team"]; !ok {
		t.Error("group team (from an alias) not seen")
	}
	if _, ok := v.Groups["ops"]; !ok {
		t.Error("group ops (from a drop-in) not seen")
	}
	if _, ok := v.UIDs[1234]; !ok {
		t.Error("uid 1234 not seen")
	}
	if _, ok := v.GIDs[1300]; !ok {
		t.Error("gid 1300 not seen")
	}
	if v.Everyone != "" {
		t.Errorf("everyone: %s", v.Everyone)
	}
	for _, rule := range []string{"ALL ALL=ALL\n", "%:AD ALL=ALL\n", "+ng ALL=ALL\n", "@include /etc/sudoers.%h\n"} {
		writeFile(t, sys.FS.Root, "etc/sudoers", rule, 0o440)
		if v, _ := ReadView(sys); v.Everyone == "" {
			t.Errorf("%q: not every user", rule)
		}
	}
	// Policy from elsewhere: LDAP through nsswitch, another plugin.
	writeFile(t, sys.FS.Root, "etc/sudoers", "root ALL=ALL\n", 0o440)
	writeFile(t, sys.FS.Root, "etc/nsswitch.conf", "passwd: files\nsudoers: files sss\n", 0o644)
	if v, _ := ReadView(sys); !strings.Contains(v.Everyone, "sss") {
		t.Errorf("sudoers from sss: %q", v.Everyone)
	}
	writeFile(t, sys.FS.Root, "etc/nsswitch.conf", "sudoers: files\n", 0o644)
	writeFile(t, sys.FS.Root, "etc/sudo.conf", "Plugin sudoers_policy sudoers.so sudoers_file=/etc/sudoers.other\n", 0o644)
	writeFile(t, sys.FS.Root, "etc/sudoers.other", "zed ALL=ALL\n", 0o440)
	if v, _ := ReadView(sys); v.Everyone != "" || v.Users["zed"] == "" {
		t.Errorf("sudoers_file= of sudo.conf not read: %+v", v)
	}
	writeFile(t, sys.FS.Root, "etc/sudo.conf", "Plugin my_policy /usr/lib/x/policy.so\n", 0o644)
	if v, _ := ReadView(sys); v.Everyone == "" {
		t.Error("another policy plugin: not every user")
	}
	os.Remove(filepath.Join(sys.FS.Root, "etc/sudo.conf"))
	// An include loop ends, and counts as every user.
	writeFile(t, sys.FS.Root, "etc/sudoers", "@include /etc/sudoers\n", 0o440)
	if v, _ := ReadView(sys); v.Everyone == "" {
		t.Error("include loop: not every user")
	}
}

func FuzzSudoersView(f *testing.F) {
	f.Add("alice ALL=(ALL) ALL\n%g ALL=ALL\nUser_Alias A = b, %c\n#1 ALL=ALL # x\n")
	f.Add("@includedir /etc/sudoers.d\nDefaults:x y\n\\\n%#12 a=b")
	root := f.TempDir()
	sys := host.ForTest(root, nil, host.FixedClock{T: time.Unix(0, 0)})
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	f.Fuzz(func(t *testing.T, text string) {
		v := NewView()
		v.Parse(sys, "/etc/sudoers", text, MaxDepth) // no includes followed
		// Whatever the text, a name it shows as a user spec's first field
		// is seen (never under-approximated).
		for _, line := range strings.Split(strings.ReplaceAll(text, "\\\n", " "), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[1] == "ALL=ALL" && nameRE.MatchString(f[0]) && f[0] != "Defaults" && !strings.Contains(text, "User_Alias") {
				if _, ok := v.Users[f[0]]; !ok && v.Everyone == "" {
					t.Fatalf("%q: user %s not seen", text, f[0])
				}
			}
		}
	})
}
