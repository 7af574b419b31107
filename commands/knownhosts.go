package commands

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

// sera keeps the host keys it installs in a marked block of a known_hosts
// file (/etc/ssh/ssh_known_hosts on a host, ~/.ssh/known_hosts on the
// client); every other line is the admin's own and is kept verbatim. In
// the block, each host sera manages has one line per key type:
//
//	NAME[,ALIAS…] KEYTYPE BASE64
//
// NAME is what the host is managed under (the watcher's name); ALIASes are
// its other host names and addresses. A name or address belongs to at most
// one managed host. Entries are compared by host, type and key, never by
// text, so a second run with the same keys changes nothing.
const (
	khBegin = "# sera: host keys between these lines are managed by sera ('sera hostkey', 'sera known-hosts sync'); edits are overwritten"
	khEnd   = "# sera: end of sera's host keys"

	systemKnownHosts = "/etc/ssh/ssh_known_hosts"
	// minRSABits is the smallest RSA host key sera installs.
	minRSABits = 2048
)

// hostKeyTypes are the key types sera installs, in the order it writes
// them. Certificates, DSA and security-key types are never host keys it
// installs.
var hostKeyTypes = []string{
	ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSA,
}

// parseHostName checks one host name or address as sera writes it into a
// known_hosts file and returns its canonical form: a lower-case RFC 1123
// host name, or an IP address as netip prints it. Wildcards, negations,
// hashed names and [host]:port forms are refused: sera writes only names
// it can compare.
func parseHostName(s string) (string, error) {
	switch {
	case s == "":
		return "", cli.UsageErr("empty host name")
	case strings.ContainsAny(s, "*?!"):
		return "", cli.UsageErr("invalid host name %q: wildcards and negations are not accepted; give each name", s)
	case strings.HasPrefix(s, "|"):
		return "", cli.UsageErr("invalid host name %q: hashed names are not accepted; give the name itself", s)
	case strings.HasPrefix(s, "["):
		return "", cli.UsageErr("invalid host name %q: [host]:port is not supported; sera's entries are for port 22", s)
	}
	if a, err := netip.ParseAddr(s); err == nil {
		switch {
		case a.Zone() != "":
			return "", cli.UsageErr("invalid address %q: a zone (%%%s) is not accepted", s, a.Zone())
		case a.Is4In6():
			return "", cli.UsageErr("invalid address %q: give the IPv4 address %s", s, a.Unmap())
		case a.IsUnspecified(), a.IsMulticast():
			return "", cli.UsageErr("invalid address %q: not a host's address", s)
		}
		return a.String(), nil
	}
	if strings.Contains(s, ":") {
		return "", cli.UsageErr("invalid host name %q: not a host name or IP address", s)
	}
	name := strings.ToLower(s)
	if len(name) > 253 {
		return "", cli.UsageErr("invalid host name %q: longer than 253 characters", abbreviate(s))
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' ||
			strings.IndexFunc(l, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') }) >= 0 {
			return "", cli.UsageErr("invalid host name %q: use letters, digits and '-' in dot-separated labels (RFC 1123), or an IP address", abbreviate(s))
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		return "", cli.UsageErr("invalid host name %q: not an IP address, and a host name's last label is not all digits", s)
	}
	return name, nil
}

// parseHostList parses "NAME[,ALIAS…]".
func parseHostList(s string) (name string, aliases []string, err error) {
	for i, part := range strings.Split(s, ",") {
		n, err := parseHostName(part)
		if err != nil {
			return "", nil, err
		}
		if i == 0 {
			name = n
		} else if n != name && !slices.Contains(aliases, n) {
			aliases = append(aliases, n)
		}
	}
	return name, aliases, nil
}

// checkHostKey refuses keys sera does not install as host keys.
func checkHostKey(k ssh.PublicKey) error {
	if _, ok := k.(*ssh.Certificate); ok {
		return cli.UsageErr("key %s is a certificate: sera installs plain host keys only (no @cert-authority)", ssh.FingerprintSHA256(k))
	}
	if !slices.Contains(hostKeyTypes, k.Type()) {
		return cli.UsageErr("key %s: type %s is not a host key type sera installs (%s)", ssh.FingerprintSHA256(k), k.Type(), strings.Join(hostKeyTypes, ", "))
	}
	if ck, ok := k.(ssh.CryptoPublicKey); ok {
		if rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey); ok && rk.N.BitLen() < minRSABits {
			return cli.UsageErr("key %s: a %d-bit RSA key is too weak (at least %d bits)", ssh.FingerprintSHA256(k), rk.N.BitLen(), minRSABits)
		}
	}
	return nil
}

// parseHostKeyArg parses one KEY argument: "KEYTYPE BASE64 [COMMENT]", as
// in an ssh_host_*_key.pub file.
func parseHostKeyArg(s string) (ssh.PublicKey, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, cli.UsageErr("invalid key: it spans several lines; give one key per argument")
	}
	if strings.HasPrefix(strings.TrimSpace(s), "@") {
		return nil, cli.UsageErr("invalid key %q: markers (@cert-authority, @revoked) are not accepted", abbreviate(s))
	}
	pub, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, cli.UsageErr("invalid key %q: %v", abbreviate(s), err)
	}
	if len(opts) > 0 {
		return nil, cli.UsageErr("invalid key %q: give it as 'KEYTYPE BASE64' (%q before it is not part of a key)", abbreviate(s), strings.Join(opts, ","))
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, cli.UsageErr("invalid key: give one key per argument")
	}
	return pub, checkHostKey(pub)
}

