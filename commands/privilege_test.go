package commands

import (
	"context"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
)

// A client allowed "group" (or "user") but not "sudo" must not be able to
// hand out sudo by joining users to a group sera granted sudo.
func TestMembershipCarryingSudoNeedsSudoPermission(t *testing.T) {
	tests := []struct {
		name    string
		allow   []string
		argv    []string
		refused bool
	}{
		{"group only: members add to a sudo group", []string{"group"}, []string{"group", "members", "add", "devs", "bob"}, true},
		{"user only: add with --groups of a sudo group", []string{"user"}, []string{"user", "add", "--groups=devs", "--", "dave"}, true},
		{"user only: --set-groups with a sudo group", []string{"user"}, []string{"user", "add", "--set-groups=devs", "--update", "--", "bob"}, true},
		{"group and sudo grant", []string{"group", "sudo grant"}, []string{"group", "members", "add", "devs", "bob"}, false},
		{"everything", []string{sera.AllowAll}, []string{"group", "members", "add", "devs", "bob"}, false},
		{"group only: a group without sudo", []string{"group"}, []string{"group", "members", "add", "ops", "bob"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, r := newGroupTestHost(t)
			writeDropIn("devs", string(sudoersContent("devs", false)))(t, h)
			before := snapshotRoot(t, h.Root)
			client := &sera.KnownClient{Name: "helpdesk", Allow: tt.allow}
			res := (&Handler{Host: h}).Run(context.Background(), &sera.Call{Argv: tt.argv, Client: client})
			if !tt.refused {
				if res.Status != 0 {
					t.Fatalf("status %d, stderr %s", res.Status, res.Stderr)
				}
				return
			}
			if res.Status == 0 || !strings.Contains(string(res.Stderr), `membership of devs carries sudo`) ||
				!strings.Contains(string(res.Stderr), `client helpdesk may not run "sudo grant"`) {
				t.Errorf("status %d, stderr %q; want a refusal naming the sudo drop-in", res.Status, res.Stderr)
			}
			if calls := r.Calls(); len(calls) != 0 {
				t.Errorf("ran %v", calls)
			}
			sameSnapshot(t, "refused", before, snapshotRoot(t, h.Root))
		})
	}
	// --local is root on the host already: no caller to check.
	h, _ := newGroupTestHost(t)
	writeDropIn("devs", string(sudoersContent("devs", false)))(t, h)
	if res := runGroupSudo(h, "group", "members", "add", "devs", "bob"); res.Status != 0 {
		t.Errorf("--local: status %d, stderr %s", res.Status, res.Stderr)
	}
}
