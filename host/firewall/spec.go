// Package firewall is sera's temporary openings in a host's ufw firewall:
// the ufw argv of a rule from one source to one port, the record of the
// openings in $SERA_STATE/allow.json, the plans that open, extend and
// close them, and the expiry the watcher's housekeeping runs. It reaches
// the host only through a *host.System.
package firewall

// Temporary firewall openings. 'sera allow' adds one ufw rule, from one
// source address (or a narrow network) to one port, tagged with the
// comment "sera ID until TIME", and records the opening in
// $SERA_STATE/allow.json. The watcher's housekeeping removes the rule when
// it expires, also after a restart, and only if the rule in ufw still
// carries that comment: a rule sera did not add is never deleted.
//
// What ufw 0.36 (bookworm) does, checked on real hosts:
//   - "ufw allow RULE comment C" for a rule that exists with another
//     comment (or none) replaces its comment ("Rule updated"); so sera never
//     runs it for a rule it did not add, and an identical rule re-added by
//     hand takes sera's comment away, and with it sera's claim.
//   - "ufw delete allow RULE comment C" deletes the rule only if its
//     comment is C ("Could not delete non-existent rule" otherwise, exit 0);
//     sera always deletes with the exact comment it read.
//   - Both work with ufw inactive; "ufw show added" lists the rules then
//     too, normalized (an address without /32, IPv6 compressed).

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

const (
	allowStateName = "allow.json"
	allowLockName  = "allow.lock"

	// Prefixes wider than these are refused: an opening is for one admin,
	// not for a provider's whole network.
	minPrefixBits4 = 16
	minPrefixBits6 = 48
)

// ErrInvalid is wrapped by every error about an address, port or
// protocol given on the command line: the caller's input is wrong.
var ErrInvalid = errors.New("invalid opening")

type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// Spec is one opening's rule: from Source to Port/Proto. Source is
// canonical (see ParseSource), so equal specs are equal rules.
type Spec struct {
	Source string
	Port   int
	Proto  string
}

func (s Spec) String() string { return fmt.Sprintf("%s to port %d/%s", s.Source, s.Port, s.Proto) }

// argv is the ufw command line for spec: "allow" or "delete allow",
// with the comment if it is not empty.
func (s Spec) argv(del bool, comment string) []string {
	argv := []string{"ufw"}
	if del {
		argv = append(argv, "delete")
	}
	argv = append(argv, "allow", "from", s.Source, "to", "any", "port", strconv.Itoa(s.Port), "proto", s.Proto)
	if comment != "" {
		argv = append(argv, "comment", comment)
	}
	return argv
}

// ParseSource validates the address an opening is for and returns its
// canonical form: an address (IPv4-mapped IPv6 as IPv4, a /32 or /128 as
// the address), or a masked prefix. It refuses any-address forms, host
// bits in a prefix, prefixes wider than /16 (IPv4) or /48 (IPv6), zones,
// and addresses that are not unicast.
func ParseSource(s string) (string, error) {
	bad := func(format string, args ...any) error {
		return invalid(format, args...)
	}
	if s == "" {
		return "", bad("no address given")
	}
	if strings.EqualFold(s, "any") || s == "0.0.0.0/0" || s == "::/0" {
		return "", bad("refusing %q: sera opens a port to one address or a narrow network, never to every address", s)
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return "", bad("invalid address %q: not an IP address or CIDR prefix (e.g. 203.0.113.7 or 203.0.113.0/28)", s)
		}
		if a.Zone() != "" {
			return "", bad("invalid address %q: an address with a zone (%%%s) cannot be a firewall source", s, a.Zone())
		}
		a = a.Unmap()
		if err := checkUnicast(s, a); err != nil {
			return "", err
		}
		return a.String(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return "", bad("invalid address %q: not an IP address or CIDR prefix (e.g. 203.0.113.7 or 203.0.113.0/28)", s)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return "", bad("invalid prefix %q: an IPv4-mapped prefix shorter than /96", s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if p.Bits() == 0 {
		return "", bad("refusing %q: sera opens a port to one address or a narrow network, never to every address", s)
	}
	if m := p.Masked(); m != p {
		return "", bad("invalid prefix %q: host bits are set; the network is %s", s, m)
	}
	if p.IsSingleIP() {
		if err := checkUnicast(s, p.Addr()); err != nil {
			return "", err
		}
		return p.Addr().String(), nil
	}
	limit := minPrefixBits6
	if p.Addr().Is4() {
		limit = minPrefixBits4
	}
	if p.Bits() < limit {
		return "", bad("refusing %s: wider than /%d; open the port to your address or a network of at most /%d, and put wider rules in the host's own firewall configuration", p, limit, limit)
	}
	if err := checkUnicast(s, p.Addr()); err != nil {
		return "", err
	}
	return p.String(), nil
}

func checkUnicast(s string, a netip.Addr) error {
	switch {
	case a.IsUnspecified():
		return invalid("refusing %q: it stands for every address", s)
	case a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return invalid("refusing %q: not a unicast address", s)
	}
	return nil
}

func CheckPort(port int) error {
	if port < 1 || port > 65535 {
		return invalid("invalid --port %d: a port is 1-65535", port)
	}
	return nil
}

func CheckProto(proto string) error {
	if proto != "tcp" && proto != "udp" {
		return invalid("invalid --proto %q: tcp or udp", proto)
	}
	return nil
}