// parseKnownHostsEntry parses one known_hosts line as sera writes them:
// "NAME[,ALIAS…] KEYTYPE BASE64", no marker, no hashed or wildcard names.
func parseKnownHostsEntry(s string) (name string, aliases []string, key ssh.PublicKey, err error) {
	if strings.ContainsAny(s, "\r\n") {
		return "", nil, nil, cli.UsageErr("invalid entry: it spans several lines; give one entry per argument")
	}
	marker, hosts, pub, _, rest, err := ssh.ParseKnownHosts([]byte(s))
	if errors.Is(err, io.EOF) {
		return "", nil, nil, cli.UsageErr("invalid entry %q: empty or a comment; want 'NAME[,ADDR…] KEYTYPE BASE64'", abbreviate(s))
	} else if err != nil {
		return "", nil, nil, cli.UsageErr("invalid entry %q: %v; want 'NAME[,ADDR…] KEYTYPE BASE64'", abbreviate(s), err)
	}
	if marker != "" {
		return "", nil, nil, cli.UsageErr("invalid entry %q: the @%s marker is not accepted", abbreviate(s), marker)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return "", nil, nil, cli.UsageErr("invalid entry: give one entry per argument")
	}
	if name, aliases, err = parseHostList(strings.Join(hosts, ",")); err != nil {
		return "", nil, nil, err
	}
	return name, aliases, pub, checkHostKey(pub)
}

func typeRank(t string) int { return slices.Index(hostKeyTypes, t) }

func sameKey(a, b ssh.PublicKey) bool { return bytes.Equal(a.Marshal(), b.Marshal()) }

func keyText(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }

// khHost is one managed host: its keys, one per type, under its name and
// aliases.
type khHost struct {
	name    string
	aliases []string
	keys    []ssh.PublicKey
}

// newKHHost checks and normalizes an entry: aliases without the name and
// without repeats, in a fixed order; keys one per type, in hostKeyTypes
// order.
func newKHHost(name string, aliases []string, keys []ssh.PublicKey) (*khHost, error) {
	e := &khHost{name: name}
	for _, a := range aliases {
		if a != name && !slices.Contains(e.aliases, a) {
			e.aliases = append(e.aliases, a)
		}
	}
	sortHostNames(e.aliases)
	for _, k := range keys {
		if old := e.key(k.Type()); old != nil {
			if sameKey(old, k) {
				continue
			}
			return nil, cli.UsageErr("two %s keys for %s (%s, %s): give one key per type", k.Type(), name, ssh.FingerprintSHA256(old), ssh.FingerprintSHA256(k))
		}
		e.keys = append(e.keys, k)
	}
	sort.SliceStable(e.keys, func(i, j int) bool { return typeRank(e.keys[i].Type()) < typeRank(e.keys[j].Type()) })
	return e, nil
}

// sortHostNames orders names before addresses, each in their own order.
func sortHostNames(names []string) {
	sort.SliceStable(names, func(i, j int) bool {
		a, errA := netip.ParseAddr(names[i])
		b, errB := netip.ParseAddr(names[j])
		switch {
		case errA != nil && errB != nil:
			return names[i] < names[j]
		case errA != nil || errB != nil:
			return errA != nil
		default:
			return a.Less(b)
		}
	})
}

func (e *khHost) key(typ string) ssh.PublicKey {
	for _, k := range e.keys {
		if k.Type() == typ {
			return k
		}
	}
	return nil
}

func (e *khHost) names() []string { return append([]string{e.name}, e.aliases...) }

func (e *khHost) lines() []string {
	var out []string
	hosts := strings.Join(e.names(), ",")
	for _, k := range e.keys {
		out = append(out, hosts+" "+keyText(k))
	}
	return out
}

func (e *khHost) clone() *khHost {
	return &khHost{name: e.name, aliases: slices.Clone(e.aliases), keys: slices.Clone(e.keys)}
}

func (e *khHost) sameAs(o *khHost) bool {
	if e.name != o.name || !slices.Equal(e.aliases, o.aliases) || len(e.keys) != len(o.keys) {
		return false
	}
	for i := range e.keys {
		if !sameKey(e.keys[i], o.keys[i]) {
			return false
		}
	}
	return true
}

func describeKeys(keys []ssh.PublicKey) string {
	var d []string
	for _, k := range keys {
		d = append(d, k.Type()+" "+ssh.FingerprintSHA256(k))
	}
	return strings.Join(d, ", ")
}

// knownHostsFile is a parsed known_hosts file.
type knownHostsFile struct {
	before, after []string // the admin's own lines, verbatim
	afterLine     int      // line number of after[0] in the file read
	hosts         []*khHost
	hadBlock      bool
	// bad are managed lines that could not be read; they are dropped at
	// the next write.
	bad []string
}

// parseKnownHostsFile reads a known_hosts file. A damaged block (a start
// without an end, or two blocks) is an error: sera cannot tell the
// admin's lines from its own, and writes nothing.
func parseKnownHostsFile(b []byte) (*knownHostsFile, error) {
	f := &knownHostsFile{}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return f, nil
	}
	in, start := false, 0
	byName := map[string]*khHost{}
	for i, line := range strings.Split(s, "\n") {
		n := i + 1
		marker := strings.TrimRight(line, " \t\r")
		switch {
		case marker == khBegin && f.hadBlock:
			return nil, fmt.Errorf("line %d: a second start of sera's block (the first is on line %d); fix the file by hand", n, start)
		case marker == khBegin:
			in, f.hadBlock, start = true, true, n
		case marker == khEnd && !in:
			return nil, fmt.Errorf("line %d: the end of sera's block without its start; fix the file by hand", n)
		case marker == khEnd:
			in, f.afterLine = false, n+1
		case in:
			f.addManagedLine(byName, n, line)
		case f.hadBlock:
			f.after = append(f.after, line)
		default:
			f.before = append(f.before, line)
		}
	}
	if in {
		return nil, fmt.Errorf("sera's block starting on line %d has no end line (%q); fix the file by hand", start, khEnd)
	}
	for _, e := range byName {
		sortHostNames(e.aliases)
		sort.SliceStable(e.keys, func(i, j int) bool { return typeRank(e.keys[i].Type()) < typeRank(e.keys[j].Type()) })
		f.hosts = append(f.hosts, e)
	}
	f.sortHosts()
	return f, nil
}

