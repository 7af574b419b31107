package commands

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host/sudo"
)

const (
	opsDropIn = "# Managed by sera: sudo for the members of group ops.\n" +
		"# Do not edit; change it with 'sera sudo grant' or 'sera sudo revoke'.\n" +
		"%ops ALL=(ALL:ALL) ALL\n"
	opsDropInNoPasswd = "# Managed by sera: sudo for the members of group ops.\n" +
		"# Do not edit; change it with 'sera sudo grant' or 'sera sudo revoke'.\n" +
		"%ops ALL=(ALL:ALL) NOPASSWD: ALL\n"
)

// wantDropIn checks name's drop-in: its content, mode 0440, and that no
// temporary file is left in /etc/sudoers.d, nor any other drop-in touched.
func wantDropIn(name, content string) func(t *testing.T, h *Host) {
	return func(t *testing.T, h *Host) {
		t.Helper()
		p := h.Sys.Path(sudo.Path(name))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o440 {
			t.Errorf("%s: mode %v, want a regular file, 0440", p, fi.Mode())
		}
		if b, _ := os.ReadFile(p); string(b) != content {
			t.Errorf("%s:\n%s\nwant:\n%s", p, b, content)
		}
		wantSudoersDir(t, h, "README", "other-ops", "sera-"+name)
		if b, _ := os.ReadFile(h.Sys.Path("/etc/sudoers.d/other-ops")); string(b) != testOtherDropIn {
			t.Errorf("other-ops changed: %q", b)
		}
	}
}

// wantSudoersDir checks the names in /etc/sudoers.d.
func wantSudoersDir(t *testing.T, h *Host, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(h.Sys.Path(sudo.Dir))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Errorf("/etc/sudoers.d holds %q, want %q", got, names)
	}
}

