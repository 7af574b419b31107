package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// sudo is granted to groups, one drop-in per group in /etc/sudoers.d named
// sera-GROUP. sudo reads every file there whose name has no '.' and does
// not end in '~'; group names have neither, and the temporary file a grant
// is written to starts with '.', so it is never live before visudo has
// checked it. Drop-ins with other names are never touched.

const (
	sudoersDir    = "/etc/sudoers.d"
	sudoersPrefix = "sera-"
	sudoersMode   = 0o440
)

// sudoersPath is the drop-in of group name, as a host path.
func sudoersPath(name string) string { return sudoersDir + "/" + sudoersPrefix + name }

// sudoersRule is the rule sera writes for a group.
func sudoersRule(name string, nopasswd bool) string {
	if nopasswd {
		return "%" + name + " ALL=(ALL:ALL) NOPASSWD: ALL"
	}
	return "%" + name + " ALL=(ALL:ALL) ALL"
}

// sudoersContent is the whole drop-in sera writes for a group.
func sudoersContent(name string, nopasswd bool) []byte {
	return []byte("# Managed by sera: sudo for the members of group " + name + ".\n" +
		"# Do not edit; change it with 'sera sudo grant' or 'sera sudo revoke'.\n" +
		sudoersRule(name, nopasswd) + "\n")
}

// sudoersPresent reports whether the host has a sera drop-in for name.
func (h *Host) sudoersPresent(name string) bool {
	_, err := os.Lstat(h.Sys.Path(sudoersPath(name)))
	return err == nil
}

// readSudoers reads the drop-in of name: nil if there is none. A link or
// anything but a regular file is refused.
func (h *Host) readSudoers(name string) ([]byte, error) {
	b, err := safefile.ReadNoFollow(h.Sys.Path(sudoersPath(name)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w; nothing was changed", sudoersPath(name), err)
	}
	return b, nil
}

func (t *hostTree) sudoCmd() *cobra.Command {
	c := group(&cobra.Command{
		Use:   "sudo",
		Short: "Grant sudo to regular groups, one drop-in per group in /etc/sudoers.d",
		Long: `Grant sudo to the members of a regular group (gid in GID_MIN..GID_MAX),
through one drop-in per group, /etc/sudoers.d/sera-GROUP (mode 0440),
checked with 'visudo -cf' before it is moved into place. Drop-ins sera did
not write are never touched. Manage the members with 'sera group members'.`,
	})
	c.AddCommand(t.sudoGrantCmd(), t.sudoRevokeCmd(), t.sudoListCmd())
	return c
}

func (t *hostTree) sudoGrantCmd() *cobra.Command {
	var nopasswd, dryRun bool
	c := &cobra.Command{
		Use:   "grant GROUP [--nopasswd]",
		Short: "Let the members of a regular group use sudo",
		Long: `Let the members of a regular group run any command as any user with sudo:
/etc/sudoers.d/sera-GROUP gets '%GROUP ALL=(ALL:ALL) ALL' (with --nopasswd,
'NOPASSWD: ALL'). Run again it says "already granted"; with the other
--nopasswd it rewrites the drop-in.`,
		Example: `  sera sudo grant ops --to web1
  sera sudo grant deploy --nopasswd --to 'web*'`,
		Args: usageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		return t.groupCheckOnHost(func(h *Host, db *accountDB) error {
			_, _, err := h.planSudoGrant(db, args[0], nopasswd)
			return err
		})
	}
	c.Flags().BoolVar(&nopasswd, "nopasswd", false, "no password asked (NOPASSWD)")
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		return h.withAccounts(func(db *accountDB) error {
			p, noChange, err := h.planSudoGrant(db, args[0], nopasswd)
			if err != nil {
				return err
			}
			h.warnNoIncludedir(errOut)
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}

func (h *Host) planSudoGrant(db *accountDB, name string, nopasswd bool) (plan.Plan, string, error) {
	if db.group(name) == nil {
		return plan.Plan{}, "", fmt.Errorf("no group %s on this host (create it with 'sera group add %s'); nothing was changed", name, name)
	}
	if _, err := db.manageableGroup(name); err != nil {
		return plan.Plan{}, "", fmt.Errorf("%w; nothing was changed", err)
	}
	if fi, err := h.Sys.FS.Lstat(sudoersDir); err != nil {
		return plan.Plan{}, "", fmt.Errorf("no directory %s on this host (is sudo installed?); nothing was changed", sudoersDir)
	} else if fi.Mode()&fs.ModeSymlink != 0 {
		return plan.Plan{}, "", fmt.Errorf("refusing %s: %w; nothing was changed", sudoersDir, safefile.ErrSymlink)
	} else if !fi.IsDir() {
		return plan.Plan{}, "", fmt.Errorf("refusing %s: not a directory; nothing was changed", sudoersDir)
	}
	cur, err := h.readSudoers(name)
	if err != nil {
		return plan.Plan{}, "", err
	}
	want := sudoersContent(name, nopasswd)
	if bytes.Equal(cur, want) {
		return plan.Plan{}, fmt.Sprintf("sudo for group %s already granted (%s: %s)", name, sudoersPath(name), sudoersRule(name, nopasswd)), nil
	}
	var p plan.Plan
	p.Add(fmt.Sprintf("write %s (%04o): %s", sudoersPath(name), sudoersMode, sudoersRule(name, nopasswd)), func(ctx context.Context) error {
		return h.writeSudoers(ctx, name, want)
	})
	return p, "", nil
}

// writeSudoers installs the drop-in of name: written to a temporary file
// in /etc/sudoers.d whose name sudo ignores, checked with visudo -cf,
// made 0440, fsynced and renamed into place. If visudo rejects it, the
// temporary file is removed and the old drop-in, if any, stays as it was.
func (h *Host) writeSudoers(ctx context.Context, name string, content []byte) error {
	dir := h.Sys.Path(sudoersDir)
	final := h.Sys.Path(sudoersPath(name))
	f, err := os.CreateTemp(dir, "."+sudoersPrefix+name+".tmp-*")
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
	if _, err := h.Sys.Exec.Run(ctx, "visudo", "-cf", tmp); err != nil {
		return fmt.Errorf("visudo rejected the new drop-in, which was not installed: %w", err)
	}
	if err := f.Chmod(sudoersMode); err != nil {
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
	return syncSudoersDir(dir)
}

func syncSudoersDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// warnNoIncludedir warns when /etc/sudoers does not read /etc/sudoers.d,
// where a grant would have no effect.
func (h *Host) warnNoIncludedir(errOut io.Writer) {
	b, err := h.readFile("/etc/sudoers")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "@includedir" || f[0] == "#includedir") && strings.TrimRight(f[1], "/") == sudoersDir {
			return
		}
	}
	fmt.Fprintf(errOut, "warning: /etc/sudoers has no '@includedir %s': sudo ignores the drop-ins there\n", sudoersDir)
}

func (t *hostTree) sudoRevokeCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "revoke GROUP",
		Short: "Remove the sudo drop-in of a group",
		Long: `Remove /etc/sudoers.d/sera-GROUP. Other drop-ins, and sudo a group gets
from anywhere else, are left alone.`,
		Args: usageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		return t.groupCheckOnHost(func(h *Host, db *accountDB) error {
			_, _, err := h.planSudoRevokeCmd(db, args[0])
			return err
		})
	}
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accountDB) error {
			p, noChange, err := h.planSudoRevokeCmd(db, args[0])
			if err != nil {
				return err
			}
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}

