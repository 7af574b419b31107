package admin

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/host/hostkeys"
)

func newWatchersCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "watchers",
		Short: "Manage the watchers this client knows, known_watchers (not 'watcher')",
	})
	c.AddCommand(newWatchersAddCmd(o), newWatchersRemoveCmd(o), newWatchersListCmd(o))
	return c
}

func newWatchersAddCmd(o *cli.Options) *cobra.Command {
	var groups, addrs []string
	c := &cobra.Command{
		Use:   "add NAME PUBKEY [--group G]… [--addr A]…",
		Short: "Know a watcher by name and key",
		Long: `Know a watcher: NAME must be the watcher's own SERA_NAME (it names its queue
and is checked by the watcher against the signed target), PUBKEY what its
'sera keygen' printed. Adding it again with the same details changes
nothing; with other details, it updates them.

--addr gives the addresses (and other host names) of the watcher's host:
'sera known-hosts sync' trusts its SSH host keys for its name, these, and
NAME.SERA_DOMAIN, never for names the host reports of itself.`,
		Args: cli.UsageArgs(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, args []string) error {
			name, key, groups, err := watcherArgs(args, groups)
			if err != nil {
				return err
			}
			// The names 'known-hosts sync' trusts this watcher's host
			// keys for, beside its own: parsed as they are written
			// into known_hosts, so one that sync would leave out is
			// refused here.
			var canon []string
			for _, a := range cli.SplitAll(addrs) {
				n, err := hostkeys.ParseHostName(a)
				if err != nil {
					return cli.UsageErr("invalid --addr: %v", err)
				}
				if !slices.Contains(canon, n) {
					canon = append(canon, n)
				}
			}
			addrs = canon
			return updateKnownWatchers(o, func(kw *sera.KnownWatchers) (string, error) {
				if other := kw.ByKey(key); other != nil && other.Name != name {
					return "", fmt.Errorf("that key is already known as watcher %s; remove it first", other.Name)
				}
				w := &sera.KnownWatcher{Name: name, Key: key, Groups: groups, Addrs: addrs}
				if cur := kw.ByName(name); cur != nil {
					if cur.Key.Equal(key) && slices.Equal(cur.Groups, groups) && slices.Equal(cur.Addrs, addrs) {
						return fmt.Sprintf("watcher %s already present\n", name), nil
					}
					*cur = *w
					return fmt.Sprintf("watcher %s (%s) updated\n", name, key.Fingerprint()), nil
				}
				kw.Watchers = append(kw.Watchers, w)
				return fmt.Sprintf("watcher %s (%s) added\n", name, key.Fingerprint()), nil
			})
		},
	}
	c.Flags().StringSliceVar(&groups, "group", nil, "groups the watcher is in (repeatable, or comma-separated)")
	c.Flags().StringSliceVar(&addrs, "addr", nil, "addresses and host names the watcher's host is known by, which 'known-hosts sync' trusts its SSH host keys for (repeatable)")
	return c
}

// watcherArgs validates the NAME PUBKEY [--group G…] of a watcher, as
// 'watchers add' and 'watcher register' take them.
func watcherArgs(args, groups []string) (string, *crypto.PublicKey, []string, error) {
	name := args[0]
	if err := sera.CheckName(name); err != nil {
		return "", nil, nil, cli.UsageErr("invalid NAME: %v", err)
	}
	key, err := crypto.ParsePublicKey(args[1])
	if err != nil {
		return "", nil, nil, cli.UsageErr("%v", err)
	}
	groups = cli.SplitAll(groups)
	for _, g := range groups {
		if err := sera.CheckName(g); err != nil {
			return "", nil, nil, cli.UsageErr("invalid --group: %v", err)
		}
	}
	return name, key, groups, nil
}

func newWatchersRemoveCmd(o *cli.Options) *cobra.Command {
	return &cobra.Command{
		Use:               "remove NAME",
		ValidArgsFunction: o.CompleteWatchers,
		Short:             "Forget a watcher",
		Args:              cli.UsageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			return updateKnownWatchers(o, func(kw *sera.KnownWatchers) (string, error) {
				i := slices.IndexFunc(kw.Watchers, func(w *sera.KnownWatcher) bool { return w.Name == args[0] })
				if i < 0 {
					return fmt.Sprintf("watcher %s already absent\n", args[0]), nil
				}
				kw.Watchers = slices.Delete(kw.Watchers, i, i+1)
				return fmt.Sprintf("watcher %s removed\n", args[0]), nil
			})
		},
	}
}

func newWatchersListCmd(o *cli.Options) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List known watchers",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, kw, err := o.KnownWatchers()
			if err != nil {
				return err
			}
			// The health 'sera status' last saw; this reads no
			// heartbeats, so it works offline.
			rows, err := fleetHealth(o, cfg, kw)
			if err != nil {
				return err
			}
			byName := map[string]healthRow{}
			for _, r := range rows {
				byName[r.Host] = r
			}
			if !asJSON && len(kw.Watchers) > 0 {
				fmt.Fprintf(o.Stdout, "%-16s %-16s %-8s %-10s %-12s %-7s %-8s %s\n", "NAME", "FINGERPRINT", "STATE", "LAST SEEN", "VERSION", "QUEUE", "OPENINGS", "GROUPS")
			}
			for _, w := range kw.Watchers {
				h := byName[w.Name]
				if asJSON {
					json.NewEncoder(o.Stdout).Encode(map[string]any{
						"name": w.Name, "fingerprint": w.Key.Fingerprint(), "key": w.Key.String(),
						"groups": cli.NonNil(w.Groups), "addrs": cli.NonNil(w.Addrs),
						"state": h.State, "last_seen": h.LastSeen, "version": h.Version,
						"queue_depth": h.QueueDepth, "openings": h.Openings,
					})
					continue
				}
				seen, version := h.seen()
				queue, openings := h.counts()
				fmt.Fprintf(o.Stdout, "%-16s %-16s %-8s %-10s %-12s %-7s %-8s %s\n", w.Name, w.Key.Fingerprint(), h.State, seen, version, queue, openings, strings.Join(w.Groups, ","))
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per watcher")
	return c
}

func updateKnownWatchers(o *cli.Options, change func(*sera.KnownWatchers) (string, error)) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	return cli.UpdateFile(cfg.KnownWatchersFile(), sera.ReadKnownWatchers, change, o.Stderr)
}
