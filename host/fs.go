package host

import (
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sera-dev/sera/safefile"
)

// FS is the host's file system seen from Root: every path a method takes
// is absolute on the host ("/etc/passwd") and is opened under Root, "/"
// in production and a temporary directory in unit tests. Reads and writes
// of whole files never follow a symbolic link; writes are atomic (a
// temporary file in the same directory, fsynced, renamed).
type FS struct {
	// Root is the directory the host's / is; "" is /.
	Root string
}

// Path maps an absolute host path under Root.
func (f FS) Path(p string) string {
	if f.Root == "" {
		return p
	}
	return filepath.Join(f.Root, p)
}

// ReadFile reads p, refusing a symbolic link (safefile.ErrSymlink).
func (f FS) ReadFile(p string) ([]byte, error) { return safefile.ReadNoFollow(f.Path(p)) }

// WriteFile replaces p atomically with data, mode perm, refusing to write
// through a symbolic link.
func (f FS) WriteFile(p string, data []byte, perm fs.FileMode) error {
	return safefile.WriteAtomic(f.Path(p), data, perm)
}

// Lstat describes p itself, a link not followed.
func (f FS) Lstat(p string) (fs.FileInfo, error) { return os.Lstat(f.Path(p)) }

// Stat describes p, links followed.
func (f FS) Stat(p string) (fs.FileInfo, error) { return os.Stat(f.Path(p)) }

// ReadDir lists the directory p.
func (f FS) ReadDir(p string) ([]fs.DirEntry, error) { return os.ReadDir(f.Path(p)) }

// Remove removes the file or empty directory p.
func (f FS) Remove(p string) error { return os.Remove(f.Path(p)) }

// Rename renames oldp to newp.
func (f FS) Rename(oldp, newp string) error { return os.Rename(f.Path(oldp), f.Path(newp)) }

// MkdirAll creates the directory p and its parents.
func (f FS) MkdirAll(p string, perm fs.FileMode) error { return os.MkdirAll(f.Path(p), perm) }

// Chmod sets the mode of p.
func (f FS) Chmod(p string, perm fs.FileMode) error { return os.Chmod(f.Path(p), perm) }

// Open opens p for reading.
func (f FS) Open(p string) (*os.File, error) { return os.Open(f.Path(p)) }

// OpenFile opens p as os.OpenFile does.
func (f FS) OpenFile(p string, flag int, perm fs.FileMode) (*os.File, error) {
	return os.OpenFile(f.Path(p), flag, perm)
}