func TestSudoCommands(t *testing.T) {
	visudo := "visudo -cf $ROOT/etc/sudoers.d/.sera-ops.tmp-*"
	runScenarios(t, []hostScenario{
		{
			name:  "grant",
			argv:  []string{"sudo", "grant", "ops"},
			plan:  []string{"write /etc/sudoers.d/sera-ops (0440): %ops ALL=(ALL:ALL) ALL"},
			calls: []string{visudo},
			again: "sudo for group ops already granted (/etc/sudoers.d/sera-ops: %ops ALL=(ALL:ALL) ALL)",
			check: wantDropIn("ops", opsDropIn),
		},
		{
			name:  "grant --nopasswd",
			argv:  []string{"sudo", "grant", "ops", "--nopasswd"},
			plan:  []string{"write /etc/sudoers.d/sera-ops (0440): %ops ALL=(ALL:ALL) NOPASSWD: ALL"},
			calls: []string{visudo},
			again: "sudo for group ops already granted (/etc/sudoers.d/sera-ops: %ops ALL=(ALL:ALL) NOPASSWD: ALL)",
			check: wantDropIn("ops", opsDropInNoPasswd),
		},
		{
			name:  "grant --nopasswd over a grant with a password",
			setup: writeDropIn("ops", opsDropIn),
			argv:  []string{"sudo", "grant", "--nopasswd", "ops"},
			plan:  []string{"write /etc/sudoers.d/sera-ops (0440): %ops ALL=(ALL:ALL) NOPASSWD: ALL"},
			calls: []string{visudo},
			again: "sudo for group ops already granted (/etc/sudoers.d/sera-ops: %ops ALL=(ALL:ALL) NOPASSWD: ALL)",
			check: wantDropIn("ops", opsDropInNoPasswd),
		},
		{
			name:  "grant with a password over --nopasswd",
			setup: writeDropIn("ops", opsDropInNoPasswd),
			argv:  []string{"sudo", "grant", "ops", "--nopasswd=false"},
			plan:  []string{"write /etc/sudoers.d/sera-ops (0440): %ops ALL=(ALL:ALL) ALL"},
			calls: []string{visudo},
			again: "sudo for group ops already granted (/etc/sudoers.d/sera-ops: %ops ALL=(ALL:ALL) ALL)",
			check: wantDropIn("ops", opsDropIn),
		},
		{
			name: "grant rewrites a drop-in edited by hand, and its mode",
			setup: func(t *testing.T, h *Host) {
				writeTestFile(t, h.Sys.FS.Root, "etc/sudoers.d/sera-ops", "%ops ALL=(ALL) ALL\n", 0o644)
			},
			argv:  []string{"sudo", "grant", "ops"},
			plan:  []string{"write /etc/sudoers.d/sera-ops (0440): %ops ALL=(ALL:ALL) ALL"},
			calls: []string{visudo},
			again: "sudo for group ops already granted (/etc/sudoers.d/sera-ops: %ops ALL=(ALL:ALL) ALL)",
			check: wantDropIn("ops", opsDropIn),
		},
		{
			name:  "grant already there",
			setup: writeDropIn("ops", opsDropIn),
			argv:  []string{"sudo", "grant", "ops"},
			again: "sudo for group ops already granted (/etc/sudoers.d/sera-ops: %ops ALL=(ALL:ALL) ALL)",
		},
		{
			name:  "revoke",
			setup: writeDropIn("ops", opsDropIn),
			argv:  []string{"sudo", "revoke", "ops"},
			plan:  []string{"remove /etc/sudoers.d/sera-ops"},
			again: "sudo for group ops already revoked (no /etc/sudoers.d/sera-ops)",
			check: func(t *testing.T, h *Host) {
				wantSudoersDir(t, h, "README", "other-ops")
			},
		},
		{
			name:  "revoke not granted",
			argv:  []string{"sudo", "revoke", "ops"},
			again: "sudo for group ops already revoked (no /etc/sudoers.d/sera-ops)",
		},
		{
			name:  "revoke the drop-in of a deleted group",
			setup: writeDropIn("gone", string(sudo.Content("gone", true))),
			argv:  []string{"sudo", "revoke", "gone"},
			plan:  []string{"remove /etc/sudoers.d/sera-gone"},
			again: "sudo for group gone already revoked (no /etc/sudoers.d/sera-gone)",
		},
		{
			name: "revoke removes a link, never what it points to",
			setup: func(t *testing.T, h *Host) {
				if err := os.Symlink("other-ops", h.Sys.Path("/etc/sudoers.d/sera-ops")); err != nil {
					t.Fatal(err)
				}
			},
			argv:  []string{"sudo", "revoke", "ops"},
			plan:  []string{"remove /etc/sudoers.d/sera-ops"},
			again: "sudo for group ops already revoked (no /etc/sudoers.d/sera-ops)",
			check: func(t *testing.T, h *Host) {
				wantSudoersDir(t, h, "README", "other-ops")
			},
		},
	})
}

