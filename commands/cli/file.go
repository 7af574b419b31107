package cli

import (
	"io"
	"path/filepath"
	"strings"

	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// UpdateFile applies change to a trust file under a lock, writes it back
// atomically (0600) only if it changed, and prints change's message: two
// sera processes cannot lose each other's update, and a no-op writes
// nothing. An error of change is plan.Unchanged: nothing was written.
func UpdateFile[T interface{ Bytes() []byte }](path string, read func(string) (T, error), change func(T) (string, error), out io.Writer) error {
	return UpdateFileDry(path, read, change, out, false)
}

// UpdateFileDry is UpdateFile; with dryRun it writes nothing, and a
// change's message is said as what would be done ("would: …").
func UpdateFileDry[T interface{ Bytes() []byte }](path string, read func(string) (T, error), change func(T) (string, error), out io.Writer, dryRun bool) error {
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
		if dryRun {
			var b strings.Builder
			for _, l := range strings.SplitAfter(msg, "\n") {
				if l != "" {
					b.WriteString("would: " + l)
				}
			}
			_, err := io.WriteString(out, b.String())
			return err
		}
		if err := safefile.WriteAtomic(path, after, 0o600); err != nil {
			return err
		}
		plan.MarkChanged(out)
	}
	_, err = io.WriteString(out, msg)
	return err
}
