package sshkeys

import (
	"strings"

	"golang.org/x/crypto/ssh"
)

// File is a parsed authorized_keys file: the user's own lines before and
// after sera's block, and the keys in it.
type File struct {
	Before, After []string // the user's own lines
	Managed       []*Key
	hadBlock      bool
}

// Parse parses an authorized_keys file. It never fails: a line sera
// cannot parse is the user's and is kept.
func Parse(b []byte) *File {
	ak := &File{}
	if len(b) == 0 {
		return ak
	}
	// A file of "\n" is one empty line, kept as such, so that writing what
	// was parsed and parsing it again gives the same file.
	s := strings.TrimSuffix(string(b), "\n")
	in := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case !in && line == BlockBegin && !ak.hadBlock:
			in, ak.hadBlock = true, true
		case in && line == BlockEnd:
			in = false
		case in:
			disabled := strings.HasPrefix(line, LockedPrefix)
			pub, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimPrefix(line, LockedPrefix)))
			if err == nil {
				ak.Managed = append(ak.Managed, &Key{Key: pub, Comment: comment, Options: opts, Disabled: disabled})
			}
		case ak.hadBlock:
			ak.After = append(ak.After, line)
		default:
			ak.Before = append(ak.Before, line)
		}
	}
	if in {
		// A begin marker with no end (a hand edit): sera cannot tell its
		// keys from the user's, so every line is the user's, and only the
		// dangling marker goes.
		own := &File{}
		for _, line := range strings.Split(s, "\n") {
			if line != BlockBegin {
				own.Before = append(own.Before, line)
			}
		}
		return own
	}
	return ak
}

// Bytes is the file as written: the block only if it holds keys.
func (ak *File) Bytes() []byte {
	var lines []string
	lines = append(lines, ak.Before...)
	if len(ak.Managed) > 0 {
		lines = append(lines, BlockBegin)
		for _, k := range ak.Managed {
			lines = append(lines, k.Line())
		}
		lines = append(lines, BlockEnd)
	}
	lines = append(lines, ak.After...)
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// OwnKeys are the keys on the user's own lines.
func (ak *File) OwnKeys() []*Key {
	var out []*Key
	for _, line := range append(append([]string{}, ak.Before...), ak.After...) {
		if pub, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
			out = append(out, &Key{Key: pub, Comment: comment, Options: opts})
		}
	}
	return out
}

// Clone is a deep copy of ak, to edit while ak stays the state on disk.
func (ak *File) Clone() *File {
	c := &File{Before: append([]string{}, ak.Before...), After: append([]string{}, ak.After...), hadBlock: ak.hadBlock}
	for _, k := range ak.Managed {
		kk := *k
		c.Managed = append(c.Managed, &kk)
	}
	return c
}

// DisableNew disables the managed keys of after that before did not have,
// and reports whether there were any: keys added to a locked account must
// not open it.
func DisableNew(before, after *File) bool {
	n := 0
	for _, k := range after.Managed {
		if Find(before.Managed, k) == nil && !k.Disabled {
			k.Disabled = true
			n++
		}
	}
	return n > 0
}