func (h *Host) planSudoRevokeCmd(db *accountDB, name string) (plan.Plan, string, error) {
	// A group that is gone may still have its drop-in removed; a system
	// group never had one from sera.
	if g := db.group(name); g != nil && !db.managedGID(g.GID) {
		return plan.Plan{}, "", fmt.Errorf("refusing sudo for %s: it is a system group (gid %d, outside %d..%d) whose sudo sera does not manage; nothing was changed",
			name, g.GID, db.defs.GIDMin, db.defs.GIDMax)
	}
	var p plan.Plan
	if err := h.planSudoRevoke(&p, name); err != nil {
		return plan.Plan{}, "", err
	}
	return p, fmt.Sprintf("sudo for group %s already revoked (no %s)", name, sudoersPath(name)), nil
}

// planSudoRevoke adds the removal of name's drop-in to p, if there is one.
func (h *Host) planSudoRevoke(p *plan.Plan, name string) error {
	file := h.Sys.Path(sudoersPath(name))
	fi, err := os.Lstat(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to check %s: %w; nothing was changed", sudoersPath(name), err)
	}
	if fi.IsDir() {
		return fmt.Errorf("refusing %s: a directory, not a drop-in sera wrote; nothing was changed", sudoersPath(name))
	}
	p.Add("remove "+sudoersPath(name), func(context.Context) error {
		if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return syncSudoersDir(filepath.Dir(file))
	})
	return nil
}

// sudoInfo is what sudo list reports.
type sudoInfo struct {
	Group    string `json:"group"`
	File     string `json:"file"`
	NoPasswd bool   `json:"nopasswd"`
	// Edited is set when the drop-in is not what sera wrote (someone
	// changed it by hand); NoGroup when the group no longer exists.
	Edited  bool `json:"edited,omitempty"`
	NoGroup bool `json:"no_group,omitempty"`
}

func (t *hostTree) sudoListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List the groups sera granted sudo",
		Args:  usageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per group")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		infos, err := h.sudoGrants()
		if err != nil {
			return err
		}
		for _, info := range infos {
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			kind := "password"
			if info.NoPasswd {
				kind = "nopasswd"
			}
			var notes []string
			if info.Edited {
				notes = append(notes, "edited by hand")
			}
			if info.NoGroup {
				notes = append(notes, "no such group")
			}
			line := fmt.Sprintf("%-16s %-9s %s", info.Group, kind, info.File)
			if len(notes) > 0 {
				line += " (" + strings.Join(notes, ", ") + ")"
			}
			fmt.Fprintln(out, line)
		}
		return nil
	})
}

// sudoGrants lists the sera drop-ins of the host.
func (h *Host) sudoGrants() ([]sudoInfo, error) {
	ents, err := h.Sys.FS.ReadDir(sudoersDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to list %s: %w", sudoersDir, err)
	}
	db, err := h.loadAccounts()
	if err != nil {
		return nil, err
	}
	var out []sudoInfo
	for _, e := range ents {
		name, ok := strings.CutPrefix(e.Name(), sudoersPrefix)
		if !ok || checkAccountName("group", name) != nil {
			continue
		}
		b, err := h.readSudoers(name)
		if err != nil || b == nil {
			continue
		}
		info := sudoInfo{Group: name, File: sudoersPath(name), NoGroup: db.group(name) == nil}
		switch {
		case bytes.Equal(b, sudoersContent(name, false)):
		case bytes.Equal(b, sudoersContent(name, true)):
			info.NoPasswd = true
		default:
			info.Edited = true
			info.NoPasswd = bytes.Contains(b, []byte("NOPASSWD"))
		}
		out = append(out, info)
	}
	return out, nil
}
