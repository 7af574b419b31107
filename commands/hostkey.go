package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/hostkeys"
)

// editKnownHosts edits sera's block of the host's ssh_known_hosts.
func (h *Host) editKnownHosts(ctx context.Context, out, errOut io.Writer, dryRun bool, noChange string, change func(*hostkeys.File) error) error {
	unlock, err := hostkeys.Lock(h.Sys)
	if err != nil {
		return err
	}
	defer unlock()
	k := &hostkeys.Path{Show: hostkeys.SystemFile, File: h.Sys.Path(hostkeys.SystemFile), Mode: 0o644, DirMode: 0o755}
	return k.Edit(ctx, out, errOut, dryRun, noChange, change)
}

func (t *hostTree) hostkeyCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "hostkey",
		Short: "Report this host's SSH host keys; trust other hosts' keys",
		Long: `Report a host's SSH host keys (/etc/ssh/ssh_host_*_key.pub), and manage the
other hosts' keys it trusts in /etc/ssh/ssh_known_hosts, which ssh reads for
every user.

sera keeps the keys it installs in a marked block of that file, one line per
host and key type ("NAME[,ADDR…] KEYTYPE BASE64"), and never changes a line
outside it. Entries are compared by host, type and key, so running a command
again changes nothing. The file is replaced atomically, 0644; a symbolic
link in its place is refused.

Keys are ed25519, ECDSA or RSA (at least 2048 bits) public keys; certificates
and the @cert-authority and @revoked markers are not accepted. Names are host
names (RFC 1123, compared in lower case) or IP addresses; no wildcards, no
hashed names, no [host]:port. A name or address belongs to at most one host
in sera's block.

'sera known-hosts sync' runs 'hostkey list' and 'hostkey set' on every
watcher to keep all of them trusting each other.`,
	})
	c.AddCommand(t.hostkeyListCmd(), t.hostkeyTrustCmd(), t.hostkeyUntrustCmd(), t.hostkeySetCmd())
	return c
}

func (t *hostTree) hostkeyListCmd() *cobra.Command {
	var names, addrs []string
	var noAddrs, asJSON, asKnownHosts bool
	c := &cobra.Command{
		Use:   "list",
		Short: "Show this host's SSH host keys and the names it is known by",
		Long: `Show the host's SSH host public keys (/etc/ssh/ssh_host_*_key.pub) with their
types and fingerprints, and the names and addresses the host is known by:
by default its sera name (SERA_NAME), its hostname, and its addresses other
hosts can reach (not loopback or link-local). --name and --addr replace them.`,
		Example: `  sera hostkey list --to web1
  sera hostkey list --to web1 --known-hosts      # lines for a known_hosts file
  sera hostkey list --to 'web*' --json`,
		Args: cli.UsageArgs(cobra.NoArgs),
		PreRunE: func(c *cobra.Command, args []string) error {
			for _, n := range cli.SplitAll(names) {
				if _, err := hostkeys.ParseHostName(n); err != nil {
					return cli.AsUsage(err)
				}
			}
			for _, a := range cli.SplitAll(addrs) {
				if _, err := netip.ParseAddr(a); err != nil {
					return cli.UsageErr("invalid --addr %q: not an IP address", a)
				}
				if _, err := hostkeys.ParseHostName(a); err != nil {
					return cli.AsUsage(err)
				}
			}
			if noAddrs && len(addrs) > 0 {
				return cli.UsageErr("--addr and --no-addrs exclude each other")
			}
			if asJSON && asKnownHosts {
				return cli.UsageErr("--json and --known-hosts exclude each other")
			}
			return nil
		},
	}
	c.Flags().StringSliceVar(&names, "name", nil, "names the host is known by, instead of its sera name and hostname (repeatable)")
	c.Flags().StringSliceVar(&addrs, "addr", nil, "addresses the host is known by, instead of its own (repeatable)")
	c.Flags().BoolVar(&noAddrs, "no-addrs", false, "list no addresses")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per key")
	c.Flags().BoolVar(&asKnownHosts, "known-hosts", false, "print known_hosts lines ('NAME[,ADDR…] KEYTYPE BASE64')")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, errOut io.Writer, _ []string) error {
		ns, as, err := hostkeys.KnownBy(h.Sys, h.Name, cli.SplitAll(names), cli.SplitAll(addrs), noAddrs)
		if err != nil {
			return err
		}
		keys, err := hostkeys.ReadKeys(h.Sys, errOut)
		if err != nil {
			return err
		}
		all := append(slices.Clone(ns), as...)
		if !asJSON && !asKnownHosts {
			fmt.Fprintf(out, "host   %s\nnames  %s\naddrs  %s\n", h.Name, khList(ns), khList(as))
		}
		for _, k := range keys {
			switch {
			case asJSON:
				json.NewEncoder(out).Encode(hostkeys.Report{Host: h.Name, Names: cli.NonNil(ns), Addrs: cli.NonNil(as), Type: k.Key.Type(),
					Fingerprint: ssh.FingerprintSHA256(k.Key), Key: hostkeys.KeyText(k.Key), File: k.File})
			case asKnownHosts:
				if len(all) == 0 {
					return cli.UsageErr("no names to print known_hosts lines for: give --name")
				}
				fmt.Fprintf(out, "%s %s\n", strings.Join(all, ","), hostkeys.KeyText(k.Key))
			default:
				fmt.Fprintf(out, "%-20s %s  %s\n", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.File)
			}
		}
		return nil
	})
}

