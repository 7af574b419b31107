package sera

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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

// AuditLog appends JSON lines to a file, mode 0600. With MaxSize set, a
// record that would take the file past MaxSize bytes first moves it to
// PATH.1 (PATH.1 to PATH.2, and so on), keeping Keep old files; the oldest
// beyond them is removed. So the log never holds more than about
// MaxSize × (Keep+1) bytes, however many requests come.
type AuditLog struct {
	Path    string
	MaxSize int64
	Keep    int
	mu      sync.Mutex
}

// Defaults of the audit log's rotation (SERA_AUDIT_MAX_SIZE and
// SERA_AUDIT_KEEP): at ~200 bytes a request, 10 MiB holds some 50,000.
const (
	DefaultAuditMaxSize = 10 << 20
	DefaultAuditKeep    = 5
)

// RotatedAuditLogs are the old files of the audit log at path, oldest
// first, as many as exist of PATH.keep … PATH.1.
func RotatedAuditLogs(path string, keep int) []string {
	var out []string
	for i := keep; i >= 1; i-- {
		p := fmt.Sprintf("%s.%d", path, i)
		if _, err := os.Lstat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
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
	f, err := l.open()
	if err != nil {
		return err
	}
	if l.MaxSize > 0 {
		fi, err := f.Stat()
		if err == nil && fi.Size() > 0 && fi.Size()+int64(len(b)) > l.MaxSize {
			f.Close()
			if err := l.rotate(); err != nil {
				return fmt.Errorf("failed to rotate audit log: %w", err)
			}
			if f, err = l.open(); err != nil {
				return err
			}
		}
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("failed to write audit log: %w", err)
	}
	return f.Sync()
}

func (l *AuditLog) open() (*os.File, error) {
	f, err := os.OpenFile(l.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("failed to open audit log: %w", err)
	}
	return f, nil
}

// rotate shifts PATH.i to PATH.i+1, from the oldest kept, then PATH to
// PATH.1, and syncs the directory: each rename is atomic, so a crash
// between two leaves every record in some file.
func (l *AuditLog) rotate() error {
	keep := max(l.Keep, 1)
	if err := os.Remove(fmt.Sprintf("%s.%d", l.Path, keep)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for i := keep - 1; i >= 1; i-- {
		err := os.Rename(fmt.Sprintf("%s.%d", l.Path, i), fmt.Sprintf("%s.%d", l.Path, i+1))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(l.Path, l.Path+".1"); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(l.Path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
