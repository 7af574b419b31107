package sera

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sera-dev/sera/crypto"
)

// AllowAll in a client's allow list lets it run every command.
const AllowAll = "*"

// PingCommand is the one command every known client may run.
const PingCommand = "ping"

// KnownClient is one line of a watcher's known_clients file.
type KnownClient struct {
	Key  *crypto.PublicKey
	Name string
	// Allow lists the commands the client may run, as command paths
	// ("user", "user add") or AllowAll. Ping is always allowed.
	Allow []string
	// Account is the Unix account this client belongs to (account=), for
	// self-service grants; empty if it is bound to none.
	Account string
	// Added is when this key was last trusted or its grants changed
	// (added=), in UTC to the second; zero in files written before it
	// existed. A request issued before it was signed by a key the watcher
	// did not trust with these grants, and never runs.
	Added time.Time
}

// Allows reports whether c may run command (a space-separated path such
// as "user add"): the path itself, any of its parents, or AllowAll.
func (c *KnownClient) Allows(command string) bool {
	if command == PingCommand {
		return true
	}
	for _, a := range c.Allow {
		if a == AllowAll || a == command || strings.HasPrefix(command, a+" ") {
			return true
		}
	}
	return false
}

// FormatAllow writes an allow list the way the file and --allow spell it:
// comma-separated, with '.' between the words of a path ("user.add").
func FormatAllow(allow []string) string {
	out := make([]string, len(allow))
	for i, a := range allow {
		out[i] = strings.ReplaceAll(a, " ", ".")
	}
	return strings.Join(out, ",")
}

// ParseAllow reads an allow list as FormatAllow writes it, in a normal
// form: no duplicates, and no "ping", which every client may run anyway,
// so that equal permissions compare equal.
func ParseAllow(s string) []string {
	var out []string
	for _, a := range SplitList(s) {
		a = strings.ReplaceAll(a, ".", " ")
		if a != PingCommand && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// KnownClients is the contents of a known_clients file.
type KnownClients struct {
	Clients []*KnownClient
}

// ParseKnownClients parses a known_clients file: one client a line,
// "PUBKEY NAME [ALLOW [account=USER] [added=RFC3339]]", '#' comments.
func ParseKnownClients(b []byte) (*KnownClients, error) {
	kc := &KnownClients{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("known_clients line %d: want PUBKEY NAME [ALLOW [account=USER] [added=TIME]]", i+1)
		}
		key, err := crypto.ParsePublicKey(f[0])
		if err != nil {
			return nil, fmt.Errorf("known_clients line %d: %w", i+1, err)
		}
		if err := CheckName(f[1]); err != nil {
			return nil, fmt.Errorf("known_clients line %d: %w", i+1, err)
		}
		c := &KnownClient{Key: key, Name: f[1]}
		if len(f) >= 3 {
			c.Allow = ParseAllow(f[2])
		}
		if err := c.parseAttrs(f[min(len(f), 3):]); err != nil {
			return nil, fmt.Errorf("known_clients line %d: %w", i+1, err)
		}
		if kc.ByKey(key) != nil {
			return nil, fmt.Errorf("known_clients line %d: key of %s listed twice", i+1, f[1])
		}
		if kc.ByName(c.Name) != nil {
			return nil, fmt.Errorf("known_clients line %d: name %s used twice", i+1, f[1])
		}
		kc.Clients = append(kc.Clients, c)
	}
	return kc, nil
}

// parseAttrs reads the key=value fields after ALLOW; each may be given
// once, and an unknown one is an error rather than a grant silently lost.
func (c *KnownClient) parseAttrs(fields []string) error {
	seen := map[string]bool{}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return fmt.Errorf("want key=value after the allow list, not %q", f)
		}
		if seen[k] {
			return fmt.Errorf("%s= given twice", k)
		}
		seen[k] = true
		switch k {
		case "account":
			if !accountRE.MatchString(v) || len(v) > 32 || v == "root" {
				return fmt.Errorf("invalid account=%q: a regular user name (Debian's NAME_REGEX), not root", v)
			}
			c.Account = v
		case "added":
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return fmt.Errorf("invalid added=%q: want an RFC 3339 time", v)
			}
			c.Added = t.UTC()
		default:
			return fmt.Errorf("unknown field %q", f)
		}
	}
	return nil
}

// accountRE is Debian's NAME_REGEX for user names.
var accountRE = regexp.MustCompile(`^[a-z][-a-z0-9_]*$`)

