package sera_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
)

func equalClients(a, b *sera.KnownClients) bool {
	return slices.EqualFunc(a.Clients, b.Clients, func(x, y *sera.KnownClient) bool {
		return x.Key.Equal(y.Key) && x.Name == y.Name && slices.Equal(x.Allow, y.Allow) && x.Account == y.Account && x.Added.Equal(y.Added)
	})
}

func equalWatchers(a, b *sera.KnownWatchers) bool {
	return slices.EqualFunc(a.Watchers, b.Watchers, func(x, y *sera.KnownWatcher) bool {
		return x.Key.Equal(y.Key) && x.Name == y.Name && slices.Equal(x.Groups, y.Groups) && slices.Equal(x.Addrs, y.Addrs)
	})
}

func TestKnownClientsParse(t *testing.T) {
	t.Parallel()
	a, b, c, d := newIdentity(t).Public(), newIdentity(t).Public(), newIdentity(t).Public(), newIdentity(t).Public()
	file := "# comment\n\n" +
		a.String() + " alice *\n" +
		"  " + b.String() + "\tbob   user,key.add,ping,user  \r\n" +
		c.String() + " carol\n" +
		d.String() + " dave key added=2026-12-07T10:00:00+01:00 account=dave\n"
	kc, err := sera.ParseKnownClients([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := &sera.KnownClients{Clients: []*sera.KnownClient{
		{Key: a, Name: "alice", Allow: []string{"*"}},
		{Key: b, Name: "bob", Allow: []string{"user", "key add"}},
		{Key: c, Name: "carol"},
		{Key: d, Name: "dave", Allow: []string{"key"}, Account: "dave", Added: time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)},
	}}
	if !equalClients(kc, want) {
		t.Fatalf("parsed %+v", kc.Clients)
	}
	if kc.ByKey(b).Name != "bob" || kc.ByName("carol").Key != kc.Clients[2].Key || kc.ByKey(newIdentity(t).Public()) != nil || kc.ByName("erin") != nil {
		t.Error("ByKey/ByName")
	}
	// Bytes round-trips, and is stable.
	out := kc.Bytes()
	kc2, err := sera.ParseKnownClients(out)
	if err != nil || !equalClients(kc, kc2) || string(kc2.Bytes()) != string(out) {
		t.Errorf("round trip: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), c.String()+" carol ping\n") || !strings.Contains(string(out), " bob user,key.add\n") ||
		!strings.Contains(string(out), " dave key account=dave added=2026-12-07T09:00:00Z\n") {
		t.Errorf("formatted as\n%s", out)
	}
}

func TestKnownClientsReject(t *testing.T) {
	t.Parallel()
	a, b := newIdentity(t), newIdentity(t)
	ka, kb := a.Public().String(), b.Public().String()
	tests := []struct {
		name, file, err string
	}{
		{"key only", ka + "\n", "want PUBKEY NAME"},
		{"extra field", ka + " alice * extra\n", "want key=value after the allow list"},
		{"unknown attribute", ka + " alice * uid=0\n", `unknown field "uid=0"`},
		{"empty attribute", ka + " alice * account=\n", "want key=value"},
		{"attribute twice", ka + " alice * account=bob account=carol\n", "account= given twice"},
		{"root account", ka + " alice * account=root\n", "invalid account"},
		{"bad account", ka + " alice * account=Bob\n", "invalid account"},
		{"bad added", ka + " alice * added=yesterday\n", "invalid added"},
		{"bad key", "sera1notakey alice\n", "line 1"},
		{"truncated key", ka[:len(ka)-1] + " alice\n", "not a sera public key"},
		{"upper-case key", strings.ToUpper(ka) + " alice\n", "not a sera public key"},
		{"secret key", a.SecretString() + " alice\n", "secret key"},
		{"name first", "alice " + ka + "\n", "line 1"},
		{"bad name", ka + " al/ice\n", "not a valid name"},
		{"long name", ka + " " + strings.Repeat("a", 64) + "\n", "not a valid name"},
		{"duplicate name", ka + " alice\n" + kb + " alice\n", "line 2: name alice used twice"},
		{"duplicate key", ka + " alice\n# x\n" + ka + " alice2\n", "line 3: key of alice2 listed twice"},
	}
	for _, tt := range tests {
		_, err := sera.ParseKnownClients([]byte(tt.file))
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.err)
		}
		if err != nil && strings.Contains(err.Error(), a.SecretString()[len(crypto.SecretPrefix):len(crypto.SecretPrefix)+10]) {
			t.Errorf("%s: error echoes the secret key", tt.name)
		}
	}
}

func TestKnownWatchersParse(t *testing.T) {
	t.Parallel()
	a, b := newIdentity(t).Public(), newIdentity(t).Public()
	file := "# watchers\n" +
		"web1 " + a.String() + " groups=web,eu addrs=10.0.0.1,web1.example.com\n" +
		"db1 " + b.String() + "\n"
	kw, err := sera.ParseKnownWatchers([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := &sera.KnownWatchers{Watchers: []*sera.KnownWatcher{
		{Name: "web1", Key: a, Groups: []string{"web", "eu"}, Addrs: []string{"10.0.0.1", "web1.example.com"}},
		{Name: "db1", Key: b},
	}}
	if !equalWatchers(kw, want) {
		t.Fatalf("parsed %+v", kw.Watchers)
	}
	if !kw.ByName("web1").HasGroup("eu") || kw.ByName("db1").HasGroup("eu") || kw.ByKey(b).Name != "db1" || kw.ByKey(newIdentity(t).Public()) != nil {
		t.Error("ByName/ByKey/HasGroup")
	}
	out := kw.Bytes()
	kw2, err := sera.ParseKnownWatchers(out)
	if err != nil || !equalWatchers(kw, kw2) || string(kw2.Bytes()) != string(out) {
		t.Errorf("round trip: %v\n%s", err, out)
	}
}

func TestKnownWatchersReject(t *testing.T) {
	t.Parallel()
	ka, kb := newIdentity(t).Public().String(), newIdentity(t).Public().String()
	tests := []struct {
		name, file, err string
	}{
		{"name only", "web1\n", "want NAME PUBKEY"},
		{"bad name", "web.1 " + ka + "\n", "not a valid name"},
		{"bad key", "web1 sera1xyz\n", "not a sera public key"},
		{"key first", ka + " web1\n", "line 1"},
		{"unknown field", "web1 " + ka + " color=blue\n", "unknown field"},
		{"bad group", "web1 " + ka + " groups=web,e/u\n", "not a valid name"},
		{"duplicate name", "web1 " + ka + "\nweb1 " + kb + "\n", "line 2: name web1 used twice"},
		// One key under two names would let one watcher's reply
		// count for the other.
		{"duplicate key", "web1 " + ka + "\nweb2 " + ka + "\n", "line 2"},
	}
	for _, tt := range tests {
		_, err := sera.ParseKnownWatchers([]byte(tt.file))
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.err)
		}
	}
}

func TestAllowFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want []string
		out  string
	}{
		{"", nil, ""},
		{"ping", nil, ""},
		{"*", []string{"*"}, "*"},
		{"user.add,user.add, key ,ping", []string{"user add", "key"}, "user.add,key"},
		{",,", nil, ""},
		{"key(bob|alice|bob),allow(443|22)", []string{"key(alice|bob)", "allow(22|443)"}, "key(alice|bob),allow(22|443)"},
		{"key.add(ext-*),self", []string{"key add(ext-*)", "self"}, "key.add(ext-*),self"},
	}
	manyValues := "key("
	for i := range 65 {
		manyValues += fmt.Sprintf("a%d|", i)
	}
	manyValues += "b)"
	for _, bad := range []string{"us*", "User", "key()", "key(alice", "key(Alice)", "key(al ice)", "*(x)", "self(bob)",
		"ping(x)", "allow(0)", "allow(70000)", "allow(90-80)", "allow(022)", "key(a|(b))", "key(a[)", manyValues} {
		if got, err := sera.ParseAllow(bad); err == nil {
			t.Errorf("ParseAllow(%q) = %q, want an error", bad, got)
		}
	}
	for _, tt := range tests {
		got, err := sera.ParseAllow(tt.in)
		if err != nil {
			t.Errorf("ParseAllow(%q): %v", tt.in, err)
		}
		if !slices.Equal(got, tt.want) || sera.FormatAllow(got) != tt.out {
			t.Errorf("ParseAllow(%q) = %q, formatted %q; want %q, %q", tt.in, got, sera.FormatAllow(got), tt.want, tt.out)
		}
	}
}

func TestReadKnownFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	kc, err := sera.ReadKnownClients(filepath.Join(dir, "known_clients"))
	if err != nil || len(kc.Clients) != 0 {
		t.Errorf("missing known_clients: %v, %v", kc, err)
	}
	kw, err := sera.ReadKnownWatchers(filepath.Join(dir, "known_watchers"))
	if err != nil || len(kw.Watchers) != 0 {
		t.Errorf("missing known_watchers: %v, %v", kw, err)
	}
	writeFile(t, filepath.Join(dir, "real"), "")
	if err := os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := sera.ReadKnownClients(filepath.Join(dir, "link")); err == nil {
		t.Error("known_clients read through a symlink")
	}
	if _, err := sera.ReadKnownWatchers(filepath.Join(dir, "link")); err == nil {
		t.Error("known_watchers read through a symlink")
	}
}

func TestClientFileReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "known_clients")
	a, b := newIdentity(t).Public(), newIdentity(t).Public()
	cf := &sera.ClientFile{Path: path}
	lookup := func(k *crypto.PublicKey) string {
		t.Helper()
		c, err := cf.Lookup(k)
		switch {
		case err != nil:
			return "error"
		case c == nil:
			return "unknown"
		}
		return c.Name + ":" + sera.FormatAllow(c.Allow)
	}
	write := func(s string) {
		t.Helper()
		if err := safefile.WriteAtomic(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		change  func()
		a, b    string
		comment string
	}{
		{func() {}, "unknown", "unknown", "no file: nobody is known"},
		{func() { write(a.String() + " alice\n") }, "alice:", "unknown", "file created"},
		{func() { write(a.String() + " alice user\n" + b.String() + " bob\n") }, "alice:user", "bob:", "client added, allow changed"},
		{func() { write(b.String() + " bob\n") }, "unknown", "bob:", "client removed"},
		{func() { write(b.String() + " bob\nthis is not a line\n") }, "error", "error", "unparseable: fails closed"},
		{func() { write(b.String() + " bob *\n") }, "unknown", "bob:*", "fixed"},
		{func() {
			// Rewritten in place, same size: still noticed.
			if err := os.WriteFile(path, []byte(b.String()+" bob x\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "unknown", "bob:x", "rewritten in place"},
		{func() { os.Remove(path) }, "unknown", "unknown", "removed"},
		{func() {
			writeFile(t, filepath.Join(dir, "other"), a.String()+" alice *\n")
			if err := os.Symlink(filepath.Join(dir, "other"), path); err != nil {
				t.Fatal(err)
			}
		}, "error", "error", "replaced by a symlink"},
	}
	for _, s := range steps {
		s.change()
		if ga, gb := lookup(a), lookup(b); ga != s.a || gb != s.b {
			t.Errorf("%s: alice %s, bob %s; want %s, %s", s.comment, ga, gb, s.a, s.b)
		}
	}
}
