package safefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrSymlink is returned when sera would write through a symbolic link.
var ErrSymlink = errors.New("refusing to follow a symbolic link")

// WriteAtomic replaces path with data: a temporary file in the same
// directory is written, fsynced, given mode perm and renamed over path,
// and the directory is fsynced, so a reader sees the old or the new file,
// never a torn one. It refuses to write if path or its directory is a
// symbolic link: the rename would replace a link, and a hostile link in a
// user-writable directory must never redirect a root-owned write.
func WriteAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	if fi, err := os.Lstat(dir); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	} else if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("failed to write %s: %w: %s", path, ErrSymlink, dir)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("failed to write %s: %w", path, ErrSymlink)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	ok = true
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, so a rename or a new name in it survives a
// crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("failed to sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("failed to sync %s: %w", dir, err)
	}
	return nil
}

// ReadNoFollow reads path, refusing a symbolic link at path itself.
func ReadNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("failed to read %s: %w", path, ErrSymlink)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("failed to read %s: not a regular file", path)
	}
	return io.ReadAll(f)
}

// MkdirPrivate creates dir (and parents) with mode 0700 if it is missing,
// and refuses a symbolic link in its place.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("failed to use %s: %w", dir, ErrSymlink)
	}
	return nil
}

// Lock takes an exclusive advisory lock on path (created 0600 if
// missing) and returns the function that releases it. Read-modify-write
// updates of sera's files hold it, so a local command and a remote one
// cannot lose each other's change.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("failed to lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("failed to lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// TryLock is Lock without the wait: ok is false, and nothing held, when
// another process holds the lock.
func TryLock(path string) (unlock func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("failed to lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("failed to lock %s: %w", path, err)
	}
	return func() { f.Close() }, true, nil
}

// ErrInsecureMode is returned by CheckStrictModes.
var ErrInsecureMode = errors.New("insecure file mode or owner")

// CheckStrictModes refuses, as sshd's StrictModes does, files that someone
// other than root (or this process's user) could change: each path and
// every directory above it must be owned by root or the current user and
// not writable by group or others (a root-owned sticky directory such as
// /tmp excepted). Missing paths pass: they will be created private. The
// error names the file and the command that fixes it.
func CheckStrictModes(paths ...string) error {
	me := os.Geteuid()
	for _, p := range paths {
		p, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		for dir, first := p, true; ; first = false {
			if err := checkMode(dir, me, first); err != nil {
				return err
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return nil
}

func checkMode(p string, me int, leaf bool) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("failed to check %s: %w", p, err)
	}
	link := fi.Mode()&fs.ModeSymlink != 0
	if leaf && link {
		return fmt.Errorf("%w: %s is a symbolic link; sera's files must be the files themselves", ErrInsecureMode, p)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if int(st.Uid) != 0 && int(st.Uid) != me {
		return fmt.Errorf("%w: %s is owned by uid %d, so that user could change what this watcher trusts; run 'chown %d %s'", ErrInsecureMode, p, st.Uid, me, p)
	}
	if link {
		return nil // a link's own mode means nothing; its owner does
	}
	perm := fi.Mode().Perm()
	if perm&0o022 != 0 && !(fi.IsDir() && fi.Mode()&fs.ModeSticky != 0 && st.Uid == 0) {
		return fmt.Errorf("%w: %s is writable by group or others (mode %04o), so they could change what this watcher trusts; run 'chmod go-w %s'", ErrInsecureMode, p, perm, p)
	}
	return nil
}
