package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/plan"
)

// fakeSystemd records systemctl calls; enabled and active answer
// is-enabled and is-active.
type fakeSystemd struct {
	calls           []string
	enabled, active bool
}

// Run is the host's runner: it only runs systemctl.
func (f *fakeSystemd) Run(_ context.Context, argv ...string) ([]byte, error) {
	if argv[0] != "systemctl" {
		return nil, fmt.Errorf("ran %q, not systemctl", argv)
	}
	return nil, f.systemctl(argv[1:]...)
}

func (f *fakeSystemd) systemctl(args ...string) error {
	call := strings.Join(args, " ")
	switch args[0] {
	case "is-enabled":
		if !f.enabled {
			return errors.New("exit status 1")
		}
		return nil
	case "is-active":
		if !f.active {
			return errors.New("exit status 3")
		}
		return nil
	case "enable":
		f.enabled = true
	case "start", "restart":
		f.active = true
	case "disable":
		f.enabled, f.active = false, false
	}
	f.calls = append(f.calls, call)
	return nil
}

type serviceFixture struct {
	t      *testing.T
	root   string
	sd     *fakeSystemd
	booted bool
	exe    string
}

func newServiceFixture(t *testing.T) *serviceFixture {
	return &serviceFixture{t: t, root: t.TempDir(), sd: &fakeSystemd{}, booted: true, exe: "/usr/local/bin/sera"}
}

func (f *serviceFixture) service() *Service {
	// A running systemd is the directory sd_booted(3) looks for.
	run := filepath.Join(f.root, "run/systemd/system")
	if f.booted {
		if err := os.MkdirAll(run, 0o755); err != nil {
			f.t.Fatal(err)
		}
	} else if err := os.RemoveAll(filepath.Join(f.root, "run")); err != nil {
		f.t.Fatal(err)
	}
	return &Service{Exe: f.exe, Sys: host.ForTest(f.root, f.sd, host.FixedClock{})}
}

func (f *serviceFixture) write(p, content string) {
	f.t.Helper()
	path := filepath.Join(f.root, p)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

func (f *serviceFixture) exists(p string) bool {
	_, err := os.Lstat(filepath.Join(f.root, p))
	return err == nil
}

// apply runs the plan and returns its change and note descriptions.
func (f *serviceFixture) apply(p plan.Plan, err error) (changes, notes []string) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, s := range p.Steps {
		if s.Do == nil {
			notes = append(notes, s.Desc)
			continue
		}
		changes = append(changes, s.Desc)
		if err := s.Do(context.Background()); err != nil {
			f.t.Fatalf("%s: %v", s.Desc, err)
		}
	}
	return changes, notes
}

func (f *serviceFixture) install() (changes, notes []string) {
	f.t.Helper()
	return f.apply(f.service().PlanInstall(context.Background()))
}

func TestInstallService(t *testing.T) {
	f := newServiceFixture(t)
	f.write(KeyPath, "key")
	changes, _ := f.install()
	want := []string{
		"write /etc/systemd/system/sera.service (ExecStart=/usr/local/bin/sera watch)",
		"create /etc/sera (0700)",
		"write /etc/sera/env (0600, every setting commented out)",
		"systemctl daemon-reload", "systemctl enable sera.service", "systemctl start sera.service",
	}
	// The key was planted, so /etc/sera exists already.
	want = slices.Delete(want, 1, 2)
	if !slices.Equal(changes, want) {
		t.Errorf("changes:\n%q\nwant\n%q", changes, want)
	}
	unit, err := os.ReadFile(filepath.Join(f.root, LocalUnitPath))
	if err != nil || !strings.Contains(string(unit), "ExecStart=/usr/local/bin/sera watch\n") {
		t.Errorf("unit: %v\n%s", err, unit)
	}
	for p, mode := range map[string]os.FileMode{LocalUnitPath: 0o644, EnvPath: 0o600} {
		if fi, err := os.Stat(filepath.Join(f.root, p)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", p, err, fi.Mode().Perm(), mode)
		}
	}

	// Again: nothing to change, and it says so.
	f.sd.calls = nil
	changes, notes := f.install()
	if len(changes) != 0 || len(f.sd.calls) != 0 || !slices.Equal(notes, []string{"sera.service is installed, enabled and running"}) {
		t.Errorf("second install: changes %q, calls %q, notes %q", changes, f.sd.calls, notes)
	}

	// A moved binary rewrites the unit and restarts the running service.
	f.exe = "/opt/sera/bin/sera"
	changes, _ = f.install()
	want = []string{"rewrite /etc/systemd/system/sera.service (ExecStart=/opt/sera/bin/sera watch)",
		"systemctl daemon-reload", "systemctl enable sera.service", "systemctl restart sera.service"}
	if !slices.Equal(changes, want) {
		t.Errorf("changes:\n%q\nwant\n%q", changes, want)
	}

	// A stopped service is started; the env file the admin changed stays.
	f.write(EnvPath, "SERA_NAME=web1\n")
	f.sd.active = false
	if changes, _ := f.install(); !slices.Equal(changes, []string{"systemctl start sera.service"}) {
		t.Errorf("changes: %q", changes)
	}
	if b, _ := os.ReadFile(filepath.Join(f.root, EnvPath)); string(b) != "SERA_NAME=web1\n" {
		t.Errorf("env file rewritten: %q", b)
	}
}

