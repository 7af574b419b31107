package sera

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
)

// AllowAll in a client's allow list lets it run every command.
const AllowAll = "*"

// PingCommand is the one command every known client may run.
const PingCommand = "ping"

// SelfGrant is the self-service grant: the key commands on the client's
// own Unix account (its account= binding), and nothing else.
const SelfGrant = "self"

// SelfCommands are the commands SelfGrant covers.
var SelfCommands = []string{"key add", "key remove", "key list", "key sync"}

// KnownClient is one line of a watcher's known_clients file.
type KnownClient struct {
	Key  *crypto.PublicKey
	Name string
	// Allow lists the client's grants in normal form (see ParseGrant):
	// command paths ("user", "user add"), scoped paths ("key(alice|bob)"),
	// SelfGrant or AllowAll. Ping is always allowed.
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

// Grant is one entry of an allow list: a command path, optionally
// narrowed to the subjects its scope names (accounts or groups, by name
// or glob; ports or port ranges).
type Grant struct {
	// Path is a command path ("user", "key add"), AllowAll or SelfGrant.
	Path string
	// Scope is empty for a grant on every subject; else the names or
	// path.Match globs (or ports, "N" or "N-M") it is narrowed to, sorted.
	Scope []string
}

// maxScopeValues bounds one grant's scope, so a file cannot make every
// check slow.
const maxScopeValues = 64

var (
	pathWordRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][-a-z]*$`) })
	// scopeNameRE is an account or group name (Debian's NAME_REGEX) or a
	// glob of one.
	scopeNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z*?\[][-a-z0-9_*?\[\]]*$`) })
	portRE      = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9]{1,5}(-[0-9]{1,5})?$`) })
)

// ParseGrant reads one grant as the file and --allow spell it: "user",
// "user.add", "key(alice|ext-*)", "allow(22|8000-8099)", "self" or "*".
// Which commands take which kind of scope is the host commands' to say;
// here a scope value must be a name, a glob of one, or a port range.
func ParseGrant(s string) (Grant, error) {
	p, scope, scoped := strings.Cut(s, "(")
	p = strings.ReplaceAll(p, ".", " ")
	g := Grant{Path: p}
	if p == "" {
		return g, fmt.Errorf("invalid grant %q: empty command", s)
	}
	if p != AllowAll {
		for _, w := range strings.Split(p, " ") {
			if !pathWordRE().MatchString(w) {
				return g, fmt.Errorf("invalid grant %q: want a command such as user or user.add", s)
			}
		}
	}
	if !scoped {
		return g, nil
	}
	if p == AllowAll || p == SelfGrant || p == PingCommand {
		return g, fmt.Errorf("invalid grant %q: %s takes no scope", s, p)
	}
	scope, ok := strings.CutSuffix(scope, ")")
	if !ok || scope == "" || strings.ContainsAny(scope, "()") {
		return g, fmt.Errorf("invalid grant %q: want COMMAND(VALUE|VALUE…)", s)
	}
	for _, v := range strings.Split(scope, "|") {
		switch {
		case portRE().MatchString(v):
			lo, hi, err := portRange(v)
			canon := strconv.Itoa(lo)
			if hi != lo || strings.Contains(v, "-") {
				canon += "-" + strconv.Itoa(hi)
			}
			if err != nil || lo > hi || canon != v {
				return g, fmt.Errorf("invalid grant %q: bad port range %q", s, v)
			}
		case scopeNameRE().MatchString(v) && len(v) <= 32:
			if _, err := path.Match(v, ""); err != nil {
				return g, fmt.Errorf("invalid grant %q: bad pattern %q", s, v)
			}
		default:
			return g, fmt.Errorf("invalid grant %q: %q is not a name, a glob of names or a port range", s, v)
		}
		if !slices.Contains(g.Scope, v) {
			g.Scope = append(g.Scope, v)
		}
	}
	if len(g.Scope) > maxScopeValues {
		return g, fmt.Errorf("invalid grant %q: more than %d values", s, maxScopeValues)
	}
	slices.Sort(g.Scope)
	return g, nil
}

// portRange reads "N" or "N-M".
func portRange(v string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(v, "-")
	if lo, err = strconv.Atoi(a); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(b); err != nil {
			return 0, 0, err
		}
	}
	if lo < 1 || hi > 65535 {
		return 0, 0, errors.New("port out of range")
	}
	return lo, hi, nil
}

// String is the grant's normal form with spaces in the path, as Allow
// holds it.
func (g Grant) String() string {
	if len(g.Scope) == 0 {
		return g.Path
	}
	return g.Path + "(" + strings.Join(g.Scope, "|") + ")"
}

// CoversPath reports whether g's path is command or one of its parents
// (AllowAll covers every command; SelfGrant the key commands).
func (g Grant) CoversPath(command string) bool {
	switch g.Path {
	case AllowAll:
		return true
	case SelfGrant:
		return slices.Contains(SelfCommands, command)
	}
	return g.Path == command || strings.HasPrefix(command, g.Path+" ")
}

// ScopeMatches reports whether subject (an account or group name, or a
// port in decimal) is within g's scope. An unscoped grant matches every
// subject.
func (g Grant) ScopeMatches(subject string) bool {
	if len(g.Scope) == 0 {
		return true
	}
	for _, v := range g.Scope {
		if portRE().MatchString(v) {
			lo, hi, err := portRange(v)
			p, perr := strconv.Atoi(subject)
			if err == nil && perr == nil && strconv.Itoa(p) == subject && p >= lo && p <= hi {
				return true
			}
			continue
		}
		if ok, _ := path.Match(v, subject); ok {
			return true
		}
	}
	return false
}

// Grants returns c's allow list parsed. Entries that do not parse (a file
// ParseKnownClients did not read) grant nothing.
func (c *KnownClient) Grants() []Grant {
	var out []Grant
	for _, a := range c.Allow {
		g, err := ParseGrant(strings.ReplaceAll(a, " ", "."))
		if err != nil {
			continue
		}
		if g.Path == SelfGrant {
			if c.Account == "" {
				continue
			}
			g.Scope = []string{c.Account}
		}
		out = append(out, g)
	}
	return out
}

// Allows reports whether c holds any grant on command (a space-separated
// path such as "user add"), scoped or not. Ping is always allowed. It is
// the first check; AllowsOn then checks the command's subjects.
func (c *KnownClient) Allows(command string) bool {
	if command == PingCommand {
		return true
	}
	for _, g := range c.Grants() {
		if g.CoversPath(command) {
			return true
		}
	}
	return false
}

// AllowsOn reports whether c may run command on subject: a grant on the
// command whose scope matches it, or an unscoped one.
func (c *KnownClient) AllowsOn(command, subject string) bool {
	for _, g := range c.Grants() {
		if g.CoversPath(command) && g.ScopeMatches(subject) {
			return true
		}
	}
	return false
}

// AllowsAll reports whether c holds an unscoped grant on command: it may
// run it on every subject.
func (c *KnownClient) AllowsAll(command string) bool {
	if command == PingCommand {
		return true
	}
	for _, g := range c.Grants() {
		if g.CoversPath(command) && len(g.Scope) == 0 {
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
// so that equal permissions compare equal. An entry that is not a valid
// grant is an error.
func ParseAllow(s string) ([]string, error) {
	var out []string
	for _, a := range SplitList(s) {
		g, err := ParseGrant(a)
		if err != nil {
			return nil, err
		}
		if n := g.String(); n != PingCommand && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
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
			if c.Allow, err = ParseAllow(f[2]); err != nil {
				return nil, fmt.Errorf("known_clients line %d: %w", i+1, err)
			}
		}
		if err := c.parseAttrs(f[min(len(f), 3):]); err != nil {
			return nil, fmt.Errorf("known_clients line %d: %w", i+1, err)
		}
		if slices.Contains(c.Allow, SelfGrant) && c.Account == "" {
			return nil, fmt.Errorf("known_clients line %d: grant self needs account=USER", i+1)
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
			if !accountRE().MatchString(v) || len(v) > 32 || v == "root" {
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
var accountRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][-a-z0-9_]*$`) })

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
				if err := CheckGroups(v); err != nil {
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
	b, err := safefile.ReadNoFollow(path)
	if errors.Is(err, os.ErrNotExist) {
		return &KnownClients{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read known clients: %w", err)
	}
	return ParseKnownClients(b)
}

// ReadKnownWatchers reads a known_watchers file; a missing file is empty.
func ReadKnownWatchers(path string) (*KnownWatchers, error) {
	b, err := safefile.ReadNoFollow(path)
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
	// StrictModes on every request, not only at start: a file made
	// writable to others while the watcher runs fails closed.
	if err := safefile.CheckStrictModes(f.Path); err != nil {
		return nil, err
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
