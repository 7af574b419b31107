package install

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/sera-dev/sera"
)

type sent struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

func TestAuditToJournalAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var got []sent
	a := &Audit{File: &sera.AuditLog{Path: path}, Journal: func(msg string, p journal.Priority, vars map[string]string) error {
		got = append(got, sent{msg, p, vars})
		return nil
	}}
	exit := 0
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	recs := []sera.AuditRecord{
		{Time: at, Client: "fp1", ClientName: "admin", RequestID: "id1", Argv: []string{"user", "add", "alice", "--comment", "A B"}, Decision: sera.DecisionAccepted, Exit: &exit},
		{Time: at, ClaimedSender: "fp2", Decision: sera.DecisionRejected, Rule: 2, Reason: "unknown client"},
	}
	for _, r := range recs {
		if err := a.Audit(r); err != nil {
			t.Fatal(err)
		}
	}
	want := []sent{
		{"audit: accepted: admin (fp1) ran user add alice --comment A B: exit 0 [request id1]", journal.PriInfo, map[string]string{
			"SYSLOG_IDENTIFIER": "sera", "MESSAGE_ID": AuditMessageID,
			"SERA_CLIENT": "fp1", "SERA_CLIENT_NAME": "admin", "SERA_REQUEST_ID": "id1",
			"SERA_ARGV": `["user","add","alice","--comment","A B"]`, "SERA_DECISION": "accepted", "SERA_EXIT": "0",
		}},
		{"audit: rejected: a sender claiming key fp2 (rule 2: unknown client)", journal.PriNotice, map[string]string{
			"SYSLOG_IDENTIFIER": "sera", "MESSAGE_ID": AuditMessageID,
			"SERA_CLAIMED_SENDER": "fp2", "SERA_DECISION": "rejected", "SERA_RULE": "2", "SERA_REASON": "unknown client",
		}},
	}
	if len(got) != len(want) {
		t.Fatalf("sent %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].msg != want[i].msg || got[i].pri != want[i].pri || !maps.Equal(got[i].fields, want[i].fields) {
			t.Errorf("entry %d:\n%+v\nwant\n%+v", i, got[i], want[i])
		}
	}
	// The JSON lines are written too: 'sera audit' reads them.
	b, err := os.ReadFile(path)
	if err != nil || strings.Count(string(b), "\n") != 2 || !strings.Contains(string(b), `"decision":"rejected"`) {
		t.Errorf("audit file: %v\n%s", err, b)
	}
}

// One sink failing does not stop the other; both failures are reported.
func TestAuditSinkFailures(t *testing.T) {
	dir := t.TempDir()
	journalDown := errors.New("journald gone")
	var sentOne bool
	a := &Audit{File: &sera.AuditLog{Path: filepath.Join(dir, "missing", "audit.log")}, Journal: func(string, journal.Priority, map[string]string) error {
		sentOne = true
		return nil
	}}
	if err := a.Audit(sera.AuditRecord{Decision: sera.DecisionAccepted}); err == nil || !sentOne {
		t.Errorf("file failure: err %v, journal written %v", err, sentOne)
	}
	path := filepath.Join(dir, "audit.log")
	a = &Audit{File: &sera.AuditLog{Path: path}, Journal: func(string, journal.Priority, map[string]string) error { return journalDown }}
	if err := a.Audit(sera.AuditRecord{Decision: sera.DecisionAccepted}); !errors.Is(err, journalDown) {
		t.Errorf("journal failure: %v", err)
	}
	if b, _ := os.ReadFile(path); len(b) == 0 {
		t.Error("file not written when journald failed")
	}
}

func TestJournalFieldNames(t *testing.T) {
	exit := 1
	f := JournalFields(sera.AuditRecord{Client: "c", ClientName: "n", RequestID: "r", Argv: []string{"ping"}, Decision: "accepted", Rule: 8, Reason: "x", Exit: &exit})
	for k := range f {
		// journald's rule: uppercase letters, digits and underscores,
		// not starting with an underscore.
		if k == "" || k[0] == '_' || strings.Trim(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
			t.Errorf("invalid journal field name %q", k)
		}
	}
	for _, k := range []string{"SERA_CLIENT", "SERA_REQUEST_ID", "SERA_ARGV", "SERA_DECISION", "SERA_EXIT"} {
		if f[k] == "" {
			t.Errorf("%s missing", k)
		}
	}
}
