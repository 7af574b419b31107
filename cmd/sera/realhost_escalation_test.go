package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/hosttest"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
)

// A client granted user, key and group but not sudo tries every flag
// combination of the account commands, in an order that lets earlier
// requests set up later ones (delete a sudo group, create it again, join
// it), to end up holding a key to an account for which 'sudo -n true'
// succeeds — on a real Debian host with real sudo, sshd and shadow-utils.
// None may. The same client with the sudo grant can, which proves the
// check at the end would see it.
func TestNoEscalationOnRealHost(t *testing.T) {
	f := newFleet(t, "h1")
	h := f.hosts["h1"]
	// The host's sudoers, as an admin left it: a sera drop-in for devs,
	// rules for a group with members by primary gid, for a user and a
	// group that do not exist yet. All NOPASSWD, so that sudo -n works.
	h.MustExec(t, "sh", "-c", `set -e
		groupadd -g 2001 devs; groupadd -g 2002 pgrp; groupadd -g 2003 plain
		useradd -m -G devs alice; useradd -m -g pgrp carol; useradd -m bob
		printf '%%devs ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/sera-devs
		printf '%%pgrp ALL=(ALL) NOPASSWD: ALL\nmallory ALL=(ALL) NOPASSWD: ALL\n%%admins ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/local
		chmod 440 /etc/sudoers.d/sera-devs /etc/sudoers.d/local; visudo -c`)
	keyFile, key := f.sshKey("attacker")
	// The control: before any request, alice and carol can sudo.
	for _, u := range []string{"alice", "carol"} {
		if out, err := h.Exec(context.Background(), "runuser", "-u", u, "--", "sudo", "-n", "true"); err != nil {
			t.Fatalf("setup: %s cannot sudo: %v %s", u, err, out)
		}
	}

	narrow := f.client(t, "helpdesk", "user,key,group")
	const hash = "$6$saltsalt$Vn7fXbYWm5mKUZsGhuM0vDz9c4l3cX0n2gHq9tJ8uJ4pGZVt0QeO9X6c0yQzS9c3s8ZqW7kM0qN1rB2pD5fE6."
	accounts := []string{"alice", "bob", "carol", "mallory", "eve"}
	groups := map[string]string{"devs": "2001", "pgrp": "2002", "plain": "2003", "admins": "2004", "sudo": "27", "users": "100"}
	var names []string
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	var cases [][]string
	// Destructive first, so that later requests meet a host they changed.
	for _, g := range names {
		cases = append(cases, []string{"group", "del", g})
	}
	for _, g := range names {
		cases = append(cases, []string{"group", "add", g}, []string{"group", "add", g, "--gid", groups[g]})
	}
	for _, a := range accounts {
		cases = append(cases, []string{"user", "add", a, "--key", key}, []string{"key", "add", a, key},
			[]string{"key", "sync", a, key}, []string{"user", "unlock", a},
			[]string{"user", "add", "--update", a, "--key", key},
			[]string{"user", "add", "--update", a, "--key", key, "--password-hash", hash},
			[]string{"user", "add", "--update", a, "--shell", "/bin/sh"})
		for _, g := range names {
			cases = append(cases,
				[]string{"user", "add", a, "--key", key, "--groups", g},
				[]string{"user", "add", a, "--key", key, "--gid", groups[g]},
				[]string{"user", "add", "--update", a, "--key", key, "--groups", g},
				[]string{"user", "add", "--update", a, "--key", key, "--set-groups", g},
				[]string{"user", "add", "--update", a, "--gid", groups[g]},
				[]string{"group", "members", "add", g, a})
		}
	}
	t0 := time.Now()
	accepted := 0
	for _, argv := range cases {
		_, _, code := narrow.sera(append(argv, "--to", "h1")...)
		if code == 0 {
			accepted++
		}
	}
	t.Logf("%d requests (%d changed or found the host as asked) in %v", len(cases), accepted, time.Since(t0).Round(time.Millisecond))

	// Every account that holds the key: it may log in (bob, eve), but
	// sudo -n must fail.
	holders := keyHolders(t, h, key)
	if !slices.Contains(holders, "bob") {
		t.Fatalf("the narrow client could not even give bob its key (holders %v): the test proves nothing", holders)
	}
	for _, u := range holders {
		out, err := loginAs(t, h, u, keyFile, "sudo", "-n", "true")
		if err == nil {
			t.Errorf("escalation: the client's key logs in as %s, for whom sudo -n true succeeds (%q)", u, out)
		}
	}
	t.Logf("accounts holding the key: %v", holders)

	// The same client with the sudo grant reaches sudo: the check above
	// can see an escalation when there is one.
	f.trust(t, narrow, "helpdesk", "user,key,group,sudo")
	if _, errOut, code := narrow.sera("key", "add", "alice", key, "--to", "h1"); code != 0 {
		// devs may have been deleted above by design; grant it again.
		t.Logf("key add alice: %s", errOut)
	}
	narrow.sera("group", "add", "ops", "--to", "h1")
	narrow.mustSera("sudo", "grant", "ops", "--nopasswd", "--to", "h1")
	narrow.mustSera("user", "add", "dave", "--key", key, "--groups", "ops", "--to", "h1")
	if out, err := loginAs(t, h, "dave", keyFile, "sudo", "-n", "true"); err != nil {
		t.Fatalf("with the sudo grant, dave cannot sudo: %q, %v", out, err)
	}
}

// keyHolders lists the accounts whose authorized_keys hold key.
func keyHolders(t *testing.T, h *hosttest.Host, key string) []string {
	t.Helper()
	fields := strings.Fields(key)
	out := h.MustExec(t, "sh", "-c", `for d in /home/*; do
		f="$d/.ssh/authorized_keys"; [ -f "$f" ] && grep -qF -- "$1" "$f" && stat -c %U "$d"; done; true`, "sh", fields[1])
	return strings.Fields(out)
}

// client is a second client identity of the fleet, trusted by every host
// with grants, its own home and reply queue.
func (f *fleet) client(t *testing.T, name, grants string) *fleet {
	t.Helper()
	c := *f
	home := filepath.Join(f.dir, name)
	c.env = slices.DeleteFunc(slices.Clone(f.env), func(e string) bool { return strings.HasPrefix(e, "SERA_HOME=") || strings.HasPrefix(e, "SERA_STATE=") })
	c.env = append(c.env, "SERA_HOME="+home, "SERA_STATE="+filepath.Join(home, "state"))
	c.clients = strings.TrimSpace(c.mustSera("keygen"))
	kw, err := os.ReadFile(filepath.Join(f.dir, "client", "known_watchers"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "known_watchers"), kw, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(home, "key"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := crypto.ParseIdentityFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqs.CreateQueue(context.Background(), f.sqs, transport.ClientQueue(f.prefix, id.Public().Fingerprint())); err != nil {
		t.Fatal(err)
	}
	f.trust(t, &c, name, grants)
	return &c
}

// trust adds (or updates) client c on every host as name with grants, as
// root.
func (f *fleet) trust(t *testing.T, c *fleet, name, grants string) {
	t.Helper()
	for _, h := range f.hosts {
		h.MustExec(t, "sera", "clients", "add", c.clients, "--name", name, "--allow", grants)
	}
}
