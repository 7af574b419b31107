package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/sera-dev/sera"
)

// AuditMessageID is the journal MESSAGE_ID of every audit entry:
// journalctl MESSAGE_ID=14ac04408b7a4036a34422e9c39b9ce5 lists them all.
const AuditMessageID = "14ac04408b7a4036a34422e9c39b9ce5"

// JournalSend sends one journal entry; journal.Send has this signature.
type JournalSend func(message string, priority journal.Priority, vars map[string]string) error

// Audit is the watcher's audit sink. Every record is a JSON line in the
// audit file — fsynced, kept however journald is configured (volatile
// storage, size limits), and what 'sera audit' reads — and, when journald
// runs, also a journal entry with structured fields, so 'journalctl -u
// sera' shows every request and can filter on them
// (journalctl -u sera SERA_DECISION=rejected).
type Audit struct {
	File sera.Auditor
	// Journal is nil when journald does not run.
	Journal JournalSend
}

// NewAudit writes the JSON lines to path, and to journald if it runs.
// The file is rotated past maxSize bytes, keeping keep old files (see
// sera.AuditLog).
func NewAudit(path string, maxSize int64, keep int) *Audit {
	a := &Audit{File: &sera.AuditLog{Path: path, MaxSize: maxSize, Keep: keep}}
	if journal.Enabled() {
		a.Journal = journal.Send
	}
	return a
}

// Audit implements sera.Auditor. A failure of either sink is reported;
// the other is still written.
func (a *Audit) Audit(r sera.AuditRecord) error {
	err := a.File.Audit(r)
	if a.Journal != nil {
		if jerr := a.Journal(JournalMessage(r), journalPriority(r), JournalFields(r)); jerr != nil {
			err = errors.Join(err, fmt.Errorf("failed to send audit record to journald: %w", jerr))
		}
	}
	return err
}

func journalPriority(r sera.AuditRecord) journal.Priority {
	if r.Decision == sera.DecisionRejected {
		return journal.PriNotice
	}
	return journal.PriInfo
}

// JournalFields are the structured fields of an audit entry: SERA_CLIENT
// (fingerprint), SERA_CLIENT_NAME, SERA_REQUEST_ID, SERA_ARGV (a JSON
// array, secrets masked), SERA_DECISION, SERA_EXIT, SERA_RULE and
// SERA_REASON; the empty ones are left out.
func JournalFields(r sera.AuditRecord) map[string]string {
	f := map[string]string{
		"SYSLOG_IDENTIFIER": "sera",
		"MESSAGE_ID":        AuditMessageID,
		"SERA_DECISION":     r.Decision,
	}
	set := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	set("SERA_CLIENT", r.Client)
	set("SERA_CLIENT_NAME", r.ClientName)
	set("SERA_CLAIMED_SENDER", r.ClaimedSender)
	set("SERA_REQUEST_ID", r.RequestID)
	if len(r.Argv) > 0 {
		b, _ := json.Marshal(r.Argv)
		f["SERA_ARGV"] = string(b)
	}
	if r.Exit != nil {
		f["SERA_EXIT"] = strconv.Itoa(*r.Exit)
	}
	if r.Rule != 0 {
		f["SERA_RULE"] = strconv.Itoa(r.Rule)
	}
	set("SERA_REASON", r.Reason)
	return f
}

// JournalMessage is the MESSAGE of an audit entry, one line for people:
// "accepted: admin (fingerprint) ran user add alice: exit 0".
func JournalMessage(r sera.AuditRecord) string {
	who := r.Client
	if r.ClientName != "" {
		who = r.ClientName + " (" + r.Client + ")"
	}
	if who == "" && r.ClaimedSender != "" {
		who = "a sender claiming key " + r.ClaimedSender
	}
	if who == "" {
		who = "unidentified sender"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "audit: %s: %s", r.Decision, who)
	if len(r.Argv) > 0 {
		fmt.Fprintf(&b, " ran %s", strings.Join(r.Argv, " "))
	}
	if r.Exit != nil {
		fmt.Fprintf(&b, ": exit %d", *r.Exit)
	}
	if r.Reason != "" {
		if r.Rule != 0 {
			fmt.Fprintf(&b, " (rule %d: %s)", r.Rule, r.Reason)
		} else {
			fmt.Fprintf(&b, " (%s)", r.Reason)
		}
	}
	if r.RequestID != "" {
		fmt.Fprintf(&b, " [request %s]", r.RequestID)
	}
	return b.String()
}
