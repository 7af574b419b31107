package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
)

// Health states of a watcher in 'sera status'.
const (
	stateOK      = "ok"
	stateMissing = "missing" // no heartbeat for two of its intervals
	stateNever   = "never"   // no heartbeat ever read
)

// fleetFile is where a client keeps the newest heartbeat of each watcher,
// so a host seen once stays known between runs of 'sera status'.
func fleetFile(cfg *settings.Config) string {
	return filepath.Join(cfg.Get(settings.KeyState), "fleet.json")
}

// readFleet reads the fleet file; a missing one is an empty fleet.
func readFleet(path string) (map[string]*sera.FleetHost, error) {
	b, err := safefile.ReadNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]*sera.FleetHost{}, nil
	}
	if err != nil {
		return nil, err
	}
	fleet := map[string]*sera.FleetHost{}
	if err := json.Unmarshal(b, &fleet); err != nil {
		return nil, fmt.Errorf("%s is corrupt (remove it; 'sera status' rebuilds it): %w", path, err)
	}
	return fleet, nil
}

// healthRow is one watcher in 'sera status' and 'watchers list'.
type healthRow struct {
	Host       string     `json:"host"`
	State      string     `json:"state"`
	LastSeen   *time.Time `json:"last_seen"`
	SecondsAgo *int64     `json:"seconds_ago"`
	Version    string     `json:"version,omitempty"`
	// Groups are the watcher's own (its SERA_GROUPS, from its
	// heartbeat); KnownGroups what known_watchers says.
	Groups          []string `json:"groups"`
	KnownGroups     []string `json:"known_groups"`
	QueueDepth      *int     `json:"queue_depth"`
	Openings        *int     `json:"openings"`
	IntervalSeconds int64    `json:"interval_seconds,omitempty"`
	Fingerprint     string   `json:"fingerprint"`
}

// health is each known watcher's row, from fleet, at now. A heartbeat of
// a key the watcher no longer has is not its.
func health(kw *sera.KnownWatchers, fleet map[string]*sera.FleetHost, now time.Time) []healthRow {
	var rows []healthRow
	for _, w := range kw.Watchers {
		r := healthRow{Host: w.Name, State: stateNever, Fingerprint: w.Key.Fingerprint(), KnownGroups: cli.NonNil(w.Groups)}
		if h := fleet[w.Name]; h != nil && h.Fingerprint == w.Key.Fingerprint() {
			ago := int64(now.Sub(h.Time) / time.Second)
			r.LastSeen, r.SecondsAgo = &h.Time, &ago
			r.Version, r.Groups, r.QueueDepth, r.Openings, r.IntervalSeconds = h.Version, h.Groups, h.QueueDepth, h.Openings, h.IntervalSeconds
			r.State = stateOK
			if now.Sub(h.Time) > 2*h.Interval() {
				r.State = stateMissing
			}
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b healthRow) int { return strings.Compare(a.Host, b.Host) })
	return rows
}

