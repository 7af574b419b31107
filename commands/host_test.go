package commands

import (
	"bytes"
	"context"
	"crypto/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/settings"
)

// testHandler is a host on a clock that stands still, an hour after its
// watcher started, so its uptime is the same however long a test takes.
func testHandler(t *testing.T) *Handler {
	t.Helper()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	return &Handler{Host: &Host{
		Name: "web1", Version: "v1.2.3", Fingerprint: "abcdefghijklmnop",
		Started: now.Add(-time.Hour), Sys: &host.System{Clock: host.FixedClock{T: now}, Net: host.NoNet{}, State: t.TempDir()},
		KnownClients: filepath.Join(t.TempDir(), "known_clients"),
	}}
}

func newKey(t *testing.T) *crypto.PublicKey {
	t.Helper()
	id, err := crypto.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id.Public()
}

// Resolve is the watcher's allowlist: only real leaves of the host tree,
// with arguments their own validation accepts. Cobra's built-ins (help,
// completion, __complete) must never resolve.
func TestResolve(t *testing.T) {
	h := testHandler(t)
	key := newKey(t).String()
	tests := []struct {
		argv    []string
		want    string
		wantErr string
	}{
		{[]string{"ping"}, "ping", ""},
		{[]string{"ping", "--json=true"}, "ping", ""},
		{[]string{"clients", "list"}, "clients list", ""},
		{[]string{"clients", "add", "--name=bob", "--", key}, "clients add", ""},
		{[]string{"clients", "add", "--name=bob", "--allow=clients.list", "--", key}, "clients add", ""},

		{[]string{"ping", "--", "extra"}, "ping", "takes no arguments; unexpected \"extra\""},
		{[]string{"ping", "--bogus"}, "ping", "unknown flag"},
		{[]string{"ping", "--help"}, "ping", "help"},
		{[]string{"ping", "-h"}, "ping", "help"},
		{[]string{"clients"}, "", "not a command this watcher runs"},
		{[]string{"clients", "add", "--", key}, "clients add", "--name is required"},
		{[]string{"clients", "add", "--name=bob", "--", "notakey"}, "clients add", "malformed key"},
		{[]string{"clients", "add", "--name=bob", "--allow=usr", "--", key}, "clients add", "invalid --allow"},
		{[]string{"help"}, "", "unknown command"},
		{[]string{"help", "ping"}, "", "unknown command"},
		{[]string{"__complete", "ping", ""}, "", "unknown command"},
		{[]string{"__completeNoDesc", "ping"}, "", "unknown command"},
		{[]string{"completion", "bash"}, "", "unknown command"},
		{[]string{"keygen"}, "", "unknown command"},
		{[]string{"watch"}, "", "unknown command"},
		{[]string{"config", "set", "SERA_NAME=x"}, "", "unknown command"},
		{[]string{"--version"}, "", "not a command"},
		{[]string{""}, "", "not a command"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.argv, " "), func(t *testing.T) {
			got, err := h.Resolve(tt.argv)
			if got != tt.want {
				t.Errorf("command = %q, want %q", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// Every command Resolve accepts runs; Run on a fresh tree leaves no state
// behind for the next request.
func TestRunPing(t *testing.T) {
	h := testHandler(t)
	for range 2 {
		res := h.Run(context.Background(), &sera.Call{Argv: []string{"ping", "--json=true"}, Command: "ping"})
		if res.Status != 0 {
			t.Fatalf("status %d, stderr %s", res.Status, res.Stderr)
		}
		if !bytes.Contains(res.Stdout, []byte(`"name":"web1"`)) || !bytes.Contains(res.Stdout, []byte(`"uptime_seconds":3600`)) {
			t.Errorf("stdout = %s", res.Stdout)
		}
	}
	res := h.Run(context.Background(), &sera.Call{Argv: []string{"ping"}, Command: "ping"})
	if res.Status != 0 || !bytes.HasPrefix(res.Stdout, []byte("name         web1\n")) {
		t.Errorf("plain ping after a --json one: status %d, stdout %q", res.Status, res.Stdout)
	}
}

func TestRunClientsRemotely(t *testing.T) {
	h := testHandler(t)
	key := newKey(t)
	add := []string{"clients", "add", "--allow=clients", "--name=bob", "--", key.String()}
	if _, err := h.Resolve(add); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"added", "already present"} {
		res := h.Run(context.Background(), &sera.Call{Argv: add})
		if res.Status != 0 || !strings.Contains(string(res.Stdout), want) {
			t.Fatalf("run %d: status %d, stdout %q, stderr %q", i, res.Status, res.Stdout, res.Stderr)
		}
	}
	kc, err := sera.ReadKnownClients(h.Host.KnownClients)
	if err != nil {
		t.Fatal(err)
	}
	if c := kc.ByKey(key); c == nil || c.Name != "bob" || !slices.Equal(c.Allow, []string{"clients"}) {
		t.Fatalf("known_clients after add: %+v", kc.Clients)
	}
	// A command that fails reports status 1 and its error on stderr.
	res := h.Run(context.Background(), &sera.Call{Argv: []string{"clients", "add", "--name=bob", "--", newKey(t).String()}})
	if res.Status != 1 || !strings.Contains(string(res.Stderr), "already used by another key") {
		t.Errorf("name clash: status %d, stderr %q", res.Status, res.Stderr)
	}
}

func TestRedact(t *testing.T) {
	h := testHandler(t)
	// Give the tree a secret flag, as user add --password-hash will have.
	c := &cobra.Command{Use: "secret", RunE: func(*cobra.Command, []string) error { return nil }}
	c.Flags().String("password-hash", "", "")
	_ = c.Flags().SetAnnotation("password-hash", cli.AnnSecret, []string{"true"})
	c.Flags().String("comment", "", "")
	root := &cobra.Command{Use: "sera"}
	root.AddCommand(c)
	got := redactWith(root, []string{"secret", "--comment=hi", "--password-hash=$6$x$y", "--password-hash", "$6$z", "--", "--password-hash=kept"})
	want := []string{"secret", "--comment=hi", "--password-hash=***", "--password-hash", "***", "--", "--password-hash=kept"}
	if !slices.Equal(got, want) {
		t.Errorf("redact = %q, want %q", got, want)
	}
	// Unknown commands are returned unchanged (and are rejected anyway).
	if got := h.Redact([]string{"nope", "x"}); !slices.Equal(got, []string{"nope", "x"}) {
		t.Errorf("redact unknown = %q", got)
	}
}

// remoteArgv sends exactly what the user asked for: the command path, the
// flags they set (never the client's own), positional args after "--".
func TestRemoteArgv(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"ping", "--to", "web1"}, []string{"ping"}},
		{[]string{"ping", "--json", "--to=web1", "--timeout=5s"}, []string{"ping", "--json=true"}},
		{[]string{"ping", "--system", "--local=false", "--to=web1"}, []string{"ping"}},
		{[]string{"clients", "add", "-", "--name", "x", "--to", "web1", "--allow", "a,b"},
			[]string{"clients", "add", "--allow=a,b", "--name=x", "--", "-"}},
		{[]string{"clients", "remove", "--to", "w", "--", "--name"}, []string{"clients", "remove", "--", "--name"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var got []string
			o := &cli.Options{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}, Env: testEnv(t)}
			root := NewRoot(o)
			c, rest, err := root.Find(tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.ParseFlags(rest); err != nil {
				t.Fatal(err)
			}
			got = remoteArgv(c, c.Flags().Args())
			if !slices.Equal(got, tt.want) {
				t.Errorf("argv = %q, want %q", got, tt.want)
			}
		})
	}
}

func testEnv(t *testing.T) settings.Env {
	dir := t.TempDir()
	env := map[string]string{"SERA_HOME": dir, "SERA_STATE": filepath.Join(dir, "state")}
	return settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: dir, Hostname: "box.example"}
}

func TestPrefixLines(t *testing.T) {
	var b bytes.Buffer
	cli.PrefixLines(&b, "web1", []byte("a\nb\n\nno newline"))
	if want := "web1: a\nweb1: b\nweb1: \nweb1: no newline\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// A flag error inside the watcher is a usage error there too (status 2),
// as it is on the client.
func TestRunFlagErrorIsUsage(t *testing.T) {
	h := testHandler(t)
	res := h.Run(context.Background(), &sera.Call{Argv: []string{"ping", "--bogus"}})
	if res.Status != cli.ExitUsage || !strings.Contains(string(res.Stderr), "unknown flag: --bogus") {
		t.Errorf("status %d, stderr %q", res.Status, res.Stderr)
	}
}
