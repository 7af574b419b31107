package safefile_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sera-dev/sera/safefile"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// listDir returns the names in dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "known_clients")
	if err := safefile.WriteAtomic(path, []byte("one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := safefile.WriteAtomic(path, []byte("two\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "two\n" {
		t.Errorf("contents %q, %v", b, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	if names := listDir(t, dir); len(names) != 1 {
		t.Errorf("directory holds %q, want only the file", names)
	}
}

func TestWriteFileAtomicRefusesSymlinks(t *testing.T) {
	t.Parallel()
	t.Run("target", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		victim := filepath.Join(dir, "victim")
		writeFile(t, victim, "precious\n")
		link := filepath.Join(dir, "env")
		if err := os.Symlink(victim, link); err != nil {
			t.Fatal(err)
		}
		if err := safefile.WriteAtomic(link, []byte("evil\n"), 0o600); !errors.Is(err, safefile.ErrSymlink) {
			t.Errorf("write through a symlinked file: %v", err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
			t.Errorf("victim now %q", b)
		}
		if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("link replaced: %v", err)
		}
		if names := listDir(t, dir); len(names) != 2 {
			t.Errorf("directory holds %q: a temporary file was left", names)
		}
	})
	t.Run("directory", func(t *testing.T) {
		t.Parallel()
		base := t.TempDir()
		real := filepath.Join(base, "real")
		if err := os.Mkdir(real, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(base, "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		if err := safefile.WriteAtomic(filepath.Join(link, "env"), []byte("x\n"), 0o600); !errors.Is(err, safefile.ErrSymlink) {
			t.Errorf("write into a symlinked directory: %v", err)
		}
		if names := listDir(t, real); len(names) != 0 {
			t.Errorf("symlinked directory now holds %q", names)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		t.Parallel()
		if err := safefile.WriteAtomic(filepath.Join(t.TempDir(), "no", "env"), nil, 0o600); err == nil {
			t.Error("write into a missing directory succeeded")
		}
	})
	t.Run("target is a directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "env"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := safefile.WriteAtomic(filepath.Join(dir, "env"), []byte("x"), 0o600); err == nil {
			t.Error("replaced a directory")
		}
		if names := listDir(t, dir); len(names) != 1 {
			t.Errorf("directory holds %q: a temporary file was left", names)
		}
	})
}

func TestReadFileNoFollow(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "f"), "data")
	if b, err := safefile.ReadNoFollow(filepath.Join(dir, "f")); err != nil || string(b) != "data" {
		t.Errorf("read %q, %v", b, err)
	}
	if err := os.Symlink(filepath.Join(dir, "f"), filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	if _, err := safefile.ReadNoFollow(filepath.Join(dir, "l")); !errors.Is(err, safefile.ErrSymlink) {
		t.Errorf("read through a symlink: %v", err)
	}
	if _, err := safefile.ReadNoFollow(dir); err == nil {
		t.Error("read a directory")
	}
	if _, err := safefile.ReadNoFollow(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestMkdirPrivate(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	d := filepath.Join(base, "a", "b")
	if err := safefile.MkdirPrivate(d); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	if err := safefile.MkdirPrivate(d); err != nil {
		t.Errorf("existing directory: %v", err)
	}
	if err := os.Symlink(d, filepath.Join(base, "l")); err != nil {
		t.Fatal(err)
	}
	if err := safefile.MkdirPrivate(filepath.Join(base, "l")); !errors.Is(err, safefile.ErrSymlink) {
		t.Errorf("symlink: %v", err)
	}
}

func TestCheckStrictModes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "known_clients")
	if err := os.WriteFile(file, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := safefile.CheckStrictModes(file, filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("private files: %v", err)
	}
	for _, tt := range []struct {
		path string
		mode os.FileMode
		want string
	}{
		{file, 0o620, "writable by group or others (mode 0620)"},
		{file, 0o602, "run 'chmod go-w " + file + "'"},
		{dir, 0o770, dir + " is writable by group or others"},
	} {
		if err := os.Chmod(tt.path, tt.mode); err != nil {
			t.Fatal(err)
		}
		err := safefile.CheckStrictModes(file)
		if !errors.Is(err, safefile.ErrInsecureMode) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("mode %o of %s: %v, want %q", tt.mode, tt.path, err, tt.want)
		}
		os.Chmod(tt.path, map[bool]os.FileMode{true: 0o700, false: 0o600}[tt.path == dir])
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	if err := safefile.CheckStrictModes(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("symlink: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(file, 1234, 0); err != nil {
			t.Fatal(err)
		}
		if err := safefile.CheckStrictModes(file); err == nil || !strings.Contains(err.Error(), "owned by uid 1234") {
			t.Errorf("owned by another user: %v", err)
		}
		os.Chown(file, 0, 0)
	}
}
