package commands

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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

func (t *hostTree) auditCmd() *cobra.Command {
	var since string
	var asJSON bool
	var tail int
	c := &cobra.Command{
		Use:   "audit",
		Short: "Show a host's audit log: every request its watcher got",
		Long: `Show the watcher's audit log, $SERA_STATE/audit.log (` + install.StateDir + `/audit.log
as root): one record per request, accepted or rejected, with the time, the
client's fingerprint and name, the request id, the command line (secrets
masked; none for a rejected request), the decision, the rule that refused it
and the exit status. Without --to it reads this machine's (run it as
root on a host); with --to, --group or --all each watcher sends its own, to
a client granted 'audit' (which shows every client's requests, secrets
masked: grant it to auditors, not to everyone). The log is rotated by size
(SERA_AUDIT_MAX_MB, SERA_AUDIT_KEEP): the old files, audit.log.1 and on,
are read too, oldest first. --tail keeps a remote answer short.

Under systemd the same records are in the journal with the fields
SERA_CLIENT, SERA_CLIENT_NAME, SERA_REQUEST_ID, SERA_ARGV, SERA_DECISION,
SERA_EXIT, SERA_RULE and SERA_REASON:

  journalctl -u sera SERA_DECISION=rejected
  journalctl -u sera -o verbose SERA_REQUEST_ID=…`,
		Example: "  sera audit --since 1h\n  sera audit --since 2026-11-23 --json",
		Args:    cli.UsageArgs(cobra.NoArgs),
		PreRunE: func(c *cobra.Command, args []string) error {
			if since != "" {
				if _, err := parseSince(since, time.Now()); err != nil {
					return cli.UsageErr("invalid --since %q: %v", since, err)
				}
			}
			if tail < 0 {
				return cli.UsageErr("invalid --tail %d: want a number of records, 0 for all", tail)
			}
			return nil
		},
	}
	c.Flags().StringVar(&since, "since", "", "only records from this time on: a duration back from now (90m, 12h, 7d) or a date and time (2026-11-23, '2026-11-23 14:00', RFC 3339)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the records as they are stored, one JSON object per line")
	c.Flags().IntVar(&tail, "tail", 0, "only the last N records (after --since)")
	return t.leaf(c, true, func(ctx context.Context, h *Host, out, errOut io.Writer, _ []string) error {
		now := h.Sys.Now()
		var from time.Time
		if since != "" {
			t, err := parseSince(since, now)
			if err != nil {
				return cli.UsageErr("invalid --since %q: %v", since, err)
			}
			from = t
		}
		keep := sera.DefaultAuditKeep
		if h.Config != nil {
			keep = h.Config.Int(settings.KeyAuditKeep)
		}
		path := h.auditLog()
		// The rotated files first, oldest first: every record kept, in
		// order.
		paths := append(sera.RotatedAuditLogs(path, keep), path)
		var lines []string
		for i, p := range paths {
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
			switch {
			case errors.Is(err, fs.ErrNotExist) && i == len(paths)-1 && len(paths) == 1:
				fmt.Fprintf(errOut, "no audit log at %s: this watcher has had no request yet\n", path)
				return nil
			case errors.Is(err, fs.ErrNotExist):
				// Rotated away between the listing and now.
				continue
			case errors.Is(err, fs.ErrPermission):
				return fmt.Errorf("cannot read the audit log %s: run 'sera audit' as root", p)
			case err != nil:
				return fmt.Errorf("cannot read the audit log: %w", err)
			}
			got, err := readAudit(f, errOut, p, from, asJSON)
			f.Close()
			if err != nil {
				return err
			}
			lines = append(lines, got...)
			if tail > 0 && len(lines) > tail {
				lines = lines[len(lines)-tail:]
			}
		}
		bw := bufio.NewWriter(out)
		for _, l := range lines {
			bw.WriteString(l)
			bw.WriteByte('\n')
		}
		return bw.Flush()
	})
}

// maxAuditLine bounds one record; argv fits in one request, at most 1 MiB.
const maxAuditLine = 4 << 20

// readAudit returns the records of r from from on, as stored (asJSON) or
// formatted for people.
func readAudit(r io.Reader, errOut io.Writer, path string, from time.Time, asJSON bool) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxAuditLine)
	var out []string
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
			out = append(out, string(line))
			continue
		}
		out = append(out, formatAudit(rec))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", path, err)
	}
	return out, nil
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
