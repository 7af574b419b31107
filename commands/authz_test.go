package commands

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
)

// asWatcher runs argv for client the way the watcher does: Resolve, the
// path check of rule 8 (Allows), the scope check (Authorize), then Run.
// A refusal is returned as status -1 with its reason; nothing ran.
func asWatcher(h *Handler, client *sera.KnownClient, argv ...string) sera.Result {
	command, err := h.Resolve(argv)
	if command != "" && !client.Allows(command) {
		return sera.Result{Status: -1, Stderr: []byte("client " + client.Name + " may not run " + command)}
	}
	// The scope before the validation, as the watcher does.
	var perm *sera.PermissionError
	if aerr := h.Authorize(client, argv); errors.As(aerr, &perm) {
		return sera.Result{Status: -1, Stderr: []byte(perm.Reason)}
	}
	if err != nil {
		return sera.Result{Status: -1, Stderr: []byte(err.Error())}
	}
	return h.Run(context.Background(), &sera.Call{Argv: argv, Command: command, Client: client})
}

func client(t *testing.T, name, allow, account string) *sera.KnownClient {
	t.Helper()
	a, err := sera.ParseAllow(allow)
	if err != nil {
		t.Fatal(err)
	}
	return &sera.KnownClient{Key: newKey(t), Name: name, Allow: a, Account: account}
}

// Every runnable host command has a decision on what a scoped grant
// narrows; a new command without one fails here, not in production.
func TestEveryHostCommandHasASubject(t *testing.T) {
	leaves := hostLeaves()
	for _, l := range leaves {
		if _, ok := commandSubjects[l]; !ok {
			t.Errorf("host command %q has no entry in commandSubjects", l)
		}
	}
	for c := range commandSubjects {
		if !slices.Contains(leaves, c) {
			t.Errorf("commandSubjects names %q, which is not a host command", c)
		}
	}
}

func TestScopedGrants(t *testing.T) {
	tests := []struct {
		allow, account string
		argv           []string
		refused        string // "" when allowed
	}{
		{"key(alice)", "", []string{"key", "list", "--", "alice"}, ""},
		{"key(alice)", "", []string{"key", "list", "--", "bob"}, `may not run "key list" on account bob`},
		{"key.list(al*)", "", []string{"key", "list", "--", "alice"}, ""},
		{"key.list(al*)", "", []string{"key", "list", "--", "bob"}, "on account bob"},
		{"self", "alice", []string{"key", "list", "--", "alice"}, ""},
		{"self", "alice", []string{"key", "list", "--", "bob"}, "on account bob"},
		{"self", "alice", []string{"user", "show", "--", "alice"}, `may not run user show`},
		{"user(ext-*)", "", []string{"user", "list"}, "acts on no one account"},
		{"user(ext-*)", "", []string{"user", "show", "--", "ext-1"}, ""},
		{"user(ext-*)", "", []string{"user", "show", "--", "bob"}, "on account bob"},
		{"user(ext-*)", "", []string{"user", "add", "--groups=ops", "--", "ext-1"}, "may not put accounts into group ops"},
		{"user(ext-*)", "", []string{"user", "add", "--set-groups=ops", "--", "ext-1"}, "may not put accounts into group ops"},
		{"user(ext-*)", "", []string{"user", "add", "--gid=1001", "--", "ext-1"}, "--gid needs an unscoped user.add grant"},
		{"group(devs)", "", []string{"group", "members", "add", "ops", "bob"}, "on group ops"},
		// Out of scope is said before the host's state is: nothing is
		// learnt of a group outside the grant.
		{"group(devs)", "", []string{"group", "members", "add", "nosuch", "bob"}, `may not run "group members add" on group nosuch`},
		{"group(devs)", "", []string{"group", "list"}, "acts on no one account"},
		{"sudo(devs)", "", []string{"sudo", "grant", "ops"}, "on group ops"},
		{"allow(443)", "", []string{"allow", "--", "203.0.113.7"}, "on port 22"},
		{"allow(443)", "", []string{"allow", "--list"}, "acts on every port"},
		{"disallow(443)", "", []string{"disallow", "--", "203.0.113.7"}, "acts on every port"},
		{"disallow(443)", "", []string{"disallow", "--port=80", "--", "203.0.113.7"}, "on port 80"},
	}
	for _, tt := range tests {
		t.Run(tt.allow+" "+strings.Join(tt.argv, " "), func(t *testing.T) {
			h, r := newGroupTestHost(t)
			h.Sys.Clock = testHandler(t).Host.Sys.Clock
			before := snapshotRoot(t, h.Sys.FS.Root)
			res := asWatcher(&Handler{Host: h}, client(t, "helpdesk", tt.allow, tt.account), tt.argv...)
			if tt.refused == "" {
				// Authorized: what the command then does is its own.
				if res.Status == -1 {
					t.Fatalf("refused: %s", res.Stderr)
				}
				return
			}
			if res.Status == 0 || !strings.Contains(string(res.Stderr), tt.refused) {
				t.Fatalf("status %d, stderr %q; want a refusal with %q", res.Status, res.Stderr, tt.refused)
			}
			if calls := r.Calls(); len(calls) != 0 {
				t.Errorf("ran %v", calls)
			}
			sameSnapshot(t, "refused", before, snapshotRoot(t, h.Sys.FS.Root))
		})
	}
}

