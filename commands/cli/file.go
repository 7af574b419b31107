package cli

import (
	"io"
	"path/filepath"

	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// UpdateFile applies change to a trust file under a lock, writes it back
// atomically (0600) only if it changed, and prints change's message: two
// sera processes cannot lose each other's update, and a no-op writes
// nothing. An error of change is plan.Unchanged: nothing was written.
func UpdateFile[T interface{ Bytes() []byte }](path string, read func(string) (T, error), change func(T) (string, error), out io.Writer) error {
	if err := safefile.MkdirPrivate(filepath.Dir(path)); err != nil {
		return err
	}
	unlock, err := safefile.Lock(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	v, err := read(path)
	if err != nil {
		return err
	}
	before := v.Bytes()
	msg, err := change(v)
	if err != nil {
		return plan.Unchanged(err)
	}
	if after := v.Bytes(); string(after) != string(before) {
		if err := safefile.WriteAtomic(path, after, 0o600); err != nil {
			return err
		}
		plan.MarkChanged(out)
	}
	_, err = io.WriteString(out, msg)
	return err
}