func (f *knownHostsFile) addManagedLine(byName map[string]*khHost, n int, line string) {
	t := strings.TrimSpace(line)
	if t == "" || strings.HasPrefix(t, "#") {
		return
	}
	name, aliases, key, err := parseKnownHostsEntry(t)
	if err != nil {
		f.bad = append(f.bad, fmt.Sprintf("line %d: %v", n, err))
		return
	}
	e := byName[name]
	if e == nil {
		e = &khHost{name: name}
		byName[name] = e
	}
	for _, a := range aliases {
		if owner := f.ownerIn(byName, a); owner != nil && owner != e {
			f.bad = append(f.bad, fmt.Sprintf("line %d: %s is already a name of %s", n, a, owner.name))
			continue
		}
		if !slices.Contains(e.aliases, a) {
			e.aliases = append(e.aliases, a)
		}
	}
	if old := e.key(key.Type()); old != nil {
		if !sameKey(old, key) {
			f.bad = append(f.bad, fmt.Sprintf("line %d: a second %s key for %s", n, key.Type(), name))
		}
		return
	}
	e.keys = append(e.keys, key)
}

func (f *knownHostsFile) ownerIn(byName map[string]*khHost, n string) *khHost {
	if e := byName[n]; e != nil {
		return e
	}
	for _, e := range byName {
		if slices.Contains(e.aliases, n) {
			return e
		}
	}
	return nil
}

func (f *knownHostsFile) sortHosts() {
	sort.Slice(f.hosts, func(i, j int) bool { return f.hosts[i].name < f.hosts[j].name })
}

