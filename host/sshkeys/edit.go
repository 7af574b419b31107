package sshkeys

import (
	"fmt"
	"io"
	"strings"
)

// The edits of 'sera key add', 'remove' and 'sync'. Each changes ak and
// returns what it did, one phrase per key, for the plan's step; facts
// about keys left alone go to out.

// Add adds keys to sera's block; a key there already gets the new options
// and comment; a key on the user's own lines is left as it is.
func Add(ak *File, keys []*Key, out io.Writer) []string {
	var did []string
	for _, k := range keys {
		if m := Find(ak.Managed, k); m != nil {
			if strings.Join(m.Options, ",") != strings.Join(k.Options, ",") || m.Comment != k.Comment {
				m.Options, m.Comment = k.Options, k.Comment
				did = append(did, "update "+k.Describe())
			}
			continue
		}
		if Find(ak.OwnKeys(), k) != nil {
			fmt.Fprintf(out, "key %s is already in the file, not added by sera; left as it is\n", k.Fingerprint())
			continue
		}
		ak.Managed = append(ak.Managed, k)
		did = append(did, "add "+k.Describe())
	}
	return did
}

// Remove removes from sera's block each key given as a key line or a
// SHA256: fingerprint (the arguments of 'sera key remove', already
// checked); the user's own keys are never removed.
func Remove(ak *File, args []string, out io.Writer) []string {
	var did []string
	for _, a := range args {
		match := func(k *Key) bool { return k.Fingerprint() == a }
		fp := a
		if !strings.HasPrefix(a, "SHA256:") {
			want, _ := ParseArg(a, "")
			match, fp = want.Same, want.Fingerprint()
		}
		kept := ak.Managed[:0]
		found := false
		for _, k := range ak.Managed {
			if match(k) {
				found = true
				did = append(did, "remove "+k.Describe())
				continue
			}
			kept = append(kept, k)
		}
		ak.Managed = kept
		if !found {
			for _, k := range ak.OwnKeys() {
				if match(k) {
					fmt.Fprintf(out, "key %s was not added by sera; left as it is (use 'key sync --exclusive' to replace the whole file)\n", k.Fingerprint())
					found = true
				}
			}
		}
		if !found {
			fmt.Fprintf(out, "key %s already absent\n", fp)
		}
	}
	return did
}

// Sync makes sera's block exactly keys; with exclusive the user's own
// lines go too.
func Sync(ak *File, keys []*Key, exclusive bool, out io.Writer) []string {
	var want []*Key
	for _, k := range keys {
		if Find(want, k) != nil {
			continue
		}
		// As with Add: a key on the user's own line is left as it is,
		// not copied into the block without its options (sshd would
		// accept either line).
		if !exclusive && Find(ak.Managed, k) == nil && Find(ak.OwnKeys(), k) != nil {
			fmt.Fprintf(out, "key %s is already in the file, not added by sera; left as it is\n", k.Fingerprint())
			continue
		}
		want = append(want, k)
	}
	var did []string
	for _, k := range ak.Managed {
		if Find(want, k) == nil {
			did = append(did, "remove "+k.Describe())
		}
	}
	for _, k := range want {
		m := Find(ak.Managed, k)
		if m != nil {
			// A key disabled by 'user lock' stays disabled until
			// 'user unlock'.
			k.Disabled = m.Disabled
		}
		if m == nil {
			did = append(did, "add "+k.Describe())
		} else if m.Line() != k.Line() {
			did = append(did, "update "+k.Describe())
		}
	}
	ak.Managed = want
	if exclusive {
		for _, k := range ak.OwnKeys() {
			did = append(did, "remove "+k.Describe()+", not added by sera")
		}
		ak.Before, ak.After = nil, nil
	}
	return did
}

// SetDisabled disables (or enables) every managed key and returns what it
// did: 'user lock' and 'user unlock'.
func SetDisabled(ak *File, disabled bool) []string {
	verb := "enable "
	if disabled {
		verb = "disable "
	}
	var what []string
	for _, k := range ak.Managed {
		if k.Disabled != disabled {
			k.Disabled = disabled
			what = append(what, verb+k.Describe())
		}
	}
	return what
}
