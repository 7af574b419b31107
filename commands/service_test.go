package commands

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/install"
)

// serviceRoot makes "sera install service" work on a directory, with a
// systemctl that records its calls and a running systemd.
func serviceRoot(t *testing.T) (sys *host.System, root string, calls *[]string) {
	t.Helper()
	root = t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	calls = new([]string)
	active := false
	r := &host.Recorder{Respond: func(argv []string) ([]byte, error) {
		if argv[0] != "systemctl" {
			return nil, fmt.Errorf("ran %q", argv)
		}
		args := argv[1:]
		switch args[0] {
		case "is-enabled", "is-active":
			if !active {
				return nil, os.ErrNotExist
			}
			return nil, nil
		case "start", "restart":
			active = true
		case "disable":
			active = false
		}
		*calls = append(*calls, strings.Join(args, " "))
		return nil, nil
	}}
	return host.ForTest(root, r, host.FixedClock{}), root, calls
}

// runService runs sera with args against sys (nil: this machine).
func runService(t *testing.T, sys *host.System, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	o := &cli.Options{Stdout: &out, Stderr: &out, Env: testEnv(t), Exe: "/usr/local/bin/sera"}
	if sys != nil {
		o.Host = sys
	}
	root := NewRoot(o)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestInstallServiceCommand(t *testing.T) {
	sys, root, calls := serviceRoot(t)
	if err := os.MkdirAll(filepath.Join(root, "etc/sera"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, install.KeyPath), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := runService(t, sys, "install", "service", "--dry-run")
	want := `would: write /etc/systemd/system/sera.service (ExecStart=/usr/local/bin/sera watch)
would: write /etc/sera/env (0600, every setting commented out)
would: systemctl daemon-reload
would: systemctl enable sera.service
would: systemctl start sera.service
`
	if err != nil || out != want {
		t.Errorf("--dry-run: %v\n%s\nwant\n%s", err, out, want)
	}
	if _, err := os.Stat(filepath.Join(root, install.LocalUnitPath)); err == nil || len(*calls) != 0 {
		t.Fatalf("--dry-run changed something (systemctl %q)", *calls)
	}

	out, err = runService(t, sys, "install", "service")
	if err != nil || out != strings.ReplaceAll(want, "would:", "done:") {
		t.Errorf("install: %v\n%s", err, out)
	}
	out, err = runService(t, sys, "install", "service")
	if err != nil || out != "note: sera.service is installed, enabled and running\nnothing to do\n" {
		t.Errorf("second install: %v\n%q", err, out)
	}

	out, err = runService(t, sys, "uninstall", "service")
	want = `done: systemctl disable --now sera.service
done: remove /etc/systemd/system/sera.service
done: systemctl daemon-reload
note: kept /etc/sera (key, clients, settings) and /var/lib/sera (state, audit log); delete them to forget this host's identity
`
	if err != nil || out != want {
		t.Errorf("uninstall: %v\n%s\nwant\n%s", err, out, want)
	}
	out, err = runService(t, sys, "uninstall", "service")
	if err != nil || out != "sera.service is not installed; nothing to do\n" {
		t.Errorf("second uninstall: %v\n%q", err, out)
	}
}

func TestInstallServiceNeedsRoot(t *testing.T) {
	// No test host: this machine, which a user may not change.
	var sys *host.System
	for _, args := range [][]string{{"install", "service"}, {"uninstall", "service"}} {
		if _, err := runService(t, sys, args...); err == nil || !strings.Contains(err.Error(), "needs root") {
			t.Errorf("%q as a user: %v", args, err)
		}
	}
	if _, err := runService(t, sys, "install", "service", "extra"); err == nil {
		t.Error("extra argument accepted")
	}
}