func (f *knownHostsFile) bytes() []byte {
	var lines []string
	lines = append(lines, f.before...)
	if len(f.hosts) > 0 {
		lines = append(lines, khBegin)
		for _, e := range f.hosts {
			lines = append(lines, e.lines()...)
		}
		lines = append(lines, khEnd)
	}
	lines = append(lines, f.after...)
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

func (f *knownHostsFile) clone() *knownHostsFile {
	c := &knownHostsFile{before: slices.Clone(f.before), after: slices.Clone(f.after), afterLine: f.afterLine,
		hadBlock: f.hadBlock, bad: slices.Clone(f.bad)}
	for _, e := range f.hosts {
		c.hosts = append(c.hosts, e.clone())
	}
	return c
}

func (f *knownHostsFile) host(name string) *khHost {
	for _, e := range f.hosts {
		if e.name == name {
			return e
		}
	}
	return nil
}

// set makes e the managed entry of e.name: exactly its keys, under its
// names. A name or address of e that another managed host had moves to
// e; a managed host's own name can never become an alias of another.
func (f *knownHostsFile) set(e *khHost) error {
	for _, o := range f.hosts {
		if o.name != e.name && slices.Contains(e.aliases, o.name) {
			return fmt.Errorf("%s is a host sera keeps keys for; it cannot also be a name of %s (untrust %s first)", o.name, e.name, o.name)
		}
	}
	claimed := e.names()
	kept := f.hosts[:0]
	for _, o := range f.hosts {
		if o.name == e.name {
			continue
		}
		o.aliases = slices.DeleteFunc(o.aliases, func(a string) bool { return slices.Contains(claimed, a) })
		kept = append(kept, o)
	}
	f.hosts = append(kept, e.clone())
	f.sortHosts()
	return nil
}

// remove drops name's managed entries, and name as an alias of any other
// managed host: sera no longer vouches for any key under it.
func (f *knownHostsFile) remove(name string) {
	f.hosts = slices.DeleteFunc(f.hosts, func(e *khHost) bool { return e.name == name })
	for _, e := range f.hosts {
		e.aliases = slices.DeleteFunc(e.aliases, func(a string) bool { return a == name })
	}
}

// diffHosts says what changes from before to after, host by host.
func diffHosts(before, after []*khHost) []string {
	find := func(hs []*khHost, name string) *khHost {
		for _, e := range hs {
			if e.name == name {
				return e
			}
		}
		return nil
	}
	var names []string
	for _, e := range append(slices.Clone(before), after...) {
		if !slices.Contains(names, e.name) {
			names = append(names, e.name)
		}
	}
	sort.Strings(names)
	var d []string
	for _, n := range names {
		b, a := find(before, n), find(after, n)
		switch {
		case b == nil:
			d = append(d, fmt.Sprintf("trust %s as %s: %s", n, strings.Join(a.names(), ","), describeKeys(a.keys)))
		case a == nil:
			d = append(d, fmt.Sprintf("untrust %s: %s", n, describeKeys(b.keys)))
		case !a.sameAs(b):
			for _, t := range hostKeyTypes {
				bk, ak := b.key(t), a.key(t)
				switch {
				case bk == nil && ak != nil:
					d = append(d, fmt.Sprintf("%s: add %s %s", n, t, ssh.FingerprintSHA256(ak)))
				case bk != nil && ak == nil:
					d = append(d, fmt.Sprintf("%s: remove %s %s", n, t, ssh.FingerprintSHA256(bk)))
				case bk != nil && !sameKey(bk, ak):
					d = append(d, fmt.Sprintf("%s: replace %s %s with %s", n, t, ssh.FingerprintSHA256(bk), ssh.FingerprintSHA256(ak)))
				}
			}
			if !slices.Equal(a.aliases, b.aliases) {
				d = append(d, fmt.Sprintf("%s: names %s (were %s)", n, strings.Join(a.names(), ","), strings.Join(b.names(), ",")))
			}
		}
	}
	return d
}

// outsideWarnings finds the admin's own lines that trust another key of a
// type sera manages for one of its names: ssh accepts either key, so a
// re-keyed host's old key would still be trusted through them.
func (f *knownHostsFile) outsideWarnings(file string) []string {
	var out []string
	check := func(n int, line string) {
		marker, hosts, key, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err != nil || marker != "" {
			return
		}
		for _, e := range f.hosts {
			mk := e.key(key.Type())
			if mk == nil || sameKey(mk, key) {
				continue
			}
			for _, name := range e.names() {
				if hostPatternsMatch(hosts, name) {
					out = append(out, fmt.Sprintf("%s line %d, outside sera's block, trusts another %s key for %s (%s); ssh accepts it too: remove that line if it is stale",
						file, n, key.Type(), name, ssh.FingerprintSHA256(key)))
					return
				}
			}
		}
	}
	for i, line := range f.before {
		check(i+1, line)
	}
	for i, line := range f.after {
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

// knownHostsPath is one known_hosts file sera edits.
type knownHostsPath struct {
	show string // the path shown to people
	path string // the path on this machine
	// mode of a new file, and of every write unless keepMode, where an
	// existing file keeps its own.
	mode     fs.FileMode
	keepMode bool
	dirMode  fs.FileMode // of a missing parent directory
}

func (k *knownHostsPath) read() ([]byte, fs.FileMode, error) {
	b, err := safefile.ReadNoFollow(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	} else if err != nil {
		return nil, 0, fmt.Errorf("failed to read %s: %w", k.show, err)
	}
	fi, err := os.Lstat(k.path)
	if err != nil {
		return nil, 0, err
	}
	return b, fi.Mode().Perm(), nil
}

// edit reads the file, lets change edit its managed entries, and plans
// the write when they differ; the plan runs (or with dryRun is shown).
// The caller holds the lock that serializes sera's edits of the file.
func (k *knownHostsPath) edit(ctx context.Context, out, errOut io.Writer, dryRun bool, noChange string, change func(*knownHostsFile) error) error {
	raw, mode, err := k.read()
	if err != nil {
		return fmt.Errorf("%w; nothing was changed", err)
	}
	before, err := parseKnownHostsFile(raw)
	if err != nil {
		return fmt.Errorf("%s: %w; nothing was changed", k.show, err)
	}
	after := before.clone()
	if err := change(after); err != nil {
		return fmt.Errorf("%w; nothing was changed", err)
	}
	for _, b := range before.bad {
		fmt.Fprintf(errOut, "warning: %s %s in sera's block, dropped at its next change\n", k.show, b)
	}
	for _, w := range after.outsideWarnings(k.show) {
		fmt.Fprintf(errOut, "warning: %s\n", w)
	}
	var p plan.Plan
	data := after.bytes()
	if !bytes.Equal(before.bytes(), data) {
		changes := diffHosts(before.hosts, after.hosts)
		if len(changes) == 0 {
			changes = []string{"drop unreadable lines in sera's block"}
		}
		verb, newMode := "write", k.mode
		if raw == nil && mode == 0 {
			verb = "create"
		} else if k.keepMode {
			newMode = mode
		}
		p.Add(fmt.Sprintf("%s %s (%04o): %s", verb, k.show, newMode, strings.Join(changes, "; ")), func(context.Context) error {
			cur, _, err := k.read()
			if err != nil {
				return err
			}
			if !bytes.Equal(cur, raw) {
				return fmt.Errorf("%s changed while sera was planning; nothing written, run the command again", k.show)
			}
			if err := os.MkdirAll(filepath.Dir(k.path), k.dirMode); err != nil {
				return err
			}
			return safefile.WriteAtomic(k.path, data, newMode)
		})
	}
	return p.Execute(ctx, out, dryRun, noChange)
}

// known-hosts sync, the client side.

type knownHostsSync struct {
	o       *cli.Options
	target  targetFlags
	timeout time.Duration
	dryRun  bool
	noLocal bool
	file    string
	accept  []string
	asJSON  bool
}

func newKnownHostsCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "known-hosts",
		Short: "Keep SSH known_hosts files in step with the watchers' host keys",
	})
	c.AddCommand(newKnownHostsSyncCmd(o))
	return c
}

