package hostkeys

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"
)

// File is a parsed known_hosts file.
type File struct {
	Before, After []string // the admin's own lines, verbatim
	afterLine     int      // line number of After[0] in the file read
	Hosts         []*Host
	hadBlock      bool
	// Bad are managed lines that could not be read; they are dropped at
	// the next write.
	Bad []string
}

// ParseFile reads a known_hosts file. A damaged block (a start
// without an end, or two blocks) is an error: sera cannot tell the
// admin's lines from its own, and writes nothing.
func ParseFile(b []byte) (*File, error) {
	f := &File{}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return f, nil
	}
	in, start := false, 0
	byName := map[string]*Host{}
	for i, line := range strings.Split(s, "\n") {
		n := i + 1
		marker := strings.TrimRight(line, " \t\r")
		switch {
		case marker == Begin && f.hadBlock:
			return nil, fmt.Errorf("line %d: a second start of sera's block (the first is on line %d); fix the file by hand", n, start)
		case marker == Begin:
			in, f.hadBlock, start = true, true, n
		case marker == End && !in:
			return nil, fmt.Errorf("line %d: the end of sera's block without its start; fix the file by hand", n)
		case marker == End:
			in, f.afterLine = false, n+1
		case in:
			f.addManagedLine(byName, n, line)
		case f.hadBlock:
			f.After = append(f.After, line)
		default:
			f.Before = append(f.Before, line)
		}
	}
	if in {
		return nil, fmt.Errorf("sera's block starting on line %d has no end line (%q); fix the file by hand", start, End)
	}
	for _, e := range byName {
		SortNames(e.Aliases)
		sort.SliceStable(e.Keys, func(i, j int) bool { return TypeRank(e.Keys[i].Type()) < TypeRank(e.Keys[j].Type()) })
		f.Hosts = append(f.Hosts, e)
	}
	f.sortHosts()
	return f, nil
}

func (f *File) addManagedLine(byName map[string]*Host, n int, line string) {
	t := strings.TrimSpace(line)
	if t == "" || strings.HasPrefix(t, "#") {
		return
	}
	name, aliases, key, err := ParseEntry(t)
	if err != nil {
		f.Bad = append(f.Bad, fmt.Sprintf("line %d: %v", n, err))
		return
	}
	e := byName[name]
	if e == nil {
		e = &Host{Name: name}
		byName[name] = e
	}
	for _, a := range aliases {
		if owner := f.ownerIn(byName, a); owner != nil && owner != e {
			f.Bad = append(f.Bad, fmt.Sprintf("line %d: %s is already a name of %s", n, a, owner.Name))
			continue
		}
		if !slices.Contains(e.Aliases, a) {
			e.Aliases = append(e.Aliases, a)
		}
	}
	if old := e.Key(key.Type()); old != nil {
		if !SameKey(old, key) {
			f.Bad = append(f.Bad, fmt.Sprintf("line %d: a second %s key for %s", n, key.Type(), name))
		}
		return
	}
	e.Keys = append(e.Keys, key)
}

func (f *File) ownerIn(byName map[string]*Host, n string) *Host {
	if e := byName[n]; e != nil {
		return e
	}
	for _, e := range byName {
		if slices.Contains(e.Aliases, n) {
			return e
		}
	}
	return nil
}

func (f *File) sortHosts() {
	sort.Slice(f.Hosts, func(i, j int) bool { return f.Hosts[i].Name < f.Hosts[j].Name })
}

