package install

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
)

func TestUnitOptions(t *testing.T) {
	unit, err := Unit("/usr/bin/sera")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Type=notify", "ExecStart=/usr/bin/sera watch", "WatchdogSec=90s", "Restart=on-failure",
		"EnvironmentFile=-/etc/sera/env", "StateDirectory=sera", "StateDirectoryMode=0700",
		"ConditionPathExists=/etc/sera/key", "KillMode=mixed", "TimeoutStopSec=660s", "WantedBy=multi-user.target",
	}
	for _, h := range Hardening {
		want = append(want, h.Option)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(unit, "\n") {
		lines[l] = true
	}
	for _, w := range want {
		if !lines[w] {
			t.Errorf("unit lacks the line %q", w)
		}
	}
	// These would stop account, key, sudoers or ufw work.
	for _, bad := range []string{"ProtectSystem=", "ProtectHome=", "ReadOnlyPaths=", "CapabilityBoundingSet=", "PrivateNetwork=", "MemoryDenyWriteExecute=", "User="} {
		if strings.Contains(unit, "\n"+bad) {
			t.Errorf("unit sets %s", bad)
		}
	}
}

// A stuck poll loop is noticed only if the watcher reports much more
// often than WatchdogSec; the long poll is 20 s.
func TestWatchdogLeavesRoomForLongPoll(t *testing.T) {
	n := &Notifier{Watchdog: WatchdogSec}
	if gap := n.MaxPollGap(); gap < 20e9 || gap > WatchdogSec/2 {
		t.Errorf("max poll gap %s for WatchdogSec %s", gap, WatchdogSec)
	}
}

func TestExecPath(t *testing.T) {
	for exe, want := range map[string]string{
		"/usr/bin/sera":         "/usr/bin/sera",
		"/opt/my tools/sera":    `"/opt/my tools/sera"`,
		"/opt/100%/sera":        "/opt/100%%/sera",
		"/usr/local/bin/sera-2": "/usr/local/bin/sera-2",
	} {
		got, err := execPath(exe)
		if err != nil || got != want {
			t.Errorf("execPath(%q) = %q, %v; want %q", exe, got, err, want)
		}
	}
	for _, exe := range []string{"sera", "./sera", "/opt/a\"b", "/opt/a\nb", "/opt/$HOME/sera", `/opt/a\b`} {
		if got, err := execPath(exe); err == nil {
			t.Errorf("execPath(%q) = %q, want an error", exe, got)
		}
	}
}

// TestUnitVerifies runs systemd's own checker on the unit, with
// ExecStart pointing at an executable that exists (verify checks it).
// Debian's systemd package provides systemd-analyze; without it the test
// skips, and fails under CI=true.
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found: install Debian's systemd package (.ci/install-host-deps)")
		}
		t.Skip("systemd-analyze not found (Debian package systemd)")
	}
	dir := t.TempDir()
	for _, name := range []string{"sera", "with space/sera"} {
		exe := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exe, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		unit, err := Unit(exe)
		if err != nil {
			t.Fatal(err)
		}
		unitDir := t.TempDir()
		path := filepath.Join(unitDir, UnitName)
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		// --man=no: the man page comes with the package, not here.
		cmd := exec.Command(analyze, "verify", "--man=no", path)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = cmd.Run()
		// Unknown or misspelt options are only warnings: any output fails.
		if err != nil || out.Len() > 0 {
			t.Errorf("systemd-analyze verify %s (ExecStart %s): %v\n%s", path, exe, err, out.String())
		}
	}

	// The checker does catch mistakes: a missing binary and a bad option.
	unit, _ := Unit(filepath.Join(dir, "missing"))
	unit = strings.Replace(unit, "[Service]\n", "[Service]\nProtectKernelTunable=yes\n", 1)
	path := filepath.Join(t.TempDir(), UnitName)
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ProtectKernelTunable") || !strings.Contains(string(out), "missing") {
		t.Errorf("systemd-analyze verify passed a broken unit: %v\n%s", err, out)
	}
}

// systemd must wait, on stop, for the longest command the watcher
// finishes by default.
func TestTimeoutStopCoversExecTimeout(t *testing.T) {
	if TimeoutStopSec < sera.DefaultExecTimeout+sera.ExecGrace {
		t.Errorf("TimeoutStopSec %s is shorter than the default execution timeout %s plus its grace %s", TimeoutStopSec, sera.DefaultExecTimeout, sera.ExecGrace)
	}
}
