package admin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/install"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/settings"
)

func newAuditCmd(o *cli.Options) *cobra.Command {
	var since string
	var asJSON bool
	c := &cobra.Command{
		Use:   "audit",
		Short: "Show this host's audit log: every request the watcher got",
		Long: `Show the watcher's audit log, $SERA_STATE/audit.log (` + install.StateDir + `/audit.log
as root): one record per request, accepted or rejected, with the time, the
client's fingerprint and name, the request id, the command line (secrets
masked; none for a rejected request), the decision, the rule that refused it
and the exit status. Run it on the host, as root. The log is rotated by
size (SERA_AUDIT_MAX_MB, SERA_AUDIT_KEEP): the old files, audit.log.1 and
on, are read too, oldest first.

Under systemd the same records are in the journal with the fields
SERA_CLIENT, SERA_CLIENT_NAME, SERA_REQUEST_ID, SERA_ARGV, SERA_DECISION,
SERA_EXIT, SERA_RULE and SERA_REASON:

  journalctl -u sera SERA_DECISION=rejected
  journalctl -u sera -o verbose SERA_REQUEST_ID=…`,
		Example: "  sera audit --since 1h\n  sera audit --since 2026-11-23 --json",
		Args:    cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			var from time.Time
			if since != "" {
				t, err := parseSince(since, o.Time())
				if err != nil {
					return cli.UsageErr("invalid --since %q: %v", since, err)
				}
				from = t
			}
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			path := filepath.Join(cfg.Get(settings.KeyState), "audit.log")
			// The rotated files first, oldest first: every record
			// kept, in order.
			paths := append(sera.RotatedAuditLogs(path, cfg.Int(settings.KeyAuditKeep)), path)
			for i, p := range paths {
				f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
				switch {
				case errors.Is(err, fs.ErrNotExist) && i == len(paths)-1 && len(paths) == 1:
					fmt.Fprintf(o.Stderr, "no audit log at %s: this watcher has had no request yet\n", path)
					return nil
				case errors.Is(err, fs.ErrNotExist):
					// Rotated away between the listing and now.
					continue
				case errors.Is(err, fs.ErrPermission):
					return fmt.Errorf("cannot read the audit log %s: run 'sera audit' as root", p)
				case err != nil:
					return fmt.Errorf("cannot read the audit log: %w", err)
				}
				err = printAudit(f, o.Stdout, o.Stderr, p, from, asJSON)
				f.Close()
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&since, "since", "", "only records from this time on: a duration back from now (90m, 12h, 7d) or a date and time (2026-11-23, '2026-11-23 14:00', RFC 3339)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the records as they are stored, one JSON object per line")
	return c
}

// maxAuditLine bounds one record; argv fits in one request, at most 1 MiB.
const maxAuditLine = 4 << 20

func printAudit(r io.Reader, out, errOut io.Writer, path string, from time.Time, asJSON bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxAuditLine)
	bw := bufio.NewWriter(out)
	defer bw.Flush()
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec sera.AuditRecord
		if err := json.Unmarshal(line, &rec); err != nil || rec.Time.IsZero() {
			// A crash can leave a torn last line; say so, keep going.
			fmt.Fprintf(errOut, "sera: %s line %d is not an audit record; skipped\n", path, n)
			continue
		}
		if rec.Time.Before(from) {
			continue
		}
		if asJSON {
			bw.Write(line)
			bw.WriteByte('\n')
			continue
		}
		bw.WriteString(formatAudit(rec))
		bw.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("failed to read %s: %w", path, err)
	}
	return bw.Flush()
}

// formatAudit is one record for people:
//
//	2026-11-23 14:02:11  accepted   admin  user add alice  exit 0  [id]
func formatAudit(r sera.AuditRecord) string {
	who := r.ClientName
	if who == "" {
		who = r.Client
	}
	if who == "" && r.ClaimedSender != "" {
		// Refused before the signature verified: only a claim.
		who = "claimed " + r.ClaimedSender
	}
	if who == "" {
		who = "-"
	}
	what := strings.Join(plan.Quote(r.Argv), " ")
	switch {
	case r.Rule != 0:
		what = fmt.Sprintf("rule %d: %s", r.Rule, r.Reason)
	case r.Reason != "" && len(r.Argv) > 0:
		// Run, with a note (it timed out, say): both.
		what += " (" + r.Reason + ")"
	case r.Reason != "":
		what = r.Reason
	}
	if r.Exit != nil {
		what += "  exit " + strconv.Itoa(*r.Exit)
	}
	s := fmt.Sprintf("%s  %-9s  %-16s  %s", r.Time.Local().Format("2006-01-02 15:04:05"), r.Decision, who, what)
	if r.RequestID != "" {
		s += "  [" + r.RequestID + "]"
	}
	return s
}

// parseSince reads --since: a duration back from now (Go's units, plus d
// for days) or a local date, date and time, or RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(d); err == nil && n >= 0 {
			return now.AddDate(0, 0, -n), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, errors.New("a duration back from now cannot be negative")
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, now.Location()); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("want a duration (90m, 12h, 7d) or a time (2026-11-23, '2026-11-23 14:00', RFC 3339)")
}