func khList(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}

// trustArgs parses "NAME[,ADDR…] KEY…".
func trustArgs(args []string) (*hostkeys.Host, error) {
	name, aliases, err := hostkeys.ParseHostList(args[0])
	if err != nil {
		return nil, err
	}
	var keys []ssh.PublicKey
	for _, a := range args[1:] {
		k, err := hostkeys.ParseKeyArg(a)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return hostkeys.NewHost(name, aliases, keys)
}

func (t *hostTree) hostkeyTrustCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "trust NAME[,ADDR…] KEY…",
		Short: "Trust these SSH host keys for a host, and only these",
		Long: `Make the keys sera trusts for host NAME in /etc/ssh/ssh_known_hosts exactly
the given ones, one per key type: a new key of a type replaces the old one,
and a type not given is no longer trusted. The names and addresses given
with NAME are written on its lines (and no longer name any other host in
sera's block). KEY is "KEYTYPE BASE64 [COMMENT]", as in a .pub file.`,
		Example: `  sera hostkey trust web2,10.0.0.12 "$(cat web2_ed25519.pub)" --to web1`,
		Args:    cli.UsageArgs(cobra.MinimumNArgs(2)),
		PreRunE: func(c *cobra.Command, args []string) error {
			_, err := trustArgs(args)
			return cli.AsUsage(err)
		},
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		e, err := trustArgs(args)
		if err != nil {
			return err
		}
		return h.editKnownHosts(ctx, out, errOut, dryRun, "keys of "+e.Name+": already trusted, no change",
			func(f *hostkeys.File) error { return f.Set(e) })
	})
}

func (t *hostTree) hostkeyUntrustCmd() *cobra.Command {
	var dryRun bool
	parse := func(args []string) ([]string, error) {
		var names []string
		for _, a := range args {
			n, err := hostkeys.ParseHostName(a)
			if err != nil {
				return nil, err
			}
			names = append(names, n)
		}
		return names, nil
	}
	c := &cobra.Command{
		Use:   "untrust NAME…",
		Short: "Remove the SSH host keys sera trusts for hosts",
		Long: `Remove the entries sera keeps for each NAME in /etc/ssh/ssh_known_hosts, and
NAME from the names of any other host there. Lines sera did not write are
left alone.`,
		Args: cli.UsageArgs(cobra.MinimumNArgs(1)),
		PreRunE: func(c *cobra.Command, args []string) error {
			_, err := parse(args)
			return cli.AsUsage(err)
		},
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		names, err := parse(args)
		if err != nil {
			return err
		}
		return h.editKnownHosts(ctx, out, errOut, dryRun, strings.Join(names, ", ")+": already absent, no change",
			func(f *hostkeys.File) error {
				for _, n := range names {
					f.Remove(n)
				}
				return nil
			})
	})
}

// setArgs parses 'hostkey set' entries, grouped by host: every line of a
// host must carry the same names, and no name may be two hosts'.
func setArgs(args []string) ([]*hostkeys.Host, error) {
	type group struct {
		aliases []string
		keys    []ssh.PublicKey
	}
	groups := map[string]*group{}
	var order []string
	for _, a := range args {
		name, aliases, key, err := hostkeys.ParseEntry(a)
		if err != nil {
			return nil, err
		}
		hostkeys.SortNames(aliases)
		g := groups[name]
		if g == nil {
			g = &group{aliases: aliases}
			groups[name] = g
			order = append(order, name)
		} else if !slices.Equal(g.aliases, aliases) {
			return nil, cli.UsageErr("the entries of %s give different names (%s and %s): give them on every line alike",
				name, strings.Join(append([]string{name}, g.aliases...), ","), strings.Join(append([]string{name}, aliases...), ","))
		}
		g.keys = append(g.keys, key)
	}
	owner := map[string]string{}
	var out []*hostkeys.Host
	for _, name := range order {
		e, err := hostkeys.NewHost(name, groups[name].aliases, groups[name].keys)
		if err != nil {
			return nil, err
		}
		for _, n := range e.Names() {
			if o, ok := owner[n]; ok {
				return nil, cli.UsageErr("%s is given as a name of both %s and %s", n, o, name)
			}
			owner[n] = name
		}
		out = append(out, e)
	}
	return out, nil
}

func (t *hostTree) hostkeySetCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "set ENTRY…",
		Short: "Trust the SSH host keys of several hosts at once",
		Long: `Like 'hostkey trust' for several hosts in one request: each ENTRY is a
known_hosts line "NAME[,ADDR…] KEYTYPE BASE64", and for every NAME given,
the keys sera trusts become exactly the keys of its entries. Hosts not
named are left as they are. 'sera known-hosts sync' uses it.`,
		Example: `  sera hostkey set --to web1 -- "web2,10.0.0.12 ssh-ed25519 AAAA…" "web3 ssh-ed25519 AAAA…"`,
		Args:    cli.UsageArgs(cobra.MinimumNArgs(1)),
		PreRunE: func(c *cobra.Command, args []string) error {
			_, err := setArgs(args)
			return cli.AsUsage(err)
		},
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		entries, err := setArgs(args)
		if err != nil {
			return err
		}
		return h.editKnownHosts(ctx, out, errOut, dryRun, "known hosts: no change",
			func(f *hostkeys.File) error {
				for _, e := range entries {
					if err := f.Set(e); err != nil {
						return err
					}
				}
				return nil
			})
	})
}
