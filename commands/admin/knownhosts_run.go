package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/hostkeys"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

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
	if !s.target.Set() {
		s.target.All = true
	}
	if selected, _, err = s.target.Resolve(kw); err != nil {
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
				cli.PrefixLines(hostOut, r.Watcher.Name, r.Reply.Stdout)
				cli.PrefixLines(stderr, r.Watcher.Name, r.Reply.Stderr)
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
		cli.PrefixLines(hostOut, "local", buf.Bytes())
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
				return "", fmt.Errorf("watcher %s left known_watchers while syncing", n)
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

// printJSON prints, with --json, one SyncReport per selected watcher.
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
		r := SyncReport{Watcher: w.Name, Names: []string{}, Keys: []string{},
			Untrusted: cli.NonNil(set.untrusted[w.Name]), Accepted: cli.NonNil(set.accepted[w.Name]), Error: why[w.Name]}
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
	return k.Edit(ctx, out, errOut, s.dryRun, k.Show+": no change", func(f *hostkeys.File) error {
		for _, e := range entries {
			if err := f.Set(e); err != nil {
				return err
			}
		}
		return nil
	})
}