// Bytes formats the file.
func (kc *KnownClients) Bytes() []byte {
	var b bytes.Buffer
	b.WriteString("# sera known_clients: PUBKEY NAME ALLOW [account=USER] [added=TIME] (commands, comma-separated; * for all; ping always)\n")
	for _, c := range kc.Clients {
		allow := FormatAllow(c.Allow)
		if allow == "" {
			allow = PingCommand
		}
		fmt.Fprintf(&b, "%s %s %s", c.Key, c.Name, allow)
		if c.Account != "" {
			fmt.Fprintf(&b, " account=%s", c.Account)
		}
		if !c.Added.IsZero() {
			fmt.Fprintf(&b, " added=%s", c.Added.UTC().Format(time.RFC3339))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ByKey returns the client with key, or nil.
func (kc *KnownClients) ByKey(key *crypto.PublicKey) *KnownClient {
	for _, c := range kc.Clients {
		if c.Key.Equal(key) {
			return c
		}
	}
	return nil
}

// ByName returns the client called name, or nil.
func (kc *KnownClients) ByName(name string) *KnownClient {
	for _, c := range kc.Clients {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// KnownWatcher is one line of a client's known_watchers file.
type KnownWatcher struct {
	Name   string
	Key    *crypto.PublicKey
	Groups []string
	Addrs  []string
}

// KnownWatchers is the contents of a known_watchers file.
type KnownWatchers struct {
	Watchers []*KnownWatcher
}

// ParseKnownWatchers parses a known_watchers file: one watcher a line,
// "NAME PUBKEY [groups=G,…] [addrs=A,…]", '#' comments.
func ParseKnownWatchers(b []byte) (*KnownWatchers, error) {
	kw := &KnownWatchers{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("known_watchers line %d: want NAME PUBKEY [groups=…] [addrs=…]", i+1)
		}
		if err := CheckName(f[0]); err != nil {
			return nil, fmt.Errorf("known_watchers line %d: %w", i+1, err)
		}
		key, err := crypto.ParsePublicKey(f[1])
		if err != nil {
			return nil, fmt.Errorf("known_watchers line %d: %w", i+1, err)
		}
		w := &KnownWatcher{Name: f[0], Key: key}
		for _, opt := range f[2:] {
			k, v, _ := strings.Cut(opt, "=")
			switch k {
			case "groups":
				w.Groups = SplitList(v)
				if err := checkGroups(v); err != nil {
					return nil, fmt.Errorf("known_watchers line %d: %w", i+1, err)
				}
			case "addrs":
				w.Addrs = SplitList(v)
			default:
				return nil, fmt.Errorf("known_watchers line %d: unknown field %q", i+1, opt)
			}
		}
		if kw.ByName(w.Name) != nil {
			return nil, fmt.Errorf("known_watchers line %d: name %s used twice", i+1, w.Name)
		}
		// The client tells watchers apart by key: one key under two
		// names would credit one watcher's reply to the other.
		if other := kw.ByKey(key); other != nil {
			return nil, fmt.Errorf("known_watchers line %d: key of %s is already %s's", i+1, w.Name, other.Name)
		}
		kw.Watchers = append(kw.Watchers, w)
	}
	return kw, nil
}

// Bytes formats the file.
func (kw *KnownWatchers) Bytes() []byte {
	var b bytes.Buffer
	b.WriteString("# sera known_watchers: NAME PUBKEY [groups=G,…] [addrs=A,…]\n")
	for _, w := range kw.Watchers {
		fmt.Fprintf(&b, "%s %s", w.Name, w.Key)
		if len(w.Groups) > 0 {
			fmt.Fprintf(&b, " groups=%s", strings.Join(w.Groups, ","))
		}
		if len(w.Addrs) > 0 {
			fmt.Fprintf(&b, " addrs=%s", strings.Join(w.Addrs, ","))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ByName returns the watcher called name, or nil.
func (kw *KnownWatchers) ByName(name string) *KnownWatcher {
	for _, w := range kw.Watchers {
		if w.Name == name {
			return w
		}
	}
	return nil
}

// ByKey returns the watcher with key, or nil.
func (kw *KnownWatchers) ByKey(key *crypto.PublicKey) *KnownWatcher {
	for _, w := range kw.Watchers {
		if w.Key.Equal(key) {
			return w
		}
	}
	return nil
}

// HasGroup reports whether w is in group g.
func (w *KnownWatcher) HasGroup(g string) bool { return slices.Contains(w.Groups, g) }

// ReadKnownClients reads a known_clients file; a missing file is empty.
func ReadKnownClients(path string) (*KnownClients, error) {
	b, err := ReadFileNoFollow(path)
	if errors.Is(err, os.ErrNotExist) {
		return &KnownClients{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read known clients: %w", err)
	}
	return ParseKnownClients(b)
}

// ReadKnownWatchers reads a known_watchers file; a missing file is empty.
func ReadKnownWatchers(path string) (*KnownWatchers, error) {
	b, err := ReadFileNoFollow(path)
	if errors.Is(err, os.ErrNotExist) {
		return &KnownWatchers{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read known watchers: %w", err)
	}
	return ParseKnownWatchers(b)
}

// ClientFile is a known_clients file that a running watcher consults for
// every request. It re-reads the file whenever it changed on disk, so
// "sera clients add/remove" take effect without a restart.
type ClientFile struct {
	Path string

	mu      sync.Mutex
	stamp   fileStamp
	clients *KnownClients
	err     error
}

type fileStamp struct {
	ino, size, mtime int64
	exists           bool
}

func statStamp(path string) (fileStamp, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	} else if err != nil {
		return fileStamp{}, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	s := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano(), exists: true}
	if st != nil {
		s.ino = int64(st.Ino)
	}
	return s, nil
}

// Lookup returns the known client with key, or nil. If the file cannot be
// read or parsed it fails closed: no client is known until it is fixed.
func (f *ClientFile) Lookup(key *crypto.PublicKey) (*KnownClient, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	stamp, err := statStamp(f.Path)
	if err != nil {
		return nil, fmt.Errorf("failed to check known clients: %w", err)
	}
	if f.clients == nil && f.err == nil || stamp != f.stamp {
		f.clients, f.err = ReadKnownClients(f.Path)
		f.stamp = stamp
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.clients.ByKey(key), nil
}