// refreshFleet reads the heartbeats waiting for this client into the fleet
// file and returns the fleet. A failure to read them leaves the file as it
// was and is returned with the fleet it holds.
func refreshFleet(ctx context.Context, o *cli.Options, cfg *settings.Config, kw *sera.KnownWatchers) (map[string]*sera.FleetHost, error) {
	path := fleetFile(cfg)
	if err := safefile.MkdirPrivate(filepath.Dir(path)); err != nil {
		return nil, err
	}
	unlock, err := safefile.Lock(path + ".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()
	fleet, err := readFleet(path)
	if err != nil {
		return nil, err
	}
	id, err := cli.LoadIdentity(cfg)
	if err != nil {
		return fleet, err
	}
	tr, err := o.Transport(ctx, cfg)
	if err != nil {
		return fleet, err
	}
	defer tr.Close()
	fresh, readErr := sera.ReadHeartbeats(ctx, tr, id, cfg.Get(settings.KeyPrefix), kw)
	for name, h := range fresh {
		if cur := fleet[name]; cur == nil || cur.Fingerprint != h.Fingerprint || h.Time.After(cur.Time) {
			fleet[name] = h
		}
	}
	// Forget the watchers no longer known.
	for name := range fleet {
		if kw.ByName(name) == nil {
			delete(fleet, name)
		}
	}
	b, err := json.MarshalIndent(fleet, "", "  ")
	if err != nil {
		return fleet, err
	}
	if err := safefile.WriteAtomic(path, append(b, '\n'), 0o600); err != nil {
		return fleet, err
	}
	return fleet, readErr
}

func newStatusCmd(o *cli.Options) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "Show every known watcher's health, from the heartbeats they send",
		Long: `Show every watcher in known_watchers: when it was last seen, its version,
its own groups, how many requests wait in its queue and how many ufw
openings it has open (to a client allowed 'allow').

Watchers send each client allowed ping a heartbeat every SERA_HEARTBEAT (5
minutes, after a random part of it at start), sealed to that client, onto
its heartbeat queue (P-c-FP-hb); 'sera status' reads what waits there and
keeps the newest of each watcher in $SERA_STATE/fleet.json. A watcher is
"missing" when its last heartbeat is older than two of its intervals,
"never" when none was ever read. A watcher whose own groups differ from
known_watchers' is said so on stderr.

It exits 0 when every known watcher is ok, and 1 when one is missing or
never seen, or the heartbeats could not be read: it can run from cron or a
monitor.`,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, kw, err := o.KnownWatchers()
			if err != nil {
				return err
			}
			fleet, err := refreshFleet(c.Context(), o, cfg, kw)
			if fleet == nil {
				return err
			}
			readErr := err
			if readErr != nil {
				hint := ""
				if errors.Is(readErr, transport.ErrNoQueue) {
					hint = " ('sera client register' makes the heartbeat queue)"
				}
				fmt.Fprintf(o.Stderr, "sera: warning: %v%s; showing what was read before\n", readErr, hint)
			}
			rows := health(kw, fleet, o.Time())
			printHealth(o.Stdout, o.Stderr, rows, asJSON)
			for _, r := range rows {
				if r.State != stateOK {
					return &cli.ExitError{Code: cli.ExitFailure}
				}
			}
			if readErr != nil {
				return &cli.ExitError{Code: cli.ExitFailure}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per watcher")
	return c
}

// printHealth prints rows as a table, or as JSON lines; groups that differ
// between a watcher and known_watchers are said on stderr.
func printHealth(stdout, stderr io.Writer, rows []healthRow, asJSON bool) {
	if !asJSON {
		fmt.Fprintf(stdout, "%-16s %-8s %-10s %-12s %-7s %-8s %s\n", "NAME", "STATE", "LAST SEEN", "VERSION", "QUEUE", "OPENINGS", "GROUPS")
	}
	for _, r := range rows {
		if r.LastSeen != nil && !slices.Equal(slices.Sorted(slices.Values(r.Groups)), slices.Sorted(slices.Values(r.KnownGroups))) {
			fmt.Fprintf(stderr, "sera: warning: %s's own groups (SERA_GROUPS) are %q, known_watchers says %q: groups are set on both sides\n",
				r.Host, strings.Join(r.Groups, ","), strings.Join(r.KnownGroups, ","))
		}
		if asJSON {
			if r.Groups == nil {
				r.Groups = []string{}
			}
			json.NewEncoder(stdout).Encode(r)
			continue
		}
		seen, version := r.seen()
		queue, openings := r.counts()
		groups := strings.Join(r.KnownGroups, ",")
		fmt.Fprintf(stdout, "%-16s %-8s %-10s %-12s %-7s %-8s %s\n", r.Host, r.State, seen, version, queue, openings, groups)
	}
}

// seen is when r's watcher was last seen and its version then, for a
// table; "-" for a watcher never seen.
func (r healthRow) seen() (ago, version string) {
	if r.SecondsAgo == nil {
		return "-", "-"
	}
	return (time.Duration(*r.SecondsAgo) * time.Second).String() + " ago", r.Version
}

// counts is r's queue depth and openings for a table; "-" where unknown.
func (r healthRow) counts() (queue, openings string) {
	queue, openings = "-", "-"
	if r.QueueDepth != nil {
		queue = strconv.Itoa(*r.QueueDepth)
	}
	if r.Openings != nil {
		openings = strconv.Itoa(*r.Openings)
	}
	return queue, openings
}

// fleetHealth is the rows of the fleet file as it is, without reading
// heartbeats: what 'watchers list' shows.
func fleetHealth(o *cli.Options, cfg *settings.Config, kw *sera.KnownWatchers) ([]healthRow, error) {
	fleet, err := readFleet(fleetFile(cfg))
	if err != nil {
		return nil, err
	}
	return health(kw, fleet, o.Time()), nil
}
