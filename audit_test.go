package sera_test

import (
	"os"
	"path/filepath"
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