func TestInstallServiceWithoutKey(t *testing.T) {
	f := newServiceFixture(t)
	changes, notes := f.install()
	if slices.Contains(changes, "systemctl start sera.service") || !slices.Contains(changes, "systemctl enable sera.service") {
		t.Errorf("changes: %q", changes)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "sera keygen") {
		t.Errorf("notes: %q", notes)
	}
	if fi, err := os.Stat(filepath.Join(f.root, ConfigDir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v", ConfigDir, err, fi.Mode())
	}
}

func TestInstallServiceWithoutSystemd(t *testing.T) {
	f := newServiceFixture(t)
	f.booted = false
	f.write(KeyPath, "key")
	changes, notes := f.install()
	if len(changes) != 2 || len(f.sd.calls) != 0 {
		t.Errorf("changes %q, systemctl calls %q", changes, f.sd.calls)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "systemctl daemon-reload && systemctl enable --now sera.service") {
		t.Errorf("notes: %q", notes)
	}
	if !f.exists(LocalUnitPath) {
		t.Error("unit not written")
	}
	changes, notes = f.install()
	if len(changes) != 0 || len(notes) != 1 || !strings.Contains(notes[0], "systemd is not running") {
		t.Errorf("second run: changes %q, notes %q", changes, notes)
	}
}

func TestInstallServiceFromPackage(t *testing.T) {
	f := newServiceFixture(t)
	f.exe = PackageBinary
	f.write(PackageUnitPath, "[Service]\n")
	f.write(KeyPath, "key")
	f.write(EnvPath, "")
	changes, notes := f.install()
	if !slices.Equal(changes, []string{"systemctl enable sera.service", "systemctl start sera.service"}) || f.exists(LocalUnitPath) {
		t.Errorf("changes %q, local unit written: %v", changes, f.exists(LocalUnitPath))
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "from the sera package") {
		t.Errorf("notes: %q", notes)
	}
	if _, err := f.service().PlanUninstall(); !errors.Is(err, ErrPackaged) {
		t.Errorf("uninstall of the package's service: %v", err)
	}
}

func TestInstallServiceRefusesTmp(t *testing.T) {
	f := newServiceFixture(t)
	f.exe = "/tmp/go-build123/sera"
	if _, err := f.service().PlanInstall(context.Background()); err == nil || !strings.Contains(err.Error(), "/usr/local/bin") {
		t.Errorf("err = %v", err)
	}
}

func TestUninstallService(t *testing.T) {
	f := newServiceFixture(t)
	f.write(KeyPath, "key")
	f.install()
	f.sd.calls = nil
	changes, notes := f.apply(f.service().PlanUninstall())
	want := []string{"systemctl disable --now sera.service", "remove /etc/systemd/system/sera.service", "systemctl daemon-reload"}
	if !slices.Equal(changes, want) || !slices.Equal(f.sd.calls, []string{"disable --now sera.service", "daemon-reload"}) {
		t.Errorf("changes %q, calls %q", changes, f.sd.calls)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "kept /etc/sera") {
		t.Errorf("notes %q", notes)
	}
	if f.exists(LocalUnitPath) || !f.exists(KeyPath) || !f.exists(EnvPath) {
		t.Error("uninstall removed the wrong files")
	}
	if p, err := f.service().PlanUninstall(); err != nil || len(p.Steps) != 0 {
		t.Errorf("second uninstall: %v, %v", p, err)
	}
}
