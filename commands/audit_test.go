package commands

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

func TestParseSince(t *testing.T) {
	loc := time.FixedZone("X", 3600)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, loc)
	for in, want := range map[string]time.Time{
		"90m":                  now.Add(-90 * time.Minute),
		"12h":                  now.Add(-12 * time.Hour),
		"7d":                   now.AddDate(0, 0, -7),
		"0s":                   now,
		"2026-11-20":           time.Date(2026, 11, 20, 0, 0, 0, 0, loc),
		"2026-11-20 14:30":     time.Date(2026, 11, 20, 14, 30, 0, 0, loc),
		"2026-11-20T14:30:05":  time.Date(2026, 11, 20, 14, 30, 5, 0, loc),
		"2026-11-20T14:30:05Z": time.Date(2026, 11, 20, 14, 30, 5, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "yesterday", "-1h", "7 d", "2026-13-01", "d"} {
		if got, err := parseSince(in, now); err == nil {
			t.Errorf("parseSince(%q) = %v, want an error", in, got)
		}
	}
}

// auditEnv is a watcher's state directory with an audit log.
func auditEnv(t *testing.T, lines ...string) (*cli.Options, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	env := testEnv(t)
	state := env.Getenv(settings.KeyState)
	if lines != nil {
		if err := os.MkdirAll(state, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(state, "audit.log"), []byte(strings.Join(lines, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var out, errOut bytes.Buffer
	o := &cli.Options{Stdout: &out, Stderr: &errOut, Env: env,
		Now: func() time.Time { return time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC) }}
	return o, &out, &errOut
}

func runAudit(t *testing.T, o *cli.Options, args ...string) error {
	t.Helper()
	root := NewRoot(o)
	root.SetArgs(append([]string{"audit"}, args...))
	return root.Execute()
}

var auditLines = []string{
	`{"time":"2026-11-20T10:00:00Z","client":"fp1","client_name":"admin","request_id":"aa11","argv":["user","add","alice","--comment","A B"],"decision":"accepted","exit":0}`,
	`{"time":"2026-11-23T11:00:00Z","client":"fp2","decision":"rejected","rule":2,"reason":"unknown client"}`,
	`{"time":"2026-11-23T11:30:00Z","client":"fp1","client_name":"admin","request_id":"bb22","argv":["ping"],"decision":"accepted","exit":0}`,
	`{"time":"2026-11-23T11:40:00Z","client":"fp1","clie`, // torn by a crash
}

func TestAuditCommand(t *testing.T) {
	o, out, errOut := auditEnv(t, auditLines...)
	if err := runAudit(t, o); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines:\n%s", len(lines), out)
	}
	for i, want := range [][]string{
		{"accepted", "admin", "user add alice --comment 'A B'", "exit 0", "[aa11]"},
		{"rejected", "fp2", "rule 2: unknown client"},
		{"accepted", "admin", "ping  exit 0", "[bb22]"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	if !strings.Contains(errOut.String(), "line 4 is not an audit record; skipped") {
		t.Errorf("stderr: %q", errOut)
	}

	// --since and --json: the stored lines, as they are.
	o, out, _ = auditEnv(t, auditLines...)
	if err := runAudit(t, o, "--since", "2h", "--json"); err != nil {
		t.Fatal(err)
	}
	if want := auditLines[1] + "\n" + auditLines[2] + "\n"; out.String() != want {
		t.Errorf("--since 2h --json:\n%s\nwant\n%s", out, want)
	}
}

// A rotated log is read too, the oldest file first.
func TestAuditCommandRotated(t *testing.T) {
	o, out, _ := auditEnv(t, auditLines[2])
	state := o.Env.Getenv(settings.KeyState)
	for name, line := range map[string]string{"audit.log.2": auditLines[0], "audit.log.1": auditLines[1]} {
		if err := os.WriteFile(filepath.Join(state, name), []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := runAudit(t, o, "--json"); err != nil {
		t.Fatal(err)
	}
	if want := auditLines[0] + "\n" + auditLines[1] + "\n" + auditLines[2] + "\n"; out.String() != want {
		t.Errorf("rotated logs:\n%s\nwant, oldest first:\n%s", out, want)
	}
}

func TestAuditCommandErrors(t *testing.T) {
	o, out, errOut := auditEnv(t)
	if err := runAudit(t, o); err != nil || out.Len() != 0 || !strings.Contains(errOut.String(), "no audit log at") {
		t.Errorf("no log: %v, stdout %q, stderr %q", err, out, errOut)
	}
	o, _, _ = auditEnv(t, auditLines...)
	err := runAudit(t, o, "--since", "last week")
	if code, _ := cli.ExitCode(err); code != cli.ExitUsage {
		t.Errorf("bad --since: %v (exit %d)", err, code)
	}
	// A link planted at the log's place is not followed.
	o, _, _ = auditEnv(t)
	state := o.Env.Getenv(settings.KeyState)
	os.MkdirAll(state, 0o700)
	if err := os.Symlink("/etc/passwd", filepath.Join(state, "audit.log")); err != nil {
		t.Fatal(err)
	}
	if err := runAudit(t, o); err == nil {
		t.Error("audit followed a symbolic link")
	}
}

// A command that ran and timed out shows both what ran and why it ended.
func TestFormatAuditTimedOut(t *testing.T) {
	exit := 124
	got := formatAudit(sera.AuditRecord{
		Time: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), ClientName: "admin", RequestID: "cc33",
		Argv: []string{"user", "del", "bob"}, Decision: sera.DecisionAccepted, Reason: "timed out after 30s", Exit: &exit,
	})
	if !strings.Contains(got, "user del bob (timed out after 30s)  exit 124  [cc33]") {
		t.Errorf("got %q", got)
	}
}

// TestAuditRemote: 'sera audit --to' reads a watcher's audit log over the
// request path, for a client granted 'audit' only; one without the grant
// is refused and reads nothing.
func TestAuditRemote(t *testing.T) {
	inKHFleet(t, []string{"h1", "h2"}, nil, func(t *testing.T, f *khFleet) {
		for range 3 {
			if _, stderr, err := f.sera("ping", "--to", "h1", "--timeout", "20s"); err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
		}
		stdout, stderr, err := f.sera("audit", "--to", "h1", "--timeout", "20s")
		if err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		if n := strings.Count(stdout, "accepted   admin             ping"); n != 3 {
			t.Errorf("%d accepted pings in h1's audit, want 3:\n%s", n, stdout)
		}
		stdout, stderr, err = f.sera("audit", "--all", "--json", "--tail", "2", "--timeout", "20s")
		if err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
			var r struct {
				Host string
				Data []sera.AuditRecord
			}
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			// h1: the last two of its records; h2: its 'audit' request,
			// running, is all it has.
			if want := map[string]int{"h1": 2, "h2": 1}[r.Host]; len(r.Data) != want {
				t.Errorf("%s: %d records, want %d: %s", r.Host, len(r.Data), want, l)
			}
		}
		// A client allowed ping only may not read it.
		kc := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: f.clientID.Public(), Name: "admin"}}}
		if err := safefile.WriteAtomic(filepath.Join(f.dir, "w-h1", "known_clients"), kc.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, err = f.sera("audit", "--to", "h1", "--timeout", "20s")
		if code, _ := cli.ExitCode(err); code != sera.StatusRejected || stdout != "" || !strings.Contains(stderr, `may not run "audit"`) {
			t.Errorf("audit without the grant: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
}
