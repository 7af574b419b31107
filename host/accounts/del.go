package accounts

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

// PlanDel plans 'sera user del': the user's processes ended, its home
// archived (unless keepHome), then userdel (--remove unless keepHome),
// and its lock record removed. The second result is what to say when
// the user is already absent.
func PlanDel(sys *host.System, db *DB, name string, keepHome bool) (plan.Plan, string, error) {
	if db.User(name) == nil {
		return plan.Plan{}, "user " + name + " already absent", nil
	}
	u, err := db.ManageableUser(name)
	if err != nil {
		return plan.Plan{}, "", err
	}
	var p plan.Plan
	planKill(&p, sys, u)
	argv := []string{"userdel", "--", name}
	if !keepHome {
		argv = []string{"userdel", "--remove", "--", name}
		fi, err := sys.FS.Lstat(u.Home)
		switch {
		case err == nil && fi.IsDir():
			planArchive(&p, sys, u)
		case err == nil:
			// userdel --remove would delete what a link points to, and
			// it would not be archived.
			return plan.Plan{}, "", fmt.Errorf("refusing to delete the home %s of %s: it is not a directory (%s), so it cannot be archived (--keep-home deletes only the account)",
				u.Home, name, fi.Mode().Type())
		case !errors.Is(err, fs.ErrNotExist):
			return plan.Plan{}, "", fmt.Errorf("failed to check the home %s: %w", u.Home, err)
		}
	}
	p.Run(sys.Exec, argv...)
	// A later account of the same name must not be unlocked from this
	// one's record.
	rec := LockRecordPath(sys, name)
	if _, err := os.Lstat(rec); err == nil {
		p.Add("remove "+rec+", the lock record of the deleted user", func(context.Context) error { return os.Remove(rec) })
	}
	return p, "", nil
}

// planArchive adds the archive of u's home: a gzipped tar in a 0700
// directory, mode 0600, so it is root's alone from the first byte.
func planArchive(p *plan.Plan, sys *host.System, u *User) {
	dir := filepath.Join(sys.State, "archive")
	now := sys.Now()
	archive := filepath.Join(dir, fmt.Sprintf("%s-%s.tar.gz", u.Name, now.UTC().Format("20060102T150405Z")))
	argv := []string{"tar", "--create", "--gzip", "--file", archive, "--directory", u.Home, "--", "."}
	p.Add("archive "+u.Home+": "+strings.Join(plan.Quote(argv), " "), func(ctx context.Context) error {
		if err := safefile.MkdirPrivate(dir); err != nil {
			return err
		}
		f, err := os.OpenFile(archive, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("failed to create %s: %w", archive, err)
		}
		f.Close()
		if _, err := sys.Exec.Run(ctx, argv...); err != nil {
			os.Remove(archive)
			return err
		}
		return os.Chmod(archive, 0o600)
	})
}
