package commands

import (
	"context"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host/sudo"
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
		{"group only: a group without sudo", []string{"group"}, []string{"group", "members", "add", "carol", "bob"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, r := newGroupTestHost(t)
			writeDropIn("devs", string(sudo.Content("devs", false)))(t, h)
			before := snapshotRoot(t, h.Sys.FS.Root)
			client := &sera.KnownClient{Name: "helpdesk", Allow: tt.allow}
			res := (&Handler{Host: h}).Run(context.Background(), &sera.Call{Argv: tt.argv, Client: client})
			if !tt.refused {
				if res.Status != 0 {
					t.Fatalf("status %d, stderr %s", res.Status, res.Stderr)
				}
				return
			}
			if res.Status == 0 || !strings.Contains(string(res.Stderr), `in group devs, which sudoers grants (/etc/sudoers.d/sera-devs)`) ||
				!strings.Contains(string(res.Stderr), `client helpdesk may not run "sudo grant"`) {
				t.Errorf("status %d, stderr %q; want a refusal naming the sudo drop-in", res.Status, res.Stderr)
			}
			if calls := r.Calls(); len(calls) != 0 {
				t.Errorf("ran %v", calls)
			}
			sameSnapshot(t, "refused", before, snapshotRoot(t, h.Sys.FS.Root))
		})
	}
	// --local is root on the host already: no caller to check.
	h, _ := newGroupTestHost(t)
	writeDropIn("devs", string(sudo.Content("devs", false)))(t, h)
	if res := runGroupSudo(h, "group", "members", "add", "devs", "bob"); res.Status != 0 {
		t.Errorf("--local: status %d, stderr %s", res.Status, res.Stderr)
	}
}

// The escalation paths of issue 12, each tried by a client allowed
// user, key and group but not sudo: refused, nothing ran, nothing
// changed. The same requests from a client that may grant sudo go
// through (to the point where the host's own checks decide).
func TestNoPathFromAccountsToSudo(t *testing.T) {
	key, _ := acctKey(t, "mallory@laptop")
	alicesKey, alicesPK := acctKey(t, "alice@laptop")
	tests := []struct {
		name string
		argv []string
		why  string
	}{
		{"--gid of a group sudoers grants", []string{"user", "add", "--gid=1003", "--", "mallory2"}, "group dev, which sudoers grants"},
		{"--update --gid on bob", []string{"user", "add", "--update", "--gid=1003", "--", "bob"}, "group dev, which sudoers grants"},
		{"--groups ops", []string{"user", "add", "--groups=ops", "--", "eve"}, "group ops, which sudoers grants"},
		{"--set-groups ops on bob", []string{"user", "add", "--update", "--set-groups=ops", "--", "bob"}, "group ops, which sudoers grants"},
		{"key on alice (sudo group)", []string{"key", "add", "--", "alice", key}, "group sudo, which is root-equivalent"},
		{"key sync on alice", []string{"key", "sync", "--", "alice", key}, "group sudo, which is root-equivalent"},
		{"user add --key on alice", []string{"user", "add", "--update", "--key=" + key, "--", "alice"}, "root-equivalent"},
		{"password hash of alice", []string{"user", "add", "--update", "--password-hash=" + acctShadowHash, "--", "alice"}, "root-equivalent"},
		{"shell of alice", []string{"user", "add", "--update", "--shell=/bin/sh", "--", "alice"}, "root-equivalent"},
		{"unlock alice", []string{"user", "unlock", "--", "alice"}, "root-equivalent"},
		{"a user sudoers names", []string{"user", "add", "--key=" + key, "--", "mallory"}, "names user mallory"},
		{"a uid sudoers names", []string{"user", "add", "--uid=1600", "--", "eve"}, "UID names uid 1600"},
		{"a free uid sudoers names", []string{"user", "add", "--", "eve"}, "UID names the free uid 1600"},
		{"a group sudoers names", []string{"group", "add", "--", "admins"}, "sudoers grants group admins"},
		{"a gid sudoers names", []string{"group", "add", "--gid=1700", "--", "newg"}, "GID sudoers grants gid 1700"},
		{"a free gid sudoers names", []string{"group", "add", "--", "newg"}, "GID sudoers grants the free gid 1700"},
		{"a new user's free gid", []string{"user", "add", "--uid=1650", "--", "eve"}, "GID names the free gid 1700"},
		{"members add to dev", []string{"group", "members", "add", "dev", "bob"}, "group dev, which sudoers grants"},
		{"members add to ops", []string{"group", "members", "add", "ops", "bob"}, "group ops, which sudoers grants"},
		{"bob into alice's own group", []string{"group", "members", "add", "alice", "bob"}, "the primary group of alice, who can sudo"},
		{"alice out of a group", []string{"group", "members", "remove", "ops", "alice"}, "root-equivalent"},
		{"delete alice's group", []string{"group", "del", "ops"}, "root-equivalent"},
		{"alice's keys removed", []string{"key", "remove", "--", "alice", "SHA256:KEYFP"}, "root-equivalent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAccountsFixture(t)
			f.mkdir("etc/sudoers.d", 0o750, 0, 0)
			f.writeFile("etc/sudoers", "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n", 0o440, 0, 0)
			f.writeFile("etc/sudoers.d/sera-dev", "%dev ALL=(ALL) NOPASSWD: ALL\n", 0o440, 0, 0)
			extra := ""
			why := tt.why
			if w, ok := strings.CutPrefix(why, "UID "); ok {
				extra, why = "#1600 ALL=(ALL) ALL\n", w
			} else if w, ok := strings.CutPrefix(why, "GID "); ok {
				extra, why = "User_Alias ADMINS2 = %#1700\nADMINS2 ALL=(ALL) ALL\n", w
			}
			f.writeFile("etc/sudoers.d/other", "%ops ALL=(ALL) /usr/bin/true\nmallory ALL=(ALL) NOPASSWD: ALL\n"+
				"User_Alias ADMINS = %admins\nADMINS ALL=(ALL) ALL\n"+extra, 0o440, 0, 0)
			f.writeKeys("alice", acctBlock(alicesKey))
			for i, a := range tt.argv {
				if a == "SHA256:KEYFP" {
					tt.argv[i] = acctFP(alicesPK)
				}
			}
			before := f.snapshot()
			narrow := &sera.KnownClient{Name: "helpdesk", Allow: []string{"user", "key", "group"}}
			h := &Handler{Host: f.Host}
			res := asWatcher(h, narrow, tt.argv...)
			if res.Status == 0 || !strings.Contains(string(res.Stderr), why) || !strings.Contains(string(res.Stderr), `may not run "sudo grant"`) {
				t.Fatalf("status %d, stderr %q; want a refusal saying %q", res.Status, res.Stderr, tt.why)
			}
			if calls := f.Runner.Calls(); len(calls) != 0 {
				t.Errorf("ran %v", calls)
			}
			f.unchanged(before)
			// With the sudo grant it is not this guard that stops it.
			wide := &sera.KnownClient{Name: "admin", Allow: []string{"user", "key", "group", "sudo"}}
			if res := asWatcher(h, wide, tt.argv...); strings.Contains(string(res.Stderr), "needs the sudo grant") {
				t.Errorf("with the sudo grant: %s", res.Stderr)
			}
		})
	}
}

