// Package hostkeys is SSH host keys on both sides: a host's own keys
// (/etc/ssh/ssh_host_*_key.pub) and the names and addresses it is known
// by, and the known_hosts format sera edits (/etc/ssh/ssh_known_hosts on a
// host, ~/.ssh/known_hosts on the laptop): a marked block of entries
// compared by host, type and key, every other line the admin's own.
package hostkeys

import (
	"bytes"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"
)

// ErrInvalid is wrapped by every error about a host name, key or entry
// given on the command line: the caller's input is wrong, not the host.
var ErrInvalid = errors.New("invalid host key input")

type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// abbreviate shortens what an error quotes of an argument.
func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

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
	Begin = "# sera: host keys between these lines are managed by sera ('sera hostkey', 'sera known-hosts sync'); edits are overwritten"
	End   = "# sera: end of sera's host keys"

	SystemFile = "/etc/ssh/ssh_known_hosts"
	// MinRSABits is the smallest RSA host key sera installs.
	MinRSABits = 2048
)

// KeyTypes are the key types sera installs, in the order it writes
// them. Certificates, DSA and security-key types are never host keys it
// installs.
var KeyTypes = []string{
	ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSA,
}

// ParseHostName checks one host name or address as sera writes it into a
// known_hosts file and returns its canonical form: a lower-case RFC 1123
// host name, or an IP address as netip prints it. Wildcards, negations,
// hashed names and [host]:port forms are refused: sera writes only names
// it can compare.
func ParseHostName(s string) (string, error) {
	switch {
	case s == "":
		return "", invalid("empty host name")
	case strings.ContainsAny(s, "*?!"):
		return "", invalid("invalid host name %q: wildcards and negations are not accepted; give each name", s)
	case strings.HasPrefix(s, "|"):
		return "", invalid("invalid host name %q: hashed names are not accepted; give the name itself", s)
	case strings.HasPrefix(s, "["):
		return "", invalid("invalid host name %q: [host]:port is not supported; sera's entries are for port 22", s)
	}
	if a, err := netip.ParseAddr(s); err == nil {
		switch {
		case a.Zone() != "":
			return "", invalid("invalid address %q: a zone (%%%s) is not accepted", s, a.Zone())
		case a.Is4In6():
			return "", invalid("invalid address %q: give the IPv4 address %s", s, a.Unmap())
		case a.IsUnspecified(), a.IsMulticast():
			return "", invalid("invalid address %q: not a host's address", s)
		}
		return a.String(), nil
	}
	if strings.Contains(s, ":") {
		return "", invalid("invalid host name %q: not a host name or IP address", s)
	}
	name := strings.ToLower(s)
	if len(name) > 253 {
		return "", invalid("invalid host name %q: longer than 253 characters", abbreviate(s))
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' ||
			strings.IndexFunc(l, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') }) >= 0 {
			return "", invalid("invalid host name %q: use letters, digits and '-' in dot-separated labels (RFC 1123), or an IP address", abbreviate(s))
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		return "", invalid("invalid host name %q: not an IP address, and a host name's last label is not all digits", s)
	}
	return name, nil
}

// ParseHostList parses "NAME[,ALIAS…]".
func ParseHostList(s string) (name string, aliases []string, err error) {
	for i, part := range strings.Split(s, ",") {
		n, err := ParseHostName(part)
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

// CheckKey refuses keys sera does not install as host keys.
func CheckKey(k ssh.PublicKey) error {
	if _, ok := k.(*ssh.Certificate); ok {
		return invalid("key %s is a certificate: sera installs plain host keys only (no @cert-authority)", ssh.FingerprintSHA256(k))
	}
	if !slices.Contains(KeyTypes, k.Type()) {
		return invalid("key %s: type %s is not a host key type sera installs (%s)", ssh.FingerprintSHA256(k), k.Type(), strings.Join(KeyTypes, ", "))
	}
	if ck, ok := k.(ssh.CryptoPublicKey); ok {
		if rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey); ok && rk.N.BitLen() < MinRSABits {
			return invalid("key %s: a %d-bit RSA key is too weak (at least %d bits)", ssh.FingerprintSHA256(k), rk.N.BitLen(), MinRSABits)
		}
	}
	return nil
}

// ParseKeyArg parses one KEY argument: "KEYTYPE BASE64 [COMMENT]", as
// in an ssh_host_*_key.pub file.
func ParseKeyArg(s string) (ssh.PublicKey, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, invalid("invalid key: it spans several lines; give one key per argument")
	}
	if strings.HasPrefix(strings.TrimSpace(s), "@") {
		return nil, invalid("invalid key %q: markers (@cert-authority, @revoked) are not accepted", abbreviate(s))
	}
	pub, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, invalid("invalid key %q: %v", abbreviate(s), err)
	}
	if len(opts) > 0 {
		return nil, invalid("invalid key %q: give it as 'KEYTYPE BASE64' (%q before it is not part of a key)", abbreviate(s), strings.Join(opts, ","))
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, invalid("invalid key: give one key per argument")
	}
	return pub, CheckKey(pub)
}

