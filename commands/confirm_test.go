package commands

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/commands/cli"
)

// TestDestructiveCommandsExist keeps the list of commands that ask first
// in step with the tree: a name that names no command would ask nothing.
func TestDestructiveCommandsExist(t *testing.T) {
	root := NewRoot(&cli.Options{})
	for _, d := range destructiveCommands {
		c, _, err := root.Find(strings.Fields(d))
		if err != nil || c.CommandPath() != "sera "+d || !c.Runnable() {
			t.Errorf("%q names no host command", d)
			continue
		}
		if c.Flags().Lookup("yes") == nil {
			t.Errorf("%q has no --yes", d)
		}
	}
	// And the commands that only add or read do not ask.
	for _, line := range []string{"user add", "key add", "ping", "user list", "allow"} {
		c, _, _ := root.Find(strings.Fields(line))
		if isDestructive(c) || c.Flags().Lookup("yes") != nil {
			t.Errorf("%q asks for confirmation", line)
		}
	}
}

// TestConfirmDestructive: a destructive command to more than one host is
// sent only when confirmed (on a terminal) or with --yes; refused or
// unasked, no host gets it, which each host's audit log shows.
func TestConfirmDestructive(t *testing.T) {
	names := []string{"h1", "h2", "h3"}
	audited := func(f *khFleet) []string {
		// A second of the fleet's fake clock lets every watcher poll
		// many times: a request sent is audited by then.
		advance(time.Second)
		var got []string
		for _, n := range names {
			if b, err := os.ReadFile(filepath.Join(f.dir, "w-"+n, "audit.log")); err == nil && strings.Contains(string(b), "untrust") {
				got = append(got, n)
			}
		}
		return got
	}
	line := []string{"hostkey", "untrust", "gone", "--all", "--timeout", "20s"}
	t.Run("no terminal", func(t *testing.T) {
		inKHFleet(t, names, nil, func(t *testing.T, f *khFleet) {
			_, _, err := f.sera(line...)
			if !errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), "sera hostkey untrust gone would run on 3 hosts (h1, h2, h3); add --yes to run it (nothing was sent)") {
				t.Fatalf("error %v", err)
			}
			if got := audited(f); len(got) > 0 {
				t.Errorf("sent to %v", got)
			}
		})
	})
	t.Run("declined", func(t *testing.T) {
		inKHFleet(t, names, nil, func(t *testing.T, f *khFleet) {
			var asked []string
			f.confirm = func(q string) (bool, error) { asked = append(asked, q); return false, nil }
			_, _, err := f.sera(line...)
			if code, _ := cli.ExitCode(err); code != cli.ExitFailure || !strings.Contains(err.Error(), "not confirmed; nothing was sent") {
				t.Fatalf("exit %d, error %v", code, err)
			}
			if len(asked) != 1 || !strings.HasSuffix(asked[0], "would run on 3 hosts (h1, h2, h3); type yes to go on: ") {
				t.Errorf("asked %q", asked)
			}
			if got := audited(f); len(got) > 0 {
				t.Errorf("sent to %v", got)
			}
		})
	})
	for _, tc := range []struct {
		name  string
		extra []string
		ask   bool
	}{
		{"confirmed", nil, true},
		{"--yes", []string{"--yes"}, false},
		{"--dry-run", []string{"--dry-run"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inKHFleet(t, names, nil, func(t *testing.T, f *khFleet) {
				asked := 0
				f.confirm = func(string) (bool, error) { asked++; return true, nil }
				if _, stderr, err := f.sera(append(slices.Clone(line), tc.extra...)...); err != nil {
					t.Fatalf("%v\n%s", err, stderr)
				}
				if asked != map[bool]int{true: 1, false: 0}[tc.ask] {
					t.Errorf("asked %d times", asked)
				}
				if got := audited(f); !slices.Equal(got, names) {
					t.Errorf("sent to %v, want every host", got)
				}
			})
		})
	}
	t.Run("one host", func(t *testing.T) {
		inKHFleet(t, names, nil, func(t *testing.T, f *khFleet) {
			f.confirm = func(string) (bool, error) { t.Error("asked"); return false, nil }
			if _, stderr, err := f.sera("hostkey", "untrust", "gone", "--to", "h*2", "--timeout", "20s"); err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
		})
	})
}