func newKnownHostsSyncCmd(o *cli.Options) *cobra.Command {
	s := &knownHostsSync{o: o}
	c := &cobra.Command{
		Use:   "sync [--to HOST… | --group GROUP… | --all] [--accept HOST…]",
		Short: "Make every watcher trust every watcher's current SSH host keys",
		Long: `Collect the SSH host keys of the targeted watchers ('hostkey list') and
install the whole set on every one of them ('hostkey set', in sera's block
of /etc/ssh/ssh_known_hosts) and in this machine's ~/.ssh/known_hosts, so
that ssh between them and from here checks host keys with no prompt, and
a re-keyed host is trusted with its new keys only.

Each host's keys are trusted only for the names you gave it: its watcher
name, the addresses known_watchers gives it (addrs=, 'sera watchers add
--addr'), and NAME.DOMAIN when SERA_DOMAIN is set. Whatever else a host
says it is called (its hostname, its addresses) is shown and not trusted:
a host that could name itself would take over any name, fleet-wide.
--accept HOST trusts, once you have checked them, the names HOST reports
now, and records them in its addrs= in known_watchers, so that later syncs
keep them. A name is one host's only: one that is another watcher's name
or known_watchers gives another host is never a host's alias.

A host that does not answer is reported, and its entries are left as each
host (and ~/.ssh/known_hosts) has them: its keys are neither refreshed nor
removed. Lines outside sera's block are never changed.

Two requests in all, each sent to every host at once: one to collect, one
to install (split into a few if the keys do not fit one message).`,
		Example: `  sera known-hosts sync
  sera known-hosts sync --to 'web*' --dry-run
  sera known-hosts sync --group web
  sera known-hosts sync --accept web1      # trust the names web1 reports, from now on
  sera known-hosts sync --json | jq -r 'select(.untrusted != []) | .watcher'`,
		Args: cli.UsageArgs(cobra.NoArgs),
		PreRunE: func(c *cobra.Command, args []string) error {
			if s.noLocal && s.file != "" {
				return cli.UsageErr("--file and --no-local exclude each other")
			}
			s.accept = cli.SplitAll(s.accept)
			for _, a := range s.accept {
				if err := sera.CheckName(a); err != nil {
					return cli.UsageErr("invalid --accept: %v", err)
				}
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error { return s.run(c) },
	}
	f := c.Flags()
	s.target.add(f, "sync")
	f.DurationVar(&s.timeout, "timeout", 0, "how long to wait for each round of replies (default SERA_TIMEOUT, 60s)")
	f.StringVar(&s.file, "file", "", "this machine's known_hosts file (default ~/.ssh/known_hosts)")
	f.BoolVar(&s.noLocal, "no-local", false, "leave this machine's known_hosts file alone")
	f.StringSliceVar(&s.accept, "accept", nil, "trust the names this watcher reports, and record them in known_watchers (repeatable)")
	f.BoolVar(&s.asJSON, "json", false, "print one JSON object per watcher: the names trusted, the names reported and not trusted, the outcome")
	cli.AddDryRun(c, &s.dryRun)
	return c
}

// reportedKey is one line of 'hostkey list --json'.
type reportedKey struct {
	Host        string   `json:"host"`
	Names       []string `json:"names"`
	Addrs       []string `json:"addrs"`
	Type        string   `json:"type"`
	Fingerprint string   `json:"fingerprint"`
	Key         string   `json:"key"`
	File        string   `json:"file,omitempty"`
}

// syncHost is what one watcher reported.
type syncHost struct {
	watcher *sera.KnownWatcher
	name    string // the watcher's name, as a host name
	// admin are the names the admin gave the host: the addresses
	// known_watchers gives it and NAME.DOMAIN.
	admin []string
	// reported are the names and addresses the host reported, other
	// than its name and admin's: not trusted unless accepted.
	reported []string
	keys     []ssh.PublicKey
}

// adminNames are the names the admin gives watcher w, whose host name is
// name: the addresses known_watchers gives it, and NAME.DOMAIN.
func adminNames(w *sera.KnownWatcher, name, domain string) (names, warnings []string) {
	for _, a := range w.Addrs {
		n, err := parseHostName(a)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("%s: known_watchers address left out: %v", w.Name, err))
			continue
		}
		if n != name && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if domain != "" {
		n, err := parseHostName(name + "." + domain)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("%s: %s.%s left out: %v", w.Name, name, domain, err))
		} else if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names, warnings
}

// watcherHostName is a watcher's name as a host name, or an error when its
// keys cannot be entered under it.
func watcherHostName(w *sera.KnownWatcher) (string, error) {
	name, err := parseHostName(w.Name)
	if err != nil || strings.Contains(name, ".") {
		return "", fmt.Errorf("watcher name %q is not a host name, so its keys cannot be entered under it", w.Name)
	}
	return name, nil
}

// parseHostKeyReport reads a watcher's 'hostkey list --json' output. The
// keys must all be good; a bad reported name is only left out. What the
// host says it is called is kept apart from the names the admin gave it
// (domain is SERA_DOMAIN).
func parseHostKeyReport(w *sera.KnownWatcher, domain string, stdout []byte) (*syncHost, []string, error) {
	name, err := watcherHostName(w)
	if err != nil {
		return nil, nil, err
	}
	admin, warnings := adminNames(w, name, domain)
	h := &syncHost{watcher: w, name: name, admin: admin}
	dec := json.NewDecoder(bytes.NewReader(stdout))
	for {
		var r reportedKey
		if err := dec.Decode(&r); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("unreadable 'hostkey list' output: %v", err)
		}
		k, err := parseHostKeyArg(r.Key)
		if err != nil {
			return nil, nil, fmt.Errorf("reported key: %v", err)
		}
		if k.Type() != r.Type {
			return nil, nil, fmt.Errorf("reported key %s is of type %s, not %s", ssh.FingerprintSHA256(k), k.Type(), r.Type)
		}
		if slices.ContainsFunc(h.keys, func(o ssh.PublicKey) bool { return o.Type() == k.Type() && !sameKey(o, k) }) {
			return nil, nil, fmt.Errorf("reported two %s keys", k.Type())
		}
		if !slices.ContainsFunc(h.keys, func(o ssh.PublicKey) bool { return sameKey(o, k) }) {
			h.keys = append(h.keys, k)
		}
		for _, n := range append(slices.Clone(r.Names), r.Addrs...) {
			c, err := parseHostName(n)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("%s: reported name left out: %v", w.Name, err))
				continue
			}
			if c != name && !slices.Contains(h.admin, c) && !slices.Contains(h.reported, c) {
				h.reported = append(h.reported, c)
			}
		}
	}
	if len(h.keys) == 0 {
		return nil, nil, errors.New("reported no host keys")
	}
	sortHostNames(h.reported)
	return h, warnings, nil
}

// syncSet is what a sync installs, and what it does not trust.
type syncSet struct {
	entries  []*khHost
	warnings []string
	// untrusted are, by watcher name, the names a host reported that
	// were not given it and not accepted; accepted, those accepted now.
	untrusted, accepted map[string][]string
}