func TestSudoRefused(t *testing.T) {
	var cases []badCase
	for _, cmd := range [][]string{{"sudo", "grant"}, {"sudo", "revoke"}} {
		for _, n := range badNames {
			cases = append(cases, badCase{name: strings.Join(cmd, " ") + " " + n.name, argv: append(slices.Clone(cmd), "--", n.name), err: n.err})
		}
	}
	cases = append(cases, []badCase{
		{name: "grant the system group sudo", argv: []string{"sudo", "grant", "sudo"},
			err: "refusing group sudo: gid 27 is outside the range sera manages (1000..60000); system groups are left alone; nothing was changed"},
		{name: "grant a system group", argv: []string{"sudo", "grant", "daemon"}, err: "refusing group daemon: gid 1"},
		{name: "grant a missing group", argv: []string{"sudo", "grant", "nope"},
			err: "no group nope on this host (create it with 'sera group add nope'); nothing was changed"},
		{name: "grant a name that looks like a flag", argv: []string{"sudo", "grant", "-rf"}, err: "unknown shorthand flag"},
		{name: "grant two groups", argv: []string{"sudo", "grant", "ops", "devs"}, err: "takes only GROUP; unexpected \"devs\""},
		{name: "grant without sudoers.d", setup: func(t *testing.T, h *Host) {
			if err := os.RemoveAll(h.Sys.Path(sudo.Dir)); err != nil {
				t.Fatal(err)
			}
		}, argv: []string{"sudo", "grant", "ops"}, err: "no directory /etc/sudoers.d on this host (is sudo installed?); nothing was changed"},
		{name: "grant into a linked sudoers.d", setup: func(t *testing.T, h *Host) {
			if err := os.Rename(h.Sys.Path(sudo.Dir), h.Sys.Path("/etc/elsewhere")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("elsewhere", h.Sys.Path(sudo.Dir)); err != nil {
				t.Fatal(err)
			}
		}, argv: []string{"sudo", "grant", "ops"}, err: "refusing /etc/sudoers.d: refusing to follow a symbolic link; nothing was changed"},
		{name: "grant through a link", setup: func(t *testing.T, h *Host) {
			if err := os.Symlink("other-ops", h.Sys.Path("/etc/sudoers.d/sera-ops")); err != nil {
				t.Fatal(err)
			}
		}, argv: []string{"sudo", "grant", "ops"}, err: "refusing to follow a symbolic link; nothing was changed"},
		{name: "revoke the system group sudo", argv: []string{"sudo", "revoke", "sudo"},
			err: "refusing sudo for sudo: it is a system group (gid 27, outside 1000..60000) whose sudo sera does not manage; nothing was changed"},
		{name: "revoke a directory", setup: func(t *testing.T, h *Host) {
			if err := os.Mkdir(h.Sys.Path("/etc/sudoers.d/sera-ops"), 0o750); err != nil {
				t.Fatal(err)
			}
		}, argv: []string{"sudo", "revoke", "ops"}, err: "refusing /etc/sudoers.d/sera-ops: a directory"},
	}...)
	runBadCases(t, cases)
}

// When visudo rejects the new drop-in, nothing is installed: no drop-in,
// no temporary file, and an existing drop-in stays as it was.
func TestSudoGrantVisudoFails(t *testing.T) {
	for _, existing := range []string{"", opsDropIn} {
		t.Run("existing="+strings.TrimSpace(existing), func(t *testing.T) {
			h, r := newGroupTestHost(t)
			if existing != "" {
				writeDropIn("ops", existing)(t, h)
			}
			r.beforeVisudo = func(path string) {
				if !strings.HasPrefix(filepath.Base(path), ".sera-ops.tmp-") || filepath.Dir(path) != h.Sys.Path(sudo.Dir) {
					t.Errorf("visudo checks %s, want a dotted temporary file in /etc/sudoers.d", path)
				}
				f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString("SYNTAX ERROR\n")
				f.Close()
			}
			before := snapshotRoot(t, h.Sys.FS.Root)
			res := runGroupSudo(h, "sudo", "grant", "ops", "--nopasswd")
			if res.Status != 1 || len(res.Stdout) != 0 {
				t.Errorf("status %d, stdout %q", res.Status, res.Stdout)
			}
			for _, want := range []string{
				"failed to write /etc/sudoers.d/sera-ops (0440): %ops ALL=(ALL:ALL) NOPASSWD: ALL: visudo rejected the new drop-in, which was not installed",
				":4:1: syntax error", "; nothing was changed",
			} {
				if !strings.Contains(string(res.Stderr), want) {
					t.Errorf("stderr %q, want %q", res.Stderr, want)
				}
			}
			checkCalls(t, r, []string{"visudo -cf $ROOT/etc/sudoers.d/.sera-ops.tmp-*"})
			sameSnapshot(t, "visudo failed", before, snapshotRoot(t, h.Sys.FS.Root))
		})
	}
}

func TestSudoList(t *testing.T) {
	h, r := newGroupTestHost(t)
	for _, argv := range [][]string{{"sudo", "grant", "ops"}, {"sudo", "grant", "devs", "--nopasswd"}} {
		if res := runGroupSudo(h, argv...); res.Status != 0 {
			t.Fatalf("%q: %s", argv, res.Stderr)
		}
	}
	writeDropIn("bob", "%bob ALL=(ALL) NOPASSWD: /usr/bin/apt\n")(t, h)
	writeDropIn("gone", string(sudo.Content("gone", false)))(t, h)
	// Not sera's: another name, an invalid group name, a temporary file.
	writeTestFile(t, h.Sys.FS.Root, "etc/sudoers.d/sera-Bad", "%Bad ALL=(ALL) ALL\n", 0o440)
	writeTestFile(t, h.Sys.FS.Root, "etc/sudoers.d/.sera-ops.tmp-123", "%ops ALL=(ALL) ALL\n", 0o600)
	r.reset()

	res := runGroupSudo(h, "sudo", "list")
	want := "bob              nopasswd  /etc/sudoers.d/sera-bob (edited by hand)\n" +
		"devs             nopasswd  /etc/sudoers.d/sera-devs\n" +
		"gone             password  /etc/sudoers.d/sera-gone (no such group)\n" +
		"ops              password  /etc/sudoers.d/sera-ops\n"
	if res.Status != 0 || string(res.Stdout) != want {
		t.Errorf("sudo list: status %d, stderr %q, stdout\n%s\nwant\n%s", res.Status, res.Stderr, res.Stdout, want)
	}
	res = runGroupSudo(h, "sudo", "list", "--json")
	var got []sudo.Info
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		var s sudo.Info
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, s)
	}
	wantJSON := []sudo.Info{
		{Group: "bob", File: "/etc/sudoers.d/sera-bob", NoPasswd: true, Edited: true},
		{Group: "devs", File: "/etc/sudoers.d/sera-devs", NoPasswd: true},
		{Group: "gone", File: "/etc/sudoers.d/sera-gone", NoGroup: true},
		{Group: "ops", File: "/etc/sudoers.d/sera-ops"},
	}
	if !slices.Equal(got, wantJSON) {
		t.Errorf("sudo list --json: %+v, want %+v", got, wantJSON)
	}
	checkCalls(t, r, nil)
}

