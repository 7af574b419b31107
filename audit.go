package sera

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// Audit decisions.
const (
	DecisionAccepted  = "accepted"
	DecisionRejected  = "rejected"
	DecisionDuplicate = "duplicate"
	// DecisionRunning is written, and synced, before an accepted command
	// runs; the accepted record with its exit status follows when it
	// ends. A running record with no accepted one after it is a command
	// the watcher did not see end (a crash).
	DecisionRunning = "running"
)

// AuditRecord is one line of the audit log: one per request, accepted or
// rejected. It never holds secrets: argv is redacted by the Handler, and a
// rejected request's arguments are not logged at all.
type AuditRecord struct {
	Time time.Time `json:"time"`
	// Client and ClientName are the sender once its signature verified
	// (rule 4); ClaimedSender is the key fingerprint an envelope refused
	// before that only claimed.
	Client        string   `json:"client,omitempty"`
	ClientName    string   `json:"client_name,omitempty"`
	ClaimedSender string   `json:"claimed_sender,omitempty"`
	RequestID     string   `json:"request_id,omitempty"`
	Argv          []string `json:"argv,omitempty"`
	Decision      string   `json:"decision"`
	// Rule is the acceptance rule of DESIGN.md that rejected the request.
	Rule   int    `json:"rule,omitempty"`
	Reason string `json:"reason,omitempty"`
	Exit   *int   `json:"exit,omitempty"`
}

// Auditor records audit records.
type Auditor interface {
	Audit(AuditRecord) error
}

// AuditLog appends JSON lines to a file, mode 0600.
type AuditLog struct {
	Path string
	mu   sync.Mutex
}

// Audit appends r as one line and syncs it: the log is evidence, so a
// line reported written must survive a crash.
func (l *AuditLog) Audit(r AuditRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("failed to encode audit record: %w", err)
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.OpenFile(l.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("failed to open audit log: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("failed to write audit log: %w", err)
	}
	return f.Sync()
}
