package hostkeys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// Path is one known_hosts file sera edits.
type Path struct {
	Show string // the path shown to people
	File string // the path on this machine
	// Mode of a new file, and of every write unless KeepMode, where an
	// existing file keeps its own.
	Mode     fs.FileMode
	KeepMode bool
	DirMode  fs.FileMode // of a missing parent directory
}

// Read reads the file and its mode; a missing file is empty, mode 0. A
// link in its place is refused.
func (k *Path) Read() ([]byte, fs.FileMode, error) {
	b, err := safefile.ReadNoFollow(k.File)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	} else if err != nil {
		return nil, 0, fmt.Errorf("failed to read %s: %w", k.Show, err)
	}
	fi, err := os.Lstat(k.File)
	if err != nil {
		return nil, 0, err
	}
	return b, fi.Mode().Perm(), nil
}

// Plan reads the file, lets change edit its managed entries, and plans
// the write when they differ, warning on errOut of lines it drops and of
// the admin's lines that trust other keys. The caller holds the lock that
// serializes sera's edits of the file and executes the plan.
func (k *Path) Plan(errOut io.Writer, change func(*File) error) (plan.Plan, error) {
	raw, mode, err := k.Read()
	if err != nil {
		return plan.Plan{}, err
	}
	before, err := ParseFile(raw)
	if err != nil {
		return plan.Plan{}, fmt.Errorf("%s: %w", k.Show, err)
	}
	after := before.Clone()
	if err := change(after); err != nil {
		return plan.Plan{}, err
	}
	for _, b := range before.Bad {
		fmt.Fprintf(errOut, "warning: %s %s in sera's block, dropped at its next change\n", k.Show, b)
	}
	for _, w := range after.OutsideWarnings(k.Show) {
		fmt.Fprintf(errOut, "warning: %s\n", w)
	}
	var p plan.Plan
	data := after.Bytes()
	if !bytes.Equal(before.Bytes(), data) {
		changes := Diff(before.Hosts, after.Hosts)
		if len(changes) == 0 {
			changes = []string{"drop unreadable lines in sera's block"}
		}
		verb, newMode := "write", k.Mode
		if raw == nil && mode == 0 {
			verb = "create"
		} else if k.KeepMode {
			newMode = mode
		}
		p.Add(fmt.Sprintf("%s %s (%04o): %s", verb, k.Show, newMode, strings.Join(changes, "; ")), func(context.Context) error {
			cur, _, err := k.Read()
			if err != nil {
				return err
			}
			if !bytes.Equal(cur, raw) {
				return fmt.Errorf("%s changed while sera was planning; nothing written, run the command again", k.Show)
			}
			if err := os.MkdirAll(filepath.Dir(k.File), k.DirMode); err != nil {
				return err
			}
			return safefile.WriteAtomic(k.File, data, newMode)
		})
	}
	return p, nil
}

// Edit plans the edit of k by change and executes it (or with dryRun
// shows it) on out; noChange is said when nothing differs. An error before
// the write changed nothing (plan.Unchanged).
func (k *Path) Edit(ctx context.Context, out, errOut io.Writer, dryRun bool, noChange string, change func(*File) error) error {
	return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
		p, err := k.Plan(errOut, change)
		return p, noChange, err
	})
}