// buildSyncSet makes the entries to install from what the hosts reported.
// all are every known watcher, domain is SERA_DOMAIN and accept the
// watchers whose reported names the admin accepts now. A host's entry
// carries its name and the names the admin gave it, and the names it
// reported only if accepted. A name belongs to at most one host, and the
// admin's assignment wins: another watcher's name, or a name the admin
// gave another watcher (selected in this sync or not), is never a host's
// alias; a name the admin gave several watchers, or that several accepted
// hosts report, is left out of all of them.
func buildSyncSet(hosts []*syncHost, all []*sera.KnownWatcher, domain string, accept []string) *syncSet {
	set := &syncSet{untrusted: map[string][]string{}, accepted: map[string][]string{}}
	warn := func(format string, args ...any) { set.warnings = append(set.warnings, fmt.Sprintf(format, args...)) }
	// Whose every name is: the watchers' own names, and what the admin
	// gave each, over all known watchers.
	nameOf := map[string]string{}
	adminBy := map[string][]string{}
	for _, w := range all {
		name, err := watcherHostName(w)
		if err != nil {
			continue
		}
		nameOf[name] = w.Name
		admin, _ := adminNames(w, name, domain)
		for _, a := range admin {
			if !slices.Contains(adminBy[a], name) {
				adminBy[a] = append(adminBy[a], name)
			}
		}
	}
	// Watcher names that differ only in case are one host name: neither
	// can be entered under it.
	byName := map[string][]string{}
	for _, h := range hosts {
		byName[h.name] = append(byName[h.name], h.watcher.Name)
	}
	hosts = slices.DeleteFunc(slices.Clone(hosts), func(h *syncHost) bool {
		if len(byName[h.name]) > 1 {
			warn("watchers %s are all the host name %s: left out", strings.Join(byName[h.name], ", "), h.name)
			return true
		}
		return false
	})
	claimBy := map[string][]string{}
	for _, h := range hosts {
		if slices.Contains(accept, h.watcher.Name) {
			for _, a := range h.reported {
				claimBy[a] = append(claimBy[a], h.name)
			}
		}
	}
	for _, h := range hosts {
		var aliases []string
		for _, a := range h.admin {
			switch {
			case nameOf[a] != "" && a != h.name:
				warn("%s: %s, a name known_watchers or SERA_DOMAIN gives it, is another watcher's name: left out", h.name, a)
			case len(adminBy[a]) > 1:
				warn("%s: known_watchers and SERA_DOMAIN give %s to %s: left out of all of them", h.name, a, strings.Join(adminBy[a], ", "))
			default:
				aliases = append(aliases, a)
			}
		}
		for _, a := range h.reported {
			switch {
			case !slices.Contains(accept, h.watcher.Name):
				set.untrusted[h.watcher.Name] = append(set.untrusted[h.watcher.Name], a)
			case nameOf[a] != "":
				warn("%s: reports the name %s, which is another watcher's: not accepted", h.name, a)
			case len(adminBy[a]) > 0:
				warn("%s: reports %s, which known_watchers gives to %s: not accepted", h.name, a, strings.Join(adminBy[a], ", "))
			case len(claimBy[a]) > 1:
				warn("%s: %s is reported by %s: accepted for none of them", h.name, a, strings.Join(claimBy[a], ", "))
			default:
				aliases = append(aliases, a)
				set.accepted[h.watcher.Name] = append(set.accepted[h.watcher.Name], a)
			}
		}
		e, err := newKHHost(h.name, aliases, h.keys)
		if err != nil { // cannot happen: parseHostKeyReport refused two keys of a type
			warn("%s: %v: left out", h.name, err)
			continue
		}
		set.entries = append(set.entries, e)
	}
	sort.Slice(set.entries, func(i, j int) bool { return set.entries[i].name < set.entries[j].name })
	set.warnings = khDedupe(set.warnings)
	return set
}