// Access that only shrinks, and accounts sudo does not reach, need no sudo.
func TestAccountsWithoutSudoStayOpen(t *testing.T) {
	key, _ := acctKey(t, "helpdesk")
	f := newAccountsFixture(t)
	f.mkdir("etc/sudoers.d", 0o750, 0, 0)
	f.writeFile("etc/sudoers", "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL # admins\n@includedir /etc/sudoers.d\n", 0o440, 0, 0)
	narrow := &sera.KnownClient{Name: "helpdesk", Allow: []string{"user", "key", "group"}}
	h := &Handler{Host: f.Host}
	for _, argv := range [][]string{
		{"key", "add", "--", "bob", key},
		{"user", "add", "--key=" + key, "--groups=dev", "--", "eve"},
		{"user", "lock", "--", "alice"},
		{"key", "list", "--", "alice"},
		{"group", "members", "add", "dev", "bob"},
		{"group", "add", "--", "web"},
	} {
		// The fixture has no gpasswd or groupadd: those fail after the
		// guard, which is all this test is about.
		if res := asWatcher(h, narrow, argv...); res.Status == -1 || strings.Contains(string(res.Stderr), "needs the sudo grant") ||
			res.Status != 0 && !strings.Contains(string(res.Stderr), "not a program the fake host has") {
			t.Errorf("%v: status %d, stderr %s", argv, res.Status, res.Stderr)
		}
	}
}

// Self-service reaches the client's own account only, and not even that
// when the account can sudo (the client's key is then a way to root).
func TestSelfServiceKeys(t *testing.T) {
	key, _ := acctKey(t, "mine")
	f := newAccountsFixture(t)
	f.mkdir("etc/sudoers.d", 0o750, 0, 0)
	f.writeFile("etc/sudoers", "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n", 0o440, 0, 0)
	h := &Handler{Host: f.Host}
	bob := &sera.KnownClient{Name: "bob", Allow: []string{sera.SelfGrant}, Account: "bob"}
	if res := asWatcher(h, bob, "key", "add", "--", "bob", key); res.Status != 0 {
		t.Fatalf("bob's own key: status %d, stderr %s", res.Status, res.Stderr)
	}
	if !strings.Contains(f.keys("bob"), key) {
		t.Errorf("bob's key not added:\n%s", f.keys("bob"))
	}
	before := f.snapshot()
	f.Runner.Reset()
	for _, argv := range [][]string{
		{"key", "add", "--", "alice", key},
		{"user", "add", "--update", "--key=" + key, "--", "bob"},
		{"user", "lock", "--", "bob"},
	} {
		if res := asWatcher(h, bob, argv...); res.Status != -1 {
			t.Errorf("%v: status %d, stderr %s; want a refusal by rule 8", argv, res.Status, res.Stderr)
		}
	}
	alice := &sera.KnownClient{Name: "alice", Allow: []string{sera.SelfGrant}, Account: "alice"}
	if res := asWatcher(h, alice, "key", "add", "--", "alice", key); res.Status == 0 || !strings.Contains(string(res.Stderr), "needs the sudo grant") {
		t.Errorf("self-service on an account that can sudo: status %d, stderr %s", res.Status, res.Stderr)
	}
	if calls := f.Runner.Calls(); len(calls) != 0 {
		t.Errorf("ran %v", calls)
	}
	f.unchanged(before)
}