func TestGrantScopesValidated(t *testing.T) {
	for _, bad := range []string{"clients(x)", "hostkey(web1)", "allow(alice)", "key(22)", "user.list(ext-*)", "self(x)"} {
		if _, err := checkAllow(bad); err == nil {
			t.Errorf("checkAllow(%q) accepted it", bad)
		}
	}
	for _, ok := range []string{"key(alice|bob)", "user(ext-*),group(ext)", "allow(22|8000-8099)", "sudo.grant(devs)", "self", "*"} {
		if _, err := checkAllow(ok); err != nil {
			t.Errorf("checkAllow(%q): %v", ok, err)
		}
	}
}

// A client allowed "clients" hands out only what it holds itself, and
// cannot change or remove a client holding more.
func TestClientsCannotEscalate(t *testing.T) {
	admin, other := newKey(t), newKey(t)
	tests := []struct {
		caller, account string
		argv            []string
		refused         string
	}{
		// The first example: ping,clients adds its own key with '*'.
		{"clients", "", []string{"clients", "add", "--name=alice", "--allow=*", "--", "SELF"}, "may not grant '*'"},
		{"clients", "", []string{"clients", "add", "--name=carol", "--allow=user", "--", "NEW"}, `may not grant "user add"`},
		{"clients", "", []string{"clients", "add", "--name=carol", "--allow=sudo.grant", "--", "NEW"}, `may not grant "sudo grant"`},
		{"clients", "", []string{"clients", "remove", "--", "root-admin"}, "holds grants the caller lacks"},
		{"clients", "", []string{"clients", "add", "--name=root-admin", "--allow=clients", "--", "ADMIN"}, "holds grants the caller lacks"},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--allow=key", "--", "NEW"}, `may not grant "key add"`},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--allow=key(*)", "--", "NEW"}, `on *`},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--allow=key(ext-joe)", "--", "NEW"}, ""},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--allow=key(ext-*)", "--", "NEW"}, ""},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--allow=key(ext-*|bob)", "--", "NEW"}, "on bob"},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--account=bob", "--allow=self", "--", "NEW"}, "on bob"},
		{"clients,key(ext-*)", "", []string{"clients", "add", "--name=carol", "--account=ext-c", "--allow=self", "--", "NEW"}, ""},
		{"clients,self", "alice", []string{"clients", "add", "--name=carol", "--allow=key(alice)", "--", "NEW"}, ""},
		{"clients,self", "alice", []string{"clients", "add", "--name=carol", "--allow=key", "--", "NEW"}, "may not grant"},
		{"clients,user.add", "", []string{"clients", "add", "--name=carol", "--allow=user", "--", "NEW"}, `may not grant "user del"`},
		{"clients,user", "", []string{"clients", "add", "--name=carol", "--allow=user.add,clients", "--", "NEW"}, ""},
		{"clients,user", "", []string{"clients", "remove", "--", "narrow"}, ""},
		{"clients,user", "", []string{"clients", "add", "--name=narrow", "--allow=user", "--", "OTHER"}, ""},
		{"*", "", []string{"clients", "add", "--name=carol", "--allow=*", "--", "NEW"}, ""},
		{"*", "", []string{"clients", "remove", "--", "root-admin"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.caller+" "+strings.Join(tt.argv, " "), func(t *testing.T) {
			h := testHandler(t)
			self := client(t, "helpdesk", tt.caller, tt.account)
			kc := &sera.KnownClients{Clients: []*sera.KnownClient{
				{Key: admin, Name: "root-admin", Allow: []string{sera.AllowAll}},
				{Key: other, Name: "narrow", Allow: []string{"user add"}},
				self,
			}}
			if err := os.WriteFile(h.Host.KnownClients, kc.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(h.Host.KnownClients)
			argv := slices.Clone(tt.argv)
			for i, a := range argv {
				switch a {
				case "SELF":
					argv[i] = self.Key.String()
				case "NEW":
					argv[i] = newKey(t).String()
				case "ADMIN":
					argv[i] = admin.String()
				case "OTHER":
					argv[i] = other.String()
				}
			}
			res := asWatcher(h, self, argv...)
			after, _ := os.ReadFile(h.Host.KnownClients)
			if tt.refused == "" {
				if res.Status != 0 || string(after) == string(before) {
					t.Fatalf("status %d, stderr %s; file changed: %v", res.Status, res.Stderr, string(after) != string(before))
				}
				return
			}
			if res.Status == 0 || !strings.Contains(string(res.Stderr), tt.refused) {
				t.Fatalf("status %d, stderr %q; want a refusal with %q", res.Status, res.Stderr, tt.refused)
			}
			if string(after) != string(before) {
				t.Errorf("known_clients changed:\n%s", after)
			}
		})
	}
}