func khDedupe(s []string) []string {
	var out []string
	for _, x := range s {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// failure is why one watcher is not synced.
type failure struct {
	name, why string
}

// syncReport is one line of 'known-hosts sync --json': one watcher.
type syncReport struct {
	Watcher string `json:"watcher"`
	// Names are the names its keys are trusted for, Keys its keys
	// ("TYPE SHA256:…"), both empty when no keys were collected.
	Names []string `json:"names"`
	Keys  []string `json:"keys"`
	// Untrusted are names it reported that are not trusted; Accepted,
	// those --accept trusted in this run.
	Untrusted []string `json:"untrusted"`
	Accepted  []string `json:"accepted"`
	// Installed is whether every part of the set was installed on it.
	Installed bool `json:"installed"`
	// Error says why not, or why no keys were collected.
	Error string `json:"error,omitempty"`
}

func (s *knownHostsSync) run(c *cobra.Command) error {
	o := s.o
	ctx := c.Context()
	stdout, stderr := c.OutOrStdout(), c.ErrOrStderr()
	hostOut := stdout
	if s.asJSON {
		// stdout holds the JSON lines only.
		hostOut = io.Discard
	}
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	domain := strings.ToLower(cfg.Get(settings.KeyDomain))
	kw, err := sera.ReadKnownWatchers(cfg.KnownWatchersFile())
	if err != nil {
		return err
	}
	var selected []*sera.KnownWatcher
	if !s.target.set() {
		s.target.all = true
	}
	if selected, _, err = s.target.resolve(kw); err != nil {
		return err
	}
	for _, a := range s.accept {
		if !slices.ContainsFunc(selected, func(w *sera.KnownWatcher) bool { return w.Name == a }) {
			return cli.UsageErr("--accept %s: not one of the watchers this sync targets", a)
		}
	}
	local, err := s.localFile()
	if err != nil {
		return err
	}
	client, timeout, closeClient, err := o.NewClient(ctx, cfg, kw, s.timeout)
	if err != nil {
		return err
	}
	defer closeClient()

	// 1. Collect.
	out, err := client.Do(ctx, selected, namesTarget(selected), []string{"hostkey", "list", "--json=true"}, timeout, nil)
	if err != nil {
		return err
	}
	var reported []*syncHost
	var replied []*sera.KnownWatcher
	var noKeys []failure
	replies := map[string]*sera.Reply{}
	for _, r := range out.Replies {
		replies[r.Watcher.Name] = r.Reply
	}
	for _, w := range selected {
		r := replies[w.Name]
		switch {
		case out.SendErrors[w.Name] != nil:
			noKeys = append(noKeys, failure{w.Name, fmt.Sprintf("failed to send: %v", out.SendErrors[w.Name])})
			continue
		case r == nil:
			noKeys = append(noKeys, failure{w.Name, fmt.Sprintf("no reply within %s", timeout)})
			continue
		}
		replied = append(replied, w)
		if r.Status != 0 {
			noKeys = append(noKeys, failure{w.Name, fmt.Sprintf("'hostkey list' exited %d: %s", r.Status, firstLine(r.Stderr))})
			continue
		}
		h, warnings, err := parseHostKeyReport(w, domain, r.Stdout)
		for _, wn := range warnings {
			fmt.Fprintf(stderr, "sera: warning: %s\n", wn)
		}
		if err != nil {
			noKeys = append(noKeys, failure{w.Name, err.Error()})
			continue
		}
		reported = append(reported, h)
	}
	set := buildSyncSet(reported, kw.Watchers, domain, s.accept)
	entries := set.entries
	for _, wn := range set.warnings {
		fmt.Fprintf(stderr, "sera: warning: %s\n", wn)
	}
	for _, h := range reported {
		if !slices.ContainsFunc(entries, func(e *khHost) bool { return e.name == h.name }) {
			noKeys = append(noKeys, failure{h.watcher.Name, "its keys were left out (see the warning above)"})
		}
	}
	for _, h := range reported {
		if u := set.untrusted[h.watcher.Name]; len(u) > 0 {
			fmt.Fprintf(stderr, "sera: %s also reports %s: not trusted (not its watcher name, known_watchers addrs= or SERA_DOMAIN name); once checked, accept them with 'sera known-hosts sync --accept %s'\n",
				h.watcher.Name, strings.Join(u, ", "), h.watcher.Name)
		}
	}
	for _, a := range s.accept {
		if slices.ContainsFunc(reported, func(h *syncHost) bool { return h.watcher.Name == a }) && len(set.accepted[a]) == 0 {
			fmt.Fprintf(stderr, "sera: --accept %s: it reports no name to accept\n", a)
		}
	}
	for _, f := range noKeys {
		fmt.Fprintf(stderr, "sera: %s: no keys collected (%s); its entries are left as each host has them\n", f.name, f.why)
	}
	if len(entries) == 0 {
		fmt.Fprintf(stderr, "sera: known-hosts sync: no host keys collected from any of %d hosts; nothing installed\n", len(selected))
		s.printJSON(stdout, selected, set, noKeys, nil, false)
		return &cli.ExitError{Code: cli.ExitFailure}
	}
	// Accepted names become the admin's, in known_watchers, before they
	// are installed anywhere: what a host is trusted for is always
	// there to read.
	if err := s.recordAccepted(cfg, set.accepted, stderr); err != nil {
		return err
	}

	// 2. Install on every host that answered: one request, or a few for
	// a fleet whose keys do not fit one message. 'hostkey set' changes
	// only the hosts it names, so the parts add up to the whole.
	var notInstalled []failure
	if len(replied) > 0 {
		failed := map[string]string{}
		for _, part := range chunkEntries(entries, client.Transport.MaxMessageSize()/2) {
			argv := []string{"hostkey", "set"}
			if s.dryRun {
				argv = append(argv, "--dry-run=true")
			}
			argv = append(argv, "--")
			for _, e := range part {
				argv = append(argv, e.lines()...)
			}
			out, err = client.Do(ctx, replied, namesTarget(replied), argv, timeout, func(r sera.HostReply) {
				prefixLines(hostOut, r.Watcher.Name, r.Reply.Stdout)
				prefixLines(stderr, r.Watcher.Name, r.Reply.Stderr)
			})
			if err != nil {
				return err
			}
			status := map[string]int{}
			for _, r := range out.Replies {
				status[r.Watcher.Name] = r.Reply.Status
			}
			for _, w := range replied {
				st, ok := status[w.Name]
				why := ""
				switch {
				case out.SendErrors[w.Name] != nil:
					why = fmt.Sprintf("failed to send: %v", out.SendErrors[w.Name])
				case !ok:
					why = fmt.Sprintf("no reply within %s", timeout)
				case st != 0:
					why = fmt.Sprintf("'hostkey set' exited %d", st)
				}
				if _, seen := failed[w.Name]; why != "" && !seen {
					failed[w.Name] = why
				}
			}
		}
		for _, w := range replied {
			if why, ok := failed[w.Name]; ok {
				notInstalled = append(notInstalled, failure{w.Name, why})
			}
		}
	}
	for _, w := range selected {
		if !slices.Contains(replied, w) {
			notInstalled = append(notInstalled, failure{w.Name, "did not answer"})
		}
	}
	for _, f := range notInstalled {
		fmt.Fprintf(stderr, "sera: %s: not installed (%s)\n", f.name, f.why)
	}

	// 3. This machine.
	localErr := error(nil)
	if local != nil {
		var buf bytes.Buffer
		localErr = s.installLocal(ctx, cfg, local, entries, &buf, stderr)
		prefixLines(hostOut, "local", buf.Bytes())
		if localErr != nil {
			fmt.Fprintf(stderr, "sera: local: %v\n", localErr)
		}
	}
	s.printJSON(stdout, selected, set, noKeys, notInstalled, true)

	would := ""
	if s.dryRun {
		would = " (dry run: nothing changed)"
	}
	where := ""
	if local != nil && localErr == nil {
		where = " and in " + local.show
	}
	summary := fmt.Sprintf("known-hosts sync: keys of %d of %d hosts; installed on %d of %d hosts%s%s",
		len(reported), len(selected), len(selected)-len(notInstalled), len(selected), where, would)
	if len(noKeys) > 0 || len(notInstalled) > 0 || localErr != nil {
		var failed []string
		for _, f := range append(noKeys, notInstalled...) {
			if !slices.Contains(failed, f.name) {
				failed = append(failed, f.name)
			}
		}
		sort.Strings(failed)
		if len(failed) > 0 {
			summary += "; failed: " + strings.Join(failed, ", ")
		}
		fmt.Fprintf(stderr, "sera: %s\n", summary)
		return &cli.ExitError{Code: cli.ExitFailure}
	}
	if s.asJSON {
		_, err = fmt.Fprintf(stderr, "sera: %s\n", summary)
		return err
	}
	_, err = fmt.Fprintln(stdout, summary)
	return err
}

// recordAccepted adds the names --accept trusted to each watcher's
// addrs= in known_watchers (nothing with --dry-run). A watcher whose key
// changed in the file since the sync read it is refused.
func (s *knownHostsSync) recordAccepted(cfg *settings.Config, accepted map[string][]string, out io.Writer) error {
	if len(accepted) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(accepted))
	if s.dryRun {
		for _, n := range names {
			fmt.Fprintf(out, "sera: %s: would accept %s (dry run: known_watchers not changed)\n", n, strings.Join(accepted[n], ", "))
		}
		return nil
	}
	return cli.UpdateFile(cfg.KnownWatchersFile(), sera.ReadKnownWatchers, func(kw *sera.KnownWatchers) (string, error) {
		var msg strings.Builder
		for _, n := range names {
			w := kw.ByName(n)
			if w == nil {
				return "", fmt.Errorf("watcher %s left known_watchers while syncing; nothing was changed", n)
			}
			for _, a := range accepted[n] {
				if !slices.ContainsFunc(w.Addrs, func(x string) bool { return strings.EqualFold(x, a) }) {
					w.Addrs = append(w.Addrs, a)
				}
			}
			fmt.Fprintf(&msg, "sera: %s: accepted %s: added to its addrs= in known_watchers\n", n, strings.Join(accepted[n], ", "))
		}
		return msg.String(), nil
	}, out)
}

// printJSON prints, with --json, one syncReport per selected watcher.
func (s *knownHostsSync) printJSON(out io.Writer, selected []*sera.KnownWatcher, set *syncSet, noKeys, notInstalled []failure, tried bool) {
	if !s.asJSON {
		return
	}
	why := map[string]string{}
	for _, f := range append(slices.Clone(noKeys), notInstalled...) {
		if _, ok := why[f.name]; !ok {
			why[f.name] = f.why
		}
	}
	enc := json.NewEncoder(out)
	for _, w := range selected {
		r := syncReport{Watcher: w.Name, Names: []string{}, Keys: []string{},
			Untrusted: khNonNil(set.untrusted[w.Name]), Accepted: khNonNil(set.accepted[w.Name]), Error: why[w.Name]}
		if name, err := watcherHostName(w); err == nil {
			if e := slices.IndexFunc(set.entries, func(e *khHost) bool { return e.name == name }); e >= 0 {
				r.Names = set.entries[e].names()
				for _, k := range set.entries[e].keys {
					r.Keys = append(r.Keys, k.Type()+" "+ssh.FingerprintSHA256(k))
				}
			}
		}
		r.Installed = tried && !slices.ContainsFunc(notInstalled, func(f failure) bool { return f.name == w.Name })
		enc.Encode(r)
	}
}

// chunkEntries splits entries into parts whose lines take at most budget
// bytes, never splitting one host's lines: 'hostkey set' makes a host's
// keys exactly those given in one request.
func chunkEntries(entries []*khHost, budget int) [][]*khHost {
	var parts [][]*khHost
	var cur []*khHost
	size := 0
	for _, e := range entries {
		n := 0
		for _, l := range e.lines() {
			n += len(l) + 16 // JSON quoting and separators
		}
		if len(cur) > 0 && size+n > budget {
			parts = append(parts, cur)
			cur, size = nil, 0
		}
		cur = append(cur, e)
		size += n
	}
	if len(cur) > 0 {
		parts = append(parts, cur)
	}
	return parts
}

// namesTarget addresses exactly these watchers.
func namesTarget(ws []*sera.KnownWatcher) sera.Target {
	var t sera.Target
	for _, w := range ws {
		t.Names = append(t.Names, w.Name)
	}
	return t
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimPrefix(s, "sera: ")
	if s == "" {
		return "no message"
	}
	return s
}

// localFile is this machine's known_hosts file, or nil with --no-local.
func (s *knownHostsSync) localFile() (*knownHostsPath, error) {
	if s.noLocal {
		return nil, nil
	}
	p := s.file
	show := p
	if p == "" {
		home := s.o.Env.UserHome
		if home == "" {
			return nil, cli.UsageErr("cannot tell your home directory: give --file or --no-local")
		}
		p = filepath.Join(home, ".ssh", "known_hosts")
		show = "~/.ssh/known_hosts"
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, err
	}
	return &knownHostsPath{show: show, path: abs, mode: 0o600, keepMode: true, dirMode: 0o700}, nil
}

func (s *knownHostsSync) installLocal(ctx context.Context, cfg *settings.Config, k *knownHostsPath, entries []*khHost, out, errOut io.Writer) error {
	state := cfg.Get(settings.KeyState)
	if err := safefile.MkdirPrivate(state); err != nil {
		return err
	}
	unlock, err := safefile.Lock(filepath.Join(state, "known_hosts.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	return k.edit(ctx, out, errOut, s.dryRun, k.show+": no change", func(f *knownHostsFile) error {
		for _, e := range entries {
			if err := f.set(e); err != nil {
				return err
			}
		}
		return nil
	})
}