func (f *File) Bytes() []byte {
	var lines []string
	lines = append(lines, f.Before...)
	if len(f.Hosts) > 0 {
		lines = append(lines, Begin)
		for _, e := range f.Hosts {
			lines = append(lines, e.Lines()...)
		}
		lines = append(lines, End)
	}
	lines = append(lines, f.After...)
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

func (f *File) Clone() *File {
	c := &File{Before: slices.Clone(f.Before), After: slices.Clone(f.After), afterLine: f.afterLine,
		hadBlock: f.hadBlock, Bad: slices.Clone(f.Bad)}
	for _, e := range f.Hosts {
		c.Hosts = append(c.Hosts, e.Clone())
	}
	return c
}

func (f *File) Host(name string) *Host {
	for _, e := range f.Hosts {
		if e.Name == name {
			return e
		}
	}
	return nil
}

// Set makes e the managed entry of e.Name: exactly its keys, under its
// names. A name or address of e that another managed host had moves to
// e; a managed host's own name can never become an alias of another.
func (f *File) Set(e *Host) error {
	for _, o := range f.Hosts {
		if o.Name != e.Name && slices.Contains(e.Aliases, o.Name) {
			return fmt.Errorf("%s is a host sera keeps keys for; it cannot also be a name of %s (untrust %s first)", o.Name, e.Name, o.Name)
		}
	}
	claimed := e.Names()
	kept := f.Hosts[:0]
	for _, o := range f.Hosts {
		if o.Name == e.Name {
			continue
		}
		o.Aliases = slices.DeleteFunc(o.Aliases, func(a string) bool { return slices.Contains(claimed, a) })
		kept = append(kept, o)
	}
	f.Hosts = append(kept, e.Clone())
	f.sortHosts()
	return nil
}

// Remove drops name's managed entries, and name as an alias of any other
// managed host: sera no longer vouches for any key under it.
func (f *File) Remove(name string) {
	f.Hosts = slices.DeleteFunc(f.Hosts, func(e *Host) bool { return e.Name == name })
	for _, e := range f.Hosts {
		e.Aliases = slices.DeleteFunc(e.Aliases, func(a string) bool { return a == name })
	}
}

// Diff says what changes from before to after, host by host.
func Diff(before, after []*Host) []string {
	find := func(hs []*Host, name string) *Host {
		for _, e := range hs {
			if e.Name == name {
				return e
			}
		}
		return nil
	}
	var names []string
	for _, e := range append(slices.Clone(before), after...) {
		if !slices.Contains(names, e.Name) {
			names = append(names, e.Name)
		}
	}
	sort.Strings(names)
	var d []string
	for _, n := range names {
		b, a := find(before, n), find(after, n)
		switch {
		case b == nil:
			d = append(d, fmt.Sprintf("trust %s as %s: %s", n, strings.Join(a.Names(), ","), DescribeKeys(a.Keys)))
		case a == nil:
			d = append(d, fmt.Sprintf("untrust %s: %s", n, DescribeKeys(b.Keys)))
		case !a.SameAs(b):
			for _, t := range KeyTypes {
				bk, ak := b.Key(t), a.Key(t)
				switch {
				case bk == nil && ak != nil:
					d = append(d, fmt.Sprintf("%s: add %s %s", n, t, ssh.FingerprintSHA256(ak)))
				case bk != nil && ak == nil:
					d = append(d, fmt.Sprintf("%s: remove %s %s", n, t, ssh.FingerprintSHA256(bk)))
				case bk != nil && !SameKey(bk, ak):
					d = append(d, fmt.Sprintf("%s: replace %s %s with %s", n, t, ssh.FingerprintSHA256(bk), ssh.FingerprintSHA256(ak)))
				}
			}
			if !slices.Equal(a.Aliases, b.Aliases) {
				d = append(d, fmt.Sprintf("%s: names %s (were %s)", n, strings.Join(a.Names(), ","), strings.Join(b.Names(), ",")))
			}
		}
	}
	return d
}

// OutsideWarnings finds the admin's own lines that trust another key of a
// type sera manages for one of its names: ssh accepts either key, so a
// re-keyed host's old key would still be trusted through them.
func (f *File) OutsideWarnings(file string) []string {
	var out []string
	check := func(n int, line string) {
		marker, hosts, key, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err != nil || marker != "" {
			return
		}
		for _, e := range f.Hosts {
			mk := e.Key(key.Type())
			if mk == nil || SameKey(mk, key) {
				continue
			}
			for _, name := range e.Names() {
				if hostPatternsMatch(hosts, name) {
					out = append(out, fmt.Sprintf("%s line %d, outside sera's block, trusts another %s key for %s (%s); ssh accepts it too: remove that line if it is stale",
						file, n, key.Type(), name, ssh.FingerprintSHA256(key)))
					return
				}
			}
		}
	}
	for i, line := range f.Before {
		check(i+1, line)
	}
	for i, line := range f.After {
		check(f.afterLine+i, line)
	}
	return out
}

// hostPatternsMatch reports whether a known_hosts host field names name
// exactly, in plain text or hashed (|1|salt|hash). Wildcard patterns are
// not followed.
func hostPatternsMatch(patterns []string, name string) bool {
	for _, p := range patterns {
		if strings.EqualFold(p, name) {
			return true
		}
		if rest, ok := strings.CutPrefix(p, "|1|"); ok {
			salt64, hash64, ok := strings.Cut(rest, "|")
			salt, err1 := base64.StdEncoding.DecodeString(salt64)
			hash, err2 := base64.StdEncoding.DecodeString(hash64)
			if !ok || err1 != nil || err2 != nil {
				continue
			}
			m := hmac.New(sha1.New, salt)
			m.Write([]byte(name))
			if hmac.Equal(m.Sum(nil), hash) {
				return true
			}
		}
	}
	return false
}
