package sshkeys

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/plan"
)

// Owner is the account whose keys are read or written: its home is
// opened as this uid and gid would see it, never through a link.
type Owner struct {
	Name     string
	UID, GID int
	Home     string
}

// Load reads u's authorized_keys; a missing .ssh or file is empty.
func Load(sys *host.System, u Owner) (*File, error) {
	d, err := sys.FS.OpenUserDir(u.Home, u.UID, u.GID, 0o700, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	sshDir, err := d.OpenChild(".ssh", 0o700, false)
	if errors.Is(err, unix.ENOENT) {
		return &File{}, nil
	} else if err != nil {
		return nil, err
	}
	defer sshDir.Close()
	b, err := sshDir.ReadFile("authorized_keys")
	if err != nil {
		return nil, err
	}
	return Parse(b), nil
}

// PlanWrite adds the write of ak to p when it differs from before, what
// is on disk; what says what the write does. The step re-reads the file
// and refuses to write if it changed since the plan was made.
func PlanWrite(p *plan.Plan, sys *host.System, u Owner, before, ak *File, what string) {
	data := ak.Bytes()
	if bytes.Equal(before.Bytes(), data) {
		return
	}
	path := u.Home + "/.ssh/authorized_keys"
	p.Add(fmt.Sprintf("write %s (0600 %s): %s", path, u.Name, what), func(ctx context.Context) error {
		d, err := sys.FS.OpenUserDir(u.Home, u.UID, u.GID, 0o700, true, ".ssh")
		if err != nil {
			return err
		}
		defer d.Close()
		if err := d.FixMode(0o700); err != nil {
			return err
		}
		// Re-read under the account lock: the plan was made from this
		// same content, unless the user edited it meanwhile.
		cur, err := d.ReadFile("authorized_keys")
		if err != nil {
			return err
		}
		if !bytes.Equal(cur, before.Bytes()) && !bytes.Equal(Parse(cur).Bytes(), before.Bytes()) {
			return fmt.Errorf("%s changed while sera was planning; nothing written, run the command again", path)
		}
		return d.WriteFile("authorized_keys", data, 0o600)
	})
}
