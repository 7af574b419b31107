package sudo

import (
	"bytes"
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

// sudo is granted to groups, one drop-in per group in /etc/sudoers.d named
// sera-GROUP. sudo reads every file there whose name has no '.' and does
// not end in '~'; group names have neither, and the temporary file a grant
// is written to starts with '.', so it is never live before visudo has
// checked it. Drop-ins with other names are never touched.
const (
	Dir    = "/etc/sudoers.d"
	Prefix = "sera-"
	Mode   = 0o440
)

// Path is the drop-in of group name, as a host path.
func Path(name string) string { return Dir + "/" + Prefix + name }

// Rule is the rule sera writes for a group.
func Rule(name string, nopasswd bool) string {
	if nopasswd {
		return "%" + name + " ALL=(ALL:ALL) NOPASSWD: ALL"
	}
	return "%" + name + " ALL=(ALL:ALL) ALL"
}

// Content is the whole drop-in sera writes for a group.
func Content(name string, nopasswd bool) []byte {
	return []byte("# Managed by sera: sudo for the members of group " + name + ".\n" +
		"# Do not edit; change it with 'sera sudo grant' or 'sera sudo revoke'.\n" +
		Rule(name, nopasswd) + "\n")
}

// Present reports whether the host has a sera drop-in for name.
func Present(sys *host.System, name string) bool {
	_, err := sys.FS.Lstat(Path(name))
	return err == nil
}

// Read reads the drop-in of name: nil if there is none. A link or
// anything but a regular file is refused.
func Read(sys *host.System, name string) ([]byte, error) {
	b, err := sys.FS.ReadFile(Path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", Path(name), err)
	}
	return b, nil
}

// PlanGrant plans the drop-in of group name (which the caller has
// checked is a group sera manages); the second result is what to say when
// it is there already.
func PlanGrant(sys *host.System, name string, nopasswd bool) (plan.Plan, string, error) {
	if fi, err := sys.FS.Lstat(Dir); err != nil {
		return plan.Plan{}, "", host.Missing("no directory %s on this host (is sudo installed?)", Dir)
	} else if fi.Mode()&fs.ModeSymlink != 0 {
		return plan.Plan{}, "", fmt.Errorf("refusing %s: %w", Dir, safefile.ErrSymlink)
	} else if !fi.IsDir() {
		return plan.Plan{}, "", fmt.Errorf("refusing %s: not a directory", Dir)
	}
	cur, err := Read(sys, name)
	if err != nil {
		return plan.Plan{}, "", err
	}
	want := Content(name, nopasswd)
	if bytes.Equal(cur, want) {
		return plan.Plan{}, fmt.Sprintf("sudo for group %s already granted (%s: %s)", name, Path(name), Rule(name, nopasswd)), nil
	}
	var p plan.Plan
	p.Add(fmt.Sprintf("write %s (%04o): %s", Path(name), Mode, Rule(name, nopasswd)), func(ctx context.Context) error {
		return write(ctx, sys, name, want)
	})
	return p, "", nil
}

// write installs the drop-in of name: written to a temporary file in
// /etc/sudoers.d whose name sudo ignores, checked with visudo -cf, made
// 0440, fsynced and renamed into place. If visudo rejects it, the
// temporary file is removed and the old drop-in, if any, stays as it was.
func write(ctx context.Context, sys *host.System, name string, content []byte) error {
	dir := sys.Path(Dir)
	final := sys.Path(Path(name))
	f, err := os.CreateTemp(dir, "."+Prefix+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(content); err != nil {
		return err
	}
	if _, err := sys.Exec.Run(ctx, "visudo", "-cf", tmp); err != nil {
		return fmt.Errorf("visudo rejected the new drop-in, which was not installed: %w", err)
	}
	if err := f.Chmod(Mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	ok = true
	return safefile.SyncDir(dir)
}

// NoIncludedirWarning is a warning when /etc/sudoers does not read
// /etc/sudoers.d, where a grant would have no effect; "" when it does.
func NoIncludedirWarning(sys *host.System) string {
	b, err := sys.FS.ReadFile("/etc/sudoers")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "@includedir" || f[0] == "#includedir") && strings.TrimRight(f[1], "/") == Dir {
			return ""
		}
	}
	return fmt.Sprintf("warning: /etc/sudoers has no '@includedir %s': sudo ignores the drop-ins there", Dir)
}

// PlanRevoke adds the removal of name's drop-in to p, if there is one.
func PlanRevoke(p *plan.Plan, sys *host.System, name string) error {
	file := sys.Path(Path(name))
	fi, err := os.Lstat(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to check %s: %w", Path(name), err)
	}
	if fi.IsDir() {
		return fmt.Errorf("refusing %s: a directory, not a drop-in sera wrote", Path(name))
	}
	p.Add("remove "+Path(name), func(context.Context) error {
		if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return safefile.SyncDir(filepath.Dir(file))
	})
	return nil
}

// Info is what 'sudo list' reports of one drop-in.
type Info struct {
	Group    string `json:"group"`
	File     string `json:"file"`
	NoPasswd bool   `json:"nopasswd"`
	// Edited is set when the drop-in is not what sera wrote (someone
	// changed it by hand); NoGroup when the group no longer exists.
	Edited  bool `json:"edited,omitempty"`
	NoGroup bool `json:"no_group,omitempty"`
}

// List lists the sera drop-ins of the host whose names validName accepts
// (a group name sera could have written); NoGroup is left for the caller,
// which knows the groups.
func List(sys *host.System, validName func(string) bool) ([]Info, error) {
	ents, err := sys.FS.ReadDir(Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to list %s: %w", Dir, err)
	}
	var out []Info
	for _, e := range ents {
		name, ok := strings.CutPrefix(e.Name(), Prefix)
		if !ok || !validName(name) {
			continue
		}
		b, err := Read(sys, name)
		if err != nil || b == nil {
			continue
		}
		info := Info{Group: name, File: Path(name)}
		switch {
		case bytes.Equal(b, Content(name, false)):
		case bytes.Equal(b, Content(name, true)):
			info.NoPasswd = true
		default:
			info.Edited = true
			info.NoPasswd = bytes.Contains(b, []byte("NOPASSWD"))
		}
		out = append(out, info)
	}
	return out, nil
}
