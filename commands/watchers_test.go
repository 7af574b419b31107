package commands

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/settings"
)

// --addr takes the addresses and host names 'known-hosts sync' trusts a
// watcher's keys for, in the form known_hosts compares them; one sync
// would leave out is refused and changes nothing.
func TestWatchersAddAddrs(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"SERA_HOME": filepath.Join(dir, "client")}
	run := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		root := NewRoot(&cli.Options{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
			Env: settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: dir, Hostname: "laptop"}})
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		return stdout.String(), stderr.String(), err
	}
	id, err := crypto.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := id.Public().String()
	if out, errOut, err := run("watchers", "add", "web1", pub, "--addr", "10.0.0.1,Web1.Example.com", "--addr", "2001:db8::1", "--addr", "10.0.0.1"); err != nil {
		t.Fatalf("%v\n%s%s", err, out, errOut)
	}
	path := filepath.Join(dir, "client", "known_watchers")
	kw, err := sera.ReadKnownWatchers(path)
	if err != nil {
		t.Fatal(err)
	}
	if w := kw.ByName("web1"); w == nil || !slices.Equal(w.Addrs, []string{"10.0.0.1", "web1.example.com", "2001:db8::1"}) {
		t.Fatalf("known_watchers: %+v", kw.Watchers)
	}
	before, _ := os.ReadFile(path)
	for _, bad := range []string{"*.example.com", "|1|abc|def", "[10.0.0.1]:2222", "fe80::1%eth0", "::ffff:10.0.0.1", "bad_name", "0.0.0.0"} {
		if _, _, err := run("watchers", "add", "web1", pub, "--addr", bad); !errors.Is(err, cli.ErrUsage) {
			t.Errorf("--addr %q: %v, want a usage error", bad, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Errorf("a refused --addr changed known_watchers")
	}
}
