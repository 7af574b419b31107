package hostkeys

import (
	"fmt"
	"io"
	"net/netip"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/safefile"
)

// SSHDir holds the host's own keys.
const SSHDir = "/etc/ssh"

// UsableAddr reports whether another host can reach this one at a: not
// loopback, link-local (not unique across hosts, and needs a zone),
// multicast or unspecified.
func UsableAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified() && a.Zone() == ""
}

// KeyFile is one of the host's SSH host public keys.
type KeyFile struct {
	File string // host path
	Key  ssh.PublicKey
}

// ReadKeys reads the host's /etc/ssh/ssh_host_*_key.pub files. A key of a
// type sera does not install is skipped with a warning; an unreadable
// file is an error, so no partial set is ever reported as the whole.
func ReadKeys(sys *host.System, errOut io.Writer) ([]KeyFile, error) {
	ents, err := sys.FS.ReadDir(SSHDir)
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", SSHDir, err)
	}
	var out []KeyFile
	for _, e := range ents {
		if ok, _ := path.Match("ssh_host_*_key.pub", e.Name()); !ok {
			continue
		}
		file := SSHDir + "/" + e.Name()
		b, err := sys.FS.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("failed to read %s: %w", file, err)
		}
		pub, _, opts, rest, err := ssh.ParseAuthorizedKey(b)
		if err != nil || len(opts) > 0 || len(strings.TrimSpace(string(rest))) > 0 {
			return nil, fmt.Errorf("%s is not one public key: %v", file, err)
		}
		if err := CheckKey(pub); err != nil {
			fmt.Fprintf(errOut, "warning: %s skipped: %v\n", file, err)
			continue
		}
		if i := slices.IndexFunc(out, func(k KeyFile) bool { return k.Key.Type() == pub.Type() }); i >= 0 {
			fmt.Fprintf(errOut, "warning: %s skipped: %s is already the %s key\n", file, out[i].File, pub.Type())
			continue
		}
		out = append(out, KeyFile{File: file, Key: pub})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no SSH host keys (%s/ssh_host_*_key.pub)", SSHDir)
	}
	sort.Slice(out, func(i, j int) bool { return TypeRank(out[i].Key.Type()) < TypeRank(out[j].Key.Type()) })
	return out, nil
}

// KnownBy is what the host is known by: names and addresses. Given ones
// replace the defaults: the host's sera name and hostname, and its
// addresses that other hosts can reach.
func KnownBy(sys *host.System, seraName string, names, addrs []string, noAddrs bool) ([]string, []string, error) {
	var outNames, outAddrs []string
	add := func(list *[]string, n string) {
		if !slices.Contains(*list, n) {
			*list = append(*list, n)
		}
	}
	if len(names) > 0 {
		for _, n := range names {
			c, _ := ParseHostName(n)
			add(&outNames, c)
		}
	} else {
		hn, _ := sys.Net.Hostname()
		for _, n := range []string{seraName, hn} {
			if c, err := ParseHostName(n); err == nil && n != "" && c != "localhost" {
				add(&outNames, c)
			}
		}
	}
	switch {
	case noAddrs:
	case len(addrs) > 0:
		for _, a := range addrs {
			c, _ := ParseHostName(a)
			add(&outAddrs, c)
		}
	default:
		found, err := sys.Net.Addrs()
		if err != nil {
			return nil, nil, fmt.Errorf("failed to list this host's addresses: %w (give --addr or --no-addrs)", err)
		}
		slices.SortFunc(found, func(a, b netip.Addr) int { return a.Compare(b) })
		for _, a := range found {
			if UsableAddr(a) {
				add(&outAddrs, a.String())
			}
		}
	}
	return outNames, outAddrs, nil
}

// Lock serializes sera's edits of the host's known_hosts file.
func Lock(sys *host.System) (unlock func(), err error) {
	dir := sys.State
	if dir == "" {
		dir = sys.Path("/var/lib/sera")
	}
	if err := safefile.MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return safefile.Lock(filepath.Join(dir, "known_hosts.lock"))
}

// Report is one line of 'hostkey list --json'.
type Report struct {
	Host        string   `json:"host"`
	Names       []string `json:"names"`
	Addrs       []string `json:"addrs"`
	Type        string   `json:"type"`
	Fingerprint string   `json:"fingerprint"`
	Key         string   `json:"key"`
	File        string   `json:"file,omitempty"`
}