// ParseEntry parses one known_hosts line as sera writes them:
// "NAME[,ALIAS…] KEYTYPE BASE64", no marker, no hashed or wildcard names.
func ParseEntry(s string) (name string, aliases []string, key ssh.PublicKey, err error) {
	if strings.ContainsAny(s, "\r\n") {
		return "", nil, nil, invalid("invalid entry: it spans several lines; give one entry per argument")
	}
	marker, hosts, pub, _, rest, err := ssh.ParseKnownHosts([]byte(s))
	if errors.Is(err, io.EOF) {
		return "", nil, nil, invalid("invalid entry %q: empty or a comment; want 'NAME[,ADDR…] KEYTYPE BASE64'", abbreviate(s))
	} else if err != nil {
		return "", nil, nil, invalid("invalid entry %q: %v; want 'NAME[,ADDR…] KEYTYPE BASE64'", abbreviate(s), err)
	}
	if marker != "" {
		return "", nil, nil, invalid("invalid entry %q: the @%s marker is not accepted", abbreviate(s), marker)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return "", nil, nil, invalid("invalid entry: give one entry per argument")
	}
	if name, aliases, err = ParseHostList(strings.Join(hosts, ",")); err != nil {
		return "", nil, nil, err
	}
	return name, aliases, pub, CheckKey(pub)
}

func TypeRank(t string) int { return slices.Index(KeyTypes, t) }

func SameKey(a, b ssh.PublicKey) bool { return bytes.Equal(a.Marshal(), b.Marshal()) }

func KeyText(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }

// Host is one managed host: its keys, one per type, under its name and
// aliases.
type Host struct {
	Name    string
	Aliases []string
	Keys    []ssh.PublicKey
}

// NewHost checks and normalizes an entry: aliases without the name and
// without repeats, in a fixed order; keys one per type, in KeyTypes
// order.
func NewHost(name string, aliases []string, keys []ssh.PublicKey) (*Host, error) {
	e := &Host{Name: name}
	for _, a := range aliases {
		if a != name && !slices.Contains(e.Aliases, a) {
			e.Aliases = append(e.Aliases, a)
		}
	}
	SortNames(e.Aliases)
	for _, k := range keys {
		if old := e.Key(k.Type()); old != nil {
			if SameKey(old, k) {
				continue
			}
			return nil, invalid("two %s keys for %s (%s, %s): give one key per type", k.Type(), name, ssh.FingerprintSHA256(old), ssh.FingerprintSHA256(k))
		}
		e.Keys = append(e.Keys, k)
	}
	sort.SliceStable(e.Keys, func(i, j int) bool { return TypeRank(e.Keys[i].Type()) < TypeRank(e.Keys[j].Type()) })
	return e, nil
}

// SortNames orders names before addresses, each in their own order.
func SortNames(names []string) {
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

func (e *Host) Key(typ string) ssh.PublicKey {
	for _, k := range e.Keys {
		if k.Type() == typ {
			return k
		}
	}
	return nil
}

func (e *Host) Names() []string { return append([]string{e.Name}, e.Aliases...) }

func (e *Host) Lines() []string {
	var out []string
	hosts := strings.Join(e.Names(), ",")
	for _, k := range e.Keys {
		out = append(out, hosts+" "+KeyText(k))
	}
	return out
}

func (e *Host) Clone() *Host {
	return &Host{Name: e.Name, Aliases: slices.Clone(e.Aliases), Keys: slices.Clone(e.Keys)}
}

func (e *Host) SameAs(o *Host) bool {
	if e.Name != o.Name || !slices.Equal(e.Aliases, o.Aliases) || len(e.Keys) != len(o.Keys) {
		return false
	}
	for i := range e.Keys {
		if !SameKey(e.Keys[i], o.Keys[i]) {
			return false
		}
	}
	return true
}

func DescribeKeys(keys []ssh.PublicKey) string {
	var d []string
	for _, k := range keys {
		d = append(d, k.Type()+" "+ssh.FingerprintSHA256(k))
	}
	return strings.Join(d, ", ")
}