func TestSudoGrantWarnsWithoutIncludedir(t *testing.T) {
	h, _ := newGroupTestHost(t)
	writeTestFile(t, h.Sys.FS.Root, "etc/sudoers", "root ALL=(ALL:ALL) ALL\n", 0o440)
	res := runGroupSudo(h, "sudo", "grant", "ops")
	if res.Status != 0 || !strings.Contains(string(res.Stderr), "warning: /etc/sudoers has no '@includedir /etc/sudoers.d'") {
		t.Errorf("status %d, stderr %q", res.Status, res.Stderr)
	}
	h, _ = newGroupTestHost(t)
	writeTestFile(t, h.Sys.FS.Root, "etc/sudoers", "#includedir /etc/sudoers.d/\n", 0o440)
	if res := runGroupSudo(h, "sudo", "grant", "ops"); res.Status != 0 || len(res.Stderr) != 0 {
		t.Errorf("old-style #includedir: status %d, stderr %q", res.Status, res.Stderr)
	}
}

// The drop-ins sera writes pass the real visudo, where there is one (the
// end-to-end hosts).
func TestSudoersContentRealVisudo(t *testing.T) {
	visudo, err := exec.LookPath("visudo")
	if err != nil {
		t.Skip("no visudo on this machine")
	}
	dir := t.TempDir()
	for _, name := range []string{"ops", "my-ops_2", "a", strings.Repeat("z", 32)} {
		for _, nopasswd := range []bool{false, true} {
			p := filepath.Join(dir, "sera-"+name)
			if err := os.WriteFile(p, sudo.Content(name, nopasswd), 0o440); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(visudo, "-cf", p).CombinedOutput(); err != nil {
				t.Errorf("visudo -cf on the drop-in of %s (nopasswd %v): %v: %s", name, nopasswd, err, out)
			}
			os.Remove(p)
		}
	}
}

// A host without /etc/sudoers.d cannot grant sudo: the watcher hears that
// as the host's failure (status 1, its cause), not as a refusal of the
// command line (126). A bad name stays a refusal.
func TestSudoGrantHostFailure(t *testing.T) {
	h, _ := newGroupTestHost(t)
	if err := os.RemoveAll(h.Sys.Path(sudo.Dir)); err != nil {
		t.Fatal(err)
	}
	hd := &Handler{Host: h}
	cmd, err := hd.Resolve([]string{"sudo", "grant", "ops"})
	var failure *sera.HostFailure
	if cmd != "sudo grant" || !errors.As(err, &failure) || !strings.Contains(err.Error(), "no directory /etc/sudoers.d on this host (is sudo installed?)") {
		t.Errorf("Resolve = %q, %v; want a host failure saying /etc/sudoers.d is missing", cmd, err)
	}
	if _, err := hd.Resolve([]string{"sudo", "grant", "nope"}); err == nil || errors.As(err, &failure) {
		t.Errorf("Resolve of a missing group = %v; want a refusal, not a host failure", err)
	}
}
