package host

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sera-dev/sera/safefile"
)

// A user owns their home and can put a symbolic link or a hard link
// anywhere in it. Files sera writes there as root are therefore reached
// only through directory file descriptors opened with O_NOFOLLOW, checked
// for their owner, and replaced by renameat within the same directory: a
// link the user planted is refused, never followed.

// UserDir is an open directory inside a user's home.
type UserDir struct {
	fd   int
	path string // for messages only
	uid  int
	gid  int
}

// Close closes the directory.
func (d *UserDir) Close() error { return unix.Close(d.fd) }

// OpenUserDir opens the directory home/sub… of the user uid:gid (home a
// path on the host, under the root), creating the missing ones with mode
// perm owned by the user when create is set. home's parent is trusted
// (root-owned, e.g. /home, which may itself be a link); home and
// everything below it must be real directories owned by the user (or
// root).
func (fs FS) OpenUserDir(home string, uid, gid int, perm uint32, create bool, sub ...string) (*UserDir, error) {
	return openUserDir(fs.Path(home), uid, gid, perm, create, sub...)
}

func openUserDir(home string, uid, gid int, perm uint32, create bool, sub ...string) (*UserDir, error) {
	if !filepath.IsAbs(home) {
		return nil, fmt.Errorf("home %q is not an absolute path", home)
	}
	parent, err := unix.Open(filepath.Dir(home), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("failed to open %s: %w", filepath.Dir(home), err)
	}
	cur := &UserDir{fd: parent, path: filepath.Dir(home), uid: uid, gid: gid}
	for i, name := range append([]string{filepath.Base(home)}, sub...) {
		next, err := cur.openChild(name, perm, create && i > 0)
		cur.Close()
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// OpenChild opens the directory name in d, which must be a real directory
// owned by the user or root, creating it (mode perm, owned by the user)
// when create is set and it is missing. A missing one is an error
// wrapping unix.ENOENT.
func (d *UserDir) OpenChild(name string, perm uint32, create bool) (*UserDir, error) {
	return d.openChild(name, perm, create)
}

func (d *UserDir) openChild(name string, perm uint32, create bool) (*UserDir, error) {
	p := filepath.Join(d.path, name)
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err := unix.Mkdirat(d.fd, name, perm); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("failed to create %s: %w", p, err)
		}
		fd, err = unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			if err := unix.Fchown(fd, d.uid, d.gid); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("failed to set the owner of %s: %w", p, err)
			}
			if err := unix.Fchmod(fd, perm); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("failed to set the mode of %s: %w", p, err)
			}
		}
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return nil, fmt.Errorf("refusing %s: %w or not a directory", p, safefile.ErrSymlink)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to open %s: %w", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("failed to check %s: %w", p, err)
	}
	if int(st.Uid) != d.uid && st.Uid != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("refusing %s: owned by uid %d, not the user (%d) or root", p, st.Uid, d.uid)
	}
	return &UserDir{fd: fd, path: p, uid: d.uid, gid: d.gid}, nil
}

// ReadFile reads name in d. A missing file reads as nil, nil. A link of
// either kind, or something other than a regular file, is refused.
func (d *UserDir) ReadFile(name string) ([]byte, error) {
	p := filepath.Join(d.path, name)
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("refusing %s: %w", p, safefile.ErrSymlink)
	case err != nil:
		return nil, fmt.Errorf("failed to read %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("failed to check %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("refusing %s: not a regular file", p)
	}
	// A hard link to a file the user could not read (say /etc/shadow)
	// would otherwise be copied into a file the user owns.
	if st.Nlink != 1 {
		return nil, fmt.Errorf("refusing %s: it has %d hard links", p, st.Nlink)
	}
	if int(st.Uid) != d.uid && st.Uid != 0 {
		return nil, fmt.Errorf("refusing %s: owned by uid %d, not the user (%d) or root", p, st.Uid, d.uid)
	}
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// WriteFile replaces name in d atomically: a temporary file in d, owned by
// the user with mode perm, fsynced, renamed over name, d fsynced.
func (d *UserDir) WriteFile(name string, data []byte, perm uint32) error {
	p := filepath.Join(d.path, name)
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := "." + name + ".sera-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(d.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("failed to write %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	ok := false
	defer func() {
		f.Close()
		if !ok {
			unix.Unlinkat(d.fd, tmp, 0)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("failed to write %s: %w", p, err)
	}
	if err := unix.Fchown(fd, d.uid, d.gid); err != nil {
		return fmt.Errorf("failed to set the owner of %s: %w", p, err)
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("failed to set the mode of %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("failed to write %s: %w", p, err)
	}
	if err := unix.Renameat(d.fd, tmp, d.fd, name); err != nil {
		return fmt.Errorf("failed to write %s: %w", p, err)
	}
	ok = true
	return unix.Fsync(d.fd)
}

// FixMode makes d's mode perm and owner the user (e.g. an existing .ssh
// that is group-writable, which sshd's StrictModes would refuse anyway).
func (d *UserDir) FixMode(perm uint32) error {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return err
	}
	if st.Mode&0o7777 != perm {
		if err := unix.Fchmod(d.fd, perm); err != nil {
			return fmt.Errorf("failed to set the mode of %s: %w", d.path, err)
		}
	}
	if int(st.Uid) != d.uid || int(st.Gid) != d.gid {
		if err := unix.Fchown(d.fd, d.uid, d.gid); err != nil {
			return fmt.Errorf("failed to set the owner of %s: %w", d.path, err)
		}
	}
	return nil
}
