package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// Service installs and removes the watcher's systemd service on a host.
type Service struct {
	// Exe is the sera binary the unit runs (ExecStart=).
	Exe string
	// Sys is the host: its files (under a root in tests) and the runner
	// of systemctl.
	Sys *host.System
}

func (s *Service) path(p string) string { return s.Sys.FS.Path(p) }

// booted reports whether systemd is the running init, as sd_booted(3)
// does: /run/systemd/system is a directory.
func (s *Service) booted() bool {
	fi, err := s.Sys.FS.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

func (s *Service) systemctl(args ...string) (string, func(ctx context.Context) error) {
	desc := "systemctl " + strings.Join(args, " ")
	return desc, func(ctx context.Context) error {
		_, err := s.Sys.Run(ctx, append([]string{"systemctl"}, args...)...)
		return err
	}
}

// unsafeExeDirs are where a binary is not fit for a service: PrivateTmp=
// hides /tmp and /var/tmp from it, and a user's home is the user's.
var unsafeExeDirs = []string{"/tmp/", "/var/tmp/", "/dev/shm/", "/home/", "/run/user/"}

// PlanInstall works out how to install the service: the unit in
// /etc/systemd/system (unless the Debian package's unit is there), the
// config directory and env file, then, if systemd runs, daemon-reload,
// enable and start (restart if the unit changed). Without systemd the
// plan writes the files and notes what to run once it does.
func (s *Service) PlanInstall(ctx context.Context) (plan.Plan, error) {
	var p plan.Plan
	pkgUnit := fileExists(s.path(PackageUnitPath))
	changed := false
	if pkgUnit && !fileExists(s.path(LocalUnitPath)) {
		p.Note("%s comes from the sera package (%s); using it", UnitName, PackageUnitPath)
	} else {
		for _, d := range unsafeExeDirs {
			if strings.HasPrefix(s.Exe, d) {
				return plan.Plan{}, fmt.Errorf("sera runs from %s, which the service cannot use (PrivateTmp=, or a user's directory): copy it to /usr/local/bin/sera and run that", s.Exe)
			}
		}
		unit, err := Unit(s.Exe)
		if err != nil {
			return plan.Plan{}, err
		}
		path := s.path(LocalUnitPath)
		old, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			changed = true
			p.Add("write "+LocalUnitPath+" (ExecStart="+s.Exe+" watch)", s.writeUnit(path, unit))
		case err != nil:
			return plan.Plan{}, err
		case string(old) != unit:
			changed = true
			p.Add("rewrite "+LocalUnitPath+" (ExecStart="+s.Exe+" watch)", s.writeUnit(path, unit))
		}
	}
	if fi, err := os.Lstat(s.path(ConfigDir)); errors.Is(err, fs.ErrNotExist) {
		p.Add("create "+ConfigDir+" (0700)", func(context.Context) error { return safefile.MkdirPrivate(s.path(ConfigDir)) })
	} else if err != nil {
		return plan.Plan{}, err
	} else if !fi.IsDir() {
		return plan.Plan{}, fmt.Errorf("%s is not a directory", ConfigDir)
	}
	if _, err := os.Lstat(s.path(EnvPath)); errors.Is(err, fs.ErrNotExist) {
		p.Add("write "+EnvPath+" (0600, every setting commented out)", func(context.Context) error {
			return safefile.WriteAtomic(s.path(EnvPath), []byte(EnvTemplate), 0o600)
		})
	} else if err != nil {
		return plan.Plan{}, err
	}
	haveKey := fileExists(s.path(KeyPath))
	if !s.booted() {
		if p.Changes() {
			p.Note("systemd is not running here: once it is, run 'systemctl daemon-reload && systemctl enable --now %s'; until then run 'sera watch' yourself", UnitName)
		}
		if !haveKey {
			p.Note("no key yet: run 'sera keygen' first")
		}
		if !p.Changes() {
			p.Note("the service files are in place; systemd is not running here")
		}
		return p, nil
	}
	if changed {
		p.Add(s.systemctl("daemon-reload"))
	}
	if changed || s.query(ctx, "is-enabled", "--quiet", UnitName) != nil {
		p.Add(s.systemctl("enable", UnitName))
	}
	active := s.query(ctx, "is-active", "--quiet", UnitName) == nil
	switch {
	case !haveKey:
		p.Note("not starting %s: no key yet. Run 'sera keygen' and 'sera clients add …', then 'systemctl start %s'", UnitName, UnitName)
	case changed && active:
		p.Add(s.systemctl("restart", UnitName))
	case !active:
		p.Add(s.systemctl("start", UnitName))
	}
	if !p.Changes() && haveKey {
		p.Note("%s is installed, enabled and running", UnitName)
	}
	return p, nil
}

// query runs a systemctl command that only answers by its exit status.
func (s *Service) query(ctx context.Context, args ...string) error {
	_, do := s.systemctl(args...)
	return do(ctx)
}

func (s *Service) writeUnit(path, unit string) func(context.Context) error {
	return func(context.Context) error {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		return safefile.WriteAtomic(path, []byte(unit), 0o644)
	}
}

// ErrPackaged is returned by PlanUninstall when the service belongs to
// the sera package.
var ErrPackaged = errors.New("the sera service comes from the sera package; remove it with 'apt remove sera' (keeps /etc/sera) or 'apt purge sera'")

// PlanUninstall works out how to remove what PlanInstall added: stop and
// disable the service, remove the unit, daemon-reload. The key,
// known_clients, settings and state (/etc/sera, /var/lib/sera) stay.
func (s *Service) PlanUninstall() (plan.Plan, error) {
	var p plan.Plan
	if !fileExists(s.path(LocalUnitPath)) {
		if fileExists(s.path(PackageUnitPath)) {
			return plan.Plan{}, ErrPackaged
		}
		return plan.Plan{}, nil
	}
	booted := s.booted()
	if booted {
		p.Add(s.systemctl("disable", "--now", UnitName))
	} else if fileExists(s.path("/etc/systemd/system/multi-user.target.wants/" + UnitName)) {
		link := "/etc/systemd/system/multi-user.target.wants/" + UnitName
		p.Add("remove "+link, func(context.Context) error { return os.Remove(s.path(link)) })
	}
	p.Add("remove "+LocalUnitPath, func(context.Context) error { return os.Remove(s.path(LocalUnitPath)) })
	if booted {
		if fileExists(s.path(PackageUnitPath)) {
			p.Note("the sera package's unit (%s) remains", PackageUnitPath)
		}
		p.Add(s.systemctl("daemon-reload"))
	}
	p.Note("kept %s (key, clients, settings) and %s (state, audit log); delete them to forget this host's identity", ConfigDir, StateDir)
	return p, nil
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
