package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/hostkeys"
)

// known-hosts sync, the client side.

type knownHostsSync struct {
	o       *cli.Options
	target  cli.Targets
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
	s.target.Add(f, "sync")
	f.DurationVar(&s.timeout, "timeout", 0, "how long to wait for each round of replies (default SERA_TIMEOUT, 60s)")
	f.StringVar(&s.file, "file", "", "this machine's known_hosts file (default ~/.ssh/known_hosts)")
	f.BoolVar(&s.noLocal, "no-local", false, "leave this machine's known_hosts file alone")
	f.StringSliceVar(&s.accept, "accept", nil, "trust the names this watcher reports, and record them in known_watchers (repeatable)")
	f.BoolVar(&s.asJSON, "json", false, "print one JSON object per watcher: the names trusted, the names reported and not trusted, the outcome")
	cli.AddDryRun(c, &s.dryRun)
	return c
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
		n, err := hostkeys.ParseHostName(a)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("%s: known_watchers address left out: %v", w.Name, err))
			continue
		}
		if n != name && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if domain != "" {
		n, err := hostkeys.ParseHostName(name + "." + domain)
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
	name, err := hostkeys.ParseHostName(w.Name)
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
		var r hostkeys.Report
		if err := dec.Decode(&r); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("unreadable 'hostkey list' output: %v", err)
		}
		k, err := hostkeys.ParseKeyArg(r.Key)
		if err != nil {
			return nil, nil, fmt.Errorf("reported key: %v", err)
		}
		if k.Type() != r.Type {
			return nil, nil, fmt.Errorf("reported key %s is of type %s, not %s", ssh.FingerprintSHA256(k), k.Type(), r.Type)
		}
		if slices.ContainsFunc(h.keys, func(o ssh.PublicKey) bool { return o.Type() == k.Type() && !hostkeys.SameKey(o, k) }) {
			return nil, nil, fmt.Errorf("reported two %s keys", k.Type())
		}
		if !slices.ContainsFunc(h.keys, func(o ssh.PublicKey) bool { return hostkeys.SameKey(o, k) }) {
			h.keys = append(h.keys, k)
		}
		for _, n := range append(slices.Clone(r.Names), r.Addrs...) {
			c, err := hostkeys.ParseHostName(n)
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
	hostkeys.SortNames(h.reported)
	return h, warnings, nil
}

// syncSet is what a sync installs, and what it does not trust.
type syncSet struct {
	entries  []*hostkeys.Host
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
		e, err := hostkeys.NewHost(h.name, aliases, h.keys)
		if err != nil { // cannot happen: parseHostKeyReport refused two keys of a type
			warn("%s: %v: left out", h.name, err)
			continue
		}
		set.entries = append(set.entries, e)
	}
	sort.Slice(set.entries, func(i, j int) bool { return set.entries[i].Name < set.entries[j].Name })
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

// SyncReport is one line of 'known-hosts sync --json': one watcher.
type SyncReport struct {
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