func TestClientsAddRecordsWhenAndWarnsOfRoot(t *testing.T) {
	h := testHandler(t)
	key := newKey(t).String()
	add := func(allow string) sera.Result {
		return h.Run(context.Background(), &sera.Call{Argv: []string{"clients", "add", "--name=ops", "--allow=" + allow, "--", key}})
	}
	if res := add("*"); res.Status != 0 || !strings.Contains(string(res.Stderr), "warning: client ops is root-equivalent on this host (*)") {
		t.Fatalf("status %d, stderr %q", res.Status, res.Stderr)
	}
	first, _ := os.ReadFile(h.Host.KnownClients)
	if !strings.Contains(string(first), " ops * added=2026-11-23T12:00:00Z\n") {
		t.Fatalf("known_clients:\n%s", first)
	}
	if res := add("*"); res.Status != 0 || !strings.Contains(string(res.Stdout), "already present") {
		t.Fatalf("again: status %d, stdout %q", res.Status, res.Stdout)
	}
	if again, _ := os.ReadFile(h.Host.KnownClients); string(again) != string(first) {
		t.Errorf("an unchanged add rewrote the file:\n%s", again)
	}
	res := h.Run(context.Background(), &sera.Call{Argv: []string{"clients", "list"}})
	if !strings.Contains(string(res.Stdout), "(root-equivalent)") {
		t.Errorf("clients list: %q", res.Stdout)
	}
	res = h.Run(context.Background(), &sera.Call{Argv: []string{"clients", "list", "--json"}})
	if !strings.Contains(string(res.Stdout), `"root_equivalent":true`) {
		t.Errorf("clients list --json: %q", res.Stdout)
	}
	if !rootEquivalent("sudo grant(devs)") || !rootEquivalent("sudo") || rootEquivalent("user") || rootEquivalent("clients") {
		t.Error("rootEquivalent")
	}
}
