package sera_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
)

func TestAuditLog(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.log")
	l := &sera.AuditLog{Path: path}
	exit := 0
	for _, r := range []sera.AuditRecord{
		{Decision: sera.DecisionAccepted, RequestID: "a", Argv: []string{"ping"}, Exit: &exit},
		{Decision: sera.DecisionRejected, Rule: 2, Reason: "unknown client"},
	} {
		if err := l.Audit(r); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"time":"0001-01-01T00:00:00Z","request_id":"a","argv":["ping"],"decision":"accepted","exit":0}
{"time":"0001-01-01T00:00:00Z","decision":"rejected","rule":2,"reason":"unknown client"}
`
	if string(b) != want {
		t.Errorf("audit log\n%s\nwant\n%s", b, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	link := filepath.Join(filepath.Dir(path), "link.log")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if err := (&sera.AuditLog{Path: link}).Audit(sera.AuditRecord{Decision: "x"}); err == nil {
		t.Error("audit log written through a symlink")
	}
}

// Past MaxSize the log moves to .1, .1 to .2, and so on: at most Keep old
// files, none over MaxSize, the newest records kept in order.
func TestAuditLogRotates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := &sera.AuditLog{Path: path, MaxSize: 400, Keep: 2}
	const n = 40
	for i := range n {
		if err := l.Audit(sera.AuditRecord{Decision: sera.DecisionAccepted, RequestID: fmt.Sprintf("%032d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for _, p := range append(sera.RotatedAuditLogs(path, 2), path) {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 400 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %d bytes, mode %v; want at most 400, 0600", filepath.Base(p), fi.Size(), fi.Mode().Perm())
		}
		b, _ := os.ReadFile(p)
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var r sera.AuditRecord
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: %q: %v", p, line, err)
			}
			ids = append(ids, r.RequestID)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("%d files in the directory, want audit.log and 2 old ones", len(entries))
	}
	// The newest records, in order, the last one last.
	if len(ids) == 0 || ids[len(ids)-1] != fmt.Sprintf("%032d", n-1) {
		t.Fatalf("records %v do not end with the last", ids)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("records out of order: %v", ids)
		}
	}
	if len(ids) >= n {
		t.Errorf("%d records kept of %d: nothing was dropped", len(ids), n)
	}
}
