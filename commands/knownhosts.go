package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/hostkeys"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

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
		var r reportedKey
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
		if !slices.ContainsFunc(entries, func(e *hostkeys.Host) bool { return e.Name == h.name }) {
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
				argv = append(argv, e.Lines()...)
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
		where = " and in " + local.Show
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
			if e := slices.IndexFunc(set.entries, func(e *hostkeys.Host) bool { return e.Name == name }); e >= 0 {
				r.Names = set.entries[e].Names()
				for _, k := range set.entries[e].Keys {
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
func chunkEntries(entries []*hostkeys.Host, budget int) [][]*hostkeys.Host {
	var parts [][]*hostkeys.Host
	var cur []*hostkeys.Host
	size := 0
	for _, e := range entries {
		n := 0
		for _, l := range e.Lines() {
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
func (s *knownHostsSync) localFile() (*hostkeys.Path, error) {
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
	return &hostkeys.Path{Show: show, File: abs, Mode: 0o600, KeepMode: true, DirMode: 0o700}, nil
}

func (s *knownHostsSync) installLocal(ctx context.Context, cfg *settings.Config, k *hostkeys.Path, entries []*hostkeys.Host, out, errOut io.Writer) error {
	state := cfg.Get(settings.KeyState)
	if err := safefile.MkdirPrivate(state); err != nil {
		return err
	}
	unlock, err := safefile.Lock(filepath.Join(state, "known_hosts.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	return editKnownHostsFile(ctx, k, out, errOut, s.dryRun, k.Show+": no change", func(f *hostkeys.File) error {
		for _, e := range entries {
			if err := f.Set(e); err != nil {
				return err
			}
		}
		return nil
	})
}
