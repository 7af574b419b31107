package commands

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
)

// Host keys for the tests: made once, RSA is slow.
var (
	khKeysOnce sync.Once
	khRSA      ssh.PublicKey
	khRSA1024  ssh.PublicKey
)

func khEd25519(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func khECDSA(t testing.TB) ssh.PublicKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func khRSAKeys(t testing.TB) (ssh.PublicKey, ssh.PublicKey) {
	t.Helper()
	khKeysOnce.Do(func() {
		for _, bits := range []int{2048, 1024} {
			priv, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				panic(err)
			}
			k, err := ssh.NewPublicKey(&priv.PublicKey)
			if err != nil {
				panic(err)
			}
			if bits == 2048 {
				khRSA = k
			} else {
				khRSA1024 = k
			}
		}
	})
	return khRSA, khRSA1024
}

// khCert is a host certificate for key.
func khCert(t testing.TB, key ssh.PublicKey) ssh.PublicKey {
	t.Helper()
	_, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(caPriv)
	if err != nil {
		t.Fatal(err)
	}
	cert := &ssh.Certificate{Key: key, CertType: ssh.HostCert, ValidPrincipals: []string{"web2"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	return cert
}

// khSKKey is a FIDO (security key) ed25519 key: never a host key.
func khSKKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	blob := ssh.Marshal(struct {
		Name, Key, App string
	}{ssh.KeyAlgoSKED25519, string(pub), "ssh:"})
	k, err := ssh.ParsePublicKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fp(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

func TestParseHostName(t *testing.T) {
	good := map[string]string{
		"web1":                  "web1",
		"Web1.Example.COM":      "web1.example.com",
		"a-b.c":                 "a-b.c",
		"10.0.0.1":              "10.0.0.1",
		"2001:DB8::0:1":         "2001:db8::1",
		"x" + ".example":        "x.example",
		"1host":                 "1host",
		"h.123abc":              "h.123abc",
		strings.Repeat("a", 63): strings.Repeat("a", 63),
	}
	for in, want := range good {
		got, err := parseHostName(in)
		if err != nil || got != want {
			t.Errorf("parseHostName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                               "empty",
		"*.example.com":                  "wildcards",
		"web?":                           "wildcards",
		"!web1":                          "negations",
		"|1|abc=|def=":                   "hashed",
		"[web1]:2222":                    "[host]:port",
		"web1:22":                        "not a host name",
		"fe80::1%eth0":                   "zone",
		"::ffff:10.0.0.1":                "give the IPv4 address 10.0.0.1",
		"0.0.0.0":                        "not a host's address",
		"ff02::1":                        "not a host's address",
		"web_1":                          "RFC 1123",
		"-web":                           "RFC 1123",
		"web-":                           "RFC 1123",
		"web..example":                   "RFC 1123",
		"web.":                           "RFC 1123",
		"a b":                            "RFC 1123",
		"wéb":                            "RFC 1123",
		"web,1":                          "RFC 1123",
		"10.0.0":                         "last label",
		"1234":                           "last label",
		strings.Repeat("a", 64):          "RFC 1123",
		strings.Repeat("a.", 127) + "aa": "longer than 253",
	}
	for in, want := range bad {
		_, err := parseHostName(in)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, cli.ErrUsage) {
			t.Errorf("parseHostName(%q) = %v, want a usage error with %q", in, err, want)
		}
	}
}

func TestParseHostKeyArg(t *testing.T) {
	ed := khEd25519(t)
	rsa2048, rsa1024 := khRSAKeys(t)
	line := keyText(ed)
	if k, err := parseHostKeyArg(line + " root@web2"); err != nil || !sameKey(k, ed) {
		t.Fatalf("good key: %v", err)
	}
	if _, err := parseHostKeyArg(keyText(rsa2048)); err != nil {
		t.Errorf("2048-bit RSA: %v", err)
	}
	if _, err := parseHostKeyArg(keyText(khECDSA(t))); err != nil {
		t.Errorf("ECDSA: %v", err)
	}
	bad := map[string]string{
		"":                        "invalid key",
		"ssh-ed25519 notbase64":   "invalid key",
		"ssh-ed25519":             "invalid key",
		line + "\n" + line:        "several lines",
		"@cert-authority " + line: "markers",
		"@revoked " + line:        "markers",
		"web2 " + line:            `"web2" before it`,
		`command="x" ` + line:     "not part of a key",
		keyText(rsa1024):          "too weak",
		keyText(khCert(t, ed)):    "certificate",
		keyText(khSKKey(t)):       "not a host key type",
		"ssh-dss AAAAB3NzaC1kc3MAAACBAP" + "xx==": "invalid key",
	}
	for in, want := range bad {
		_, err := parseHostKeyArg(in)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, cli.ErrUsage) {
			t.Errorf("parseHostKeyArg(%q) = %v, want a usage error with %q", abbreviate(in), err, want)
		}
	}
}

func TestParseKnownHostsEntry(t *testing.T) {
	ed := khEd25519(t)
	name, aliases, k, err := parseKnownHostsEntry("Web2,10.0.0.2,web2.example,10.0.0.2 " + keyText(ed) + " comment")
	if err != nil || name != "web2" || !slices.Equal(aliases, []string{"10.0.0.2", "web2.example"}) || !sameKey(k, ed) {
		t.Fatalf("entry: %q %q %v", name, aliases, err)
	}
	bad := map[string]string{
		"":                                              "empty or a comment",
		"# web2 " + keyText(ed):                         "empty or a comment",
		"web2 ssh-ed25519":                              "invalid entry",
		"@revoked web2 " + keyText(ed):                  "marker",
		"@cert-authority *.ex " + keyText(ed):           "marker",
		"|1|abc=|def= " + keyText(ed):                   "hashed",
		"*.example " + keyText(ed):                      "wildcards",
		"[web2]:2222 " + keyText(ed):                    "[host]:port",
		"web_2 " + keyText(ed):                          "RFC 1123",
		"web2 " + keyText(khCert(t, ed)):                "certificate",
		"web2 " + keyText(ed) + "\nweb3 " + keyText(ed): "several lines",
	}
	for in, want := range bad {
		_, _, _, err := parseKnownHostsEntry(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseKnownHostsEntry(%q) = %v, want %q", abbreviate(in), err, want)
		}
	}
}

func mustEntry(t *testing.T, names string, keys ...ssh.PublicKey) *khHost {
	t.Helper()
	name, aliases, err := parseHostList(names)
	if err != nil {
		t.Fatal(err)
	}
	e, err := newKHHost(name, aliases, keys)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustParseKH(t *testing.T, s string) *knownHostsFile {
	t.Helper()
	f, err := parseKnownHostsFile([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The merge keeps every line it did not write, byte for byte, and
// compares entries by host, type and key.
func TestKnownHostsMerge(t *testing.T) {
	ed2, ec2, ed3, ed2new := khEd25519(t), khECDSA(t), khEd25519(t), khEd25519(t)
	own := "# my own hosts\n|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR\n" +
		"gitlab.example.com,1.2.3.4   ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR  trailing  \n\n" +
		"not even a key line\n@cert-authority *.example.com " + keyText(ed3) + "\n"
	f := mustParseKH(t, own)
	if !bytes.Equal(f.bytes(), []byte(own)) {
		t.Fatalf("a file with no block does not round-trip:\n%s", f.bytes())
	}

	// 1. trust web2: the block is appended, the rest is kept.
	if err := f.set(mustEntry(t, "web2,10.0.0.2", ec2, ed2)); err != nil {
		t.Fatal(err)
	}
	want := own + khBegin + "\n" +
		"web2,10.0.0.2 " + keyText(ed2) + "\n" +
		"web2,10.0.0.2 " + keyText(ec2) + "\n" +
		khEnd + "\n"
	if got := string(f.bytes()); got != want {
		t.Fatalf("after trust:\n%s\nwant:\n%s", got, want)
	}
	// Parsed back, it is the same; setting the same again changes nothing.
	g := mustParseKH(t, want)
	before := g.clone()
	if err := g.set(mustEntry(t, "WEB2,10.0.0.2", ed2, ec2)); err != nil {
		t.Fatal(err)
	}
	if d := diffHosts(before.hosts, g.hosts); len(d) != 0 || string(g.bytes()) != want {
		t.Errorf("same keys again: diff %q", d)
	}

	// 2. a new ed25519 key replaces the old; the ECDSA key is dropped
	// because only the new key is given; web3 takes 10.0.0.2 over.
	before = g.clone()
	if err := g.set(mustEntry(t, "web2,web2.example", ed2new)); err != nil {
		t.Fatal(err)
	}
	if err := g.set(mustEntry(t, "web3,10.0.0.2", ed3)); err != nil {
		t.Fatal(err)
	}
	d := strings.Join(diffHosts(before.hosts, g.hosts), "; ")
	for _, w := range []string{
		"web2: replace ssh-ed25519 " + fp(ed2) + " with " + fp(ed2new),
		"web2: remove ecdsa-sha2-nistp256 " + fp(ec2),
		"web2: names web2,web2.example (were web2,10.0.0.2)",
		"trust web3 as web3,10.0.0.2: ssh-ed25519 " + fp(ed3),
	} {
		if !strings.Contains(d, w) {
			t.Errorf("diff %q lacks %q", d, w)
		}
	}
	want = own + khBegin + "\n" +
		"web2,web2.example " + keyText(ed2new) + "\n" +
		"web3,10.0.0.2 " + keyText(ed3) + "\n" +
		khEnd + "\n"
	if got := string(g.bytes()); got != want {
		t.Fatalf("after replace:\n%s\nwant:\n%s", got, want)
	}

	// 3. a managed host's name cannot become another's alias.
	if err := g.set(mustEntry(t, "web4,web2", ed3)); err == nil || !strings.Contains(err.Error(), "web2 is a host sera keeps keys for") {
		t.Errorf("alias = another host's name: %v", err)
	}
	// A managed host may take over a name that was only an alias.
	if err := g.set(mustEntry(t, "web2.example", ed2)); err != nil {
		t.Fatal(err)
	}
	if e := g.host("web2"); e == nil || len(e.aliases) != 0 {
		t.Errorf("web2.example still an alias of web2: %+v", e)
	}

	// 4. untrust: the entry goes, and the name as anyone's alias.
	g.remove("10.0.0.2")
	g.remove("web2")
	g.remove("web2.example")
	if e := g.host("web3"); e == nil || len(e.aliases) != 0 {
		t.Errorf("untrust 10.0.0.2 left it on web3: %+v", e)
	}
	g.remove("web3")
	if got := string(g.bytes()); got != own {
		t.Errorf("with nothing managed, the block must go and the rest stay:\n%s", got)
	}
}

func TestKnownHostsFileDamaged(t *testing.T) {
	ed := khEd25519(t)
	line := "web2 " + keyText(ed)
	for name, tc := range map[string]struct{ file, want string }{
		"start without end": {"a\n" + khBegin + "\n" + line + "\nmine\n", "has no end line"},
		"two starts":        {khBegin + "\n" + khEnd + "\n" + khBegin + "\n" + khEnd + "\n", "a second start"},
		"end without start": {"mine\n" + khEnd + "\n", "without its start"},
	} {
		if _, err := parseKnownHostsFile([]byte(tc.file)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	// Lines in the block that sera did not write are reported and
	// dropped at the next write; a good entry beside them is kept.
	f := mustParseKH(t, "mine\n"+khBegin+"\n"+line+"\ngarbage here\n*.example "+keyText(ed)+"\n\n# note\n"+khEnd+"\r\n")
	if len(f.bad) != 2 || !strings.Contains(f.bad[0], "line 4") || !strings.Contains(f.bad[1], "wildcards") {
		t.Errorf("bad lines: %q", f.bad)
	}
	if want := "mine\n" + khBegin + "\n" + line + "\n" + khEnd + "\n"; string(f.bytes()) != want {
		t.Errorf("rewritten:\n%s", f.bytes())
	}
}

func hashName(salt []byte, name string) string {
	m := hmac.New(sha1.New, salt)
	m.Write([]byte(name))
	return "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// A stale key on the admin's own line would still be accepted by ssh:
// sera says so, and leaves the line alone.
func TestKnownHostsOutsideWarnings(t *testing.T) {
	old, cur, ec := khEd25519(t), khEd25519(t), khECDSA(t)
	file := "web2 " + keyText(old) + "\n" +
		hashName([]byte("saltsaltsaltsaltsalt"), "10.0.0.2") + " " + keyText(old) + "\n" +
		"web2 " + keyText(cur) + "\n" + // the same key: fine
		"web2 " + keyText(ec) + "\n" + // a type sera does not manage for web2
		"@revoked web2 " + keyText(old) + "\n" +
		"web9 " + keyText(old) + "\n"
	f := mustParseKH(t, file)
	if err := f.set(mustEntry(t, "web2,10.0.0.2", cur)); err != nil {
		t.Fatal(err)
	}
	w := f.outsideWarnings("known_hosts")
	if len(w) != 2 || !strings.Contains(w[0], "line 1") || !strings.Contains(w[0], fp(old)) ||
		!strings.Contains(w[1], "line 2") || !strings.Contains(w[1], "for 10.0.0.2") {
		t.Errorf("warnings: %q", w)
	}
}

func khReport(t testing.TB, host string, names, addrs []string, keys ...ssh.PublicKey) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, k := range keys {
		j, _ := json.Marshal(reportedKey{Host: host, Names: names, Addrs: addrs, Type: k.Type(), Fingerprint: fp(k), Key: keyText(k)})
		b.Write(append(j, '\n'))
	}
	return b.Bytes()
}

func TestParseHostKeyReport(t *testing.T) {
	ed, ec := khEd25519(t), khECDSA(t)
	w := &sera.KnownWatcher{Name: "Web2", Addrs: []string{"192.0.2.7", "bad_addr"}}
	h, warn, err := parseHostKeyReport(w, "example.com", khReport(t, "web2", []string{"web2", "web2.example", "*", "Web2.Example.com"}, []string{"10.0.0.2", "192.0.2.7"}, ed, ec, ed))
	if err != nil {
		t.Fatal(err)
	}
	// What the admin gave it (known_watchers, SERA_DOMAIN) and what it
	// says of itself are kept apart; a reported name the admin gave it
	// too is the admin's.
	if h.name != "web2" || !slices.Equal(h.reported, []string{"web2.example", "10.0.0.2"}) || !slices.Equal(h.admin, []string{"192.0.2.7", "web2.example.com"}) || len(h.keys) != 2 {
		t.Errorf("report: %+v", h)
	}
	if len(warn) != 4 || !strings.Contains(strings.Join(warn, "\n"), "bad_addr") {
		t.Errorf("warnings: %q", warn)
	}
	if h, _, err := parseHostKeyReport(w, "", khReport(t, "web2", nil, nil, ed)); err != nil || !slices.Equal(h.admin, []string{"192.0.2.7"}) {
		t.Errorf("without SERA_DOMAIN: %+v, %v", h, err)
	}
	ok := &sera.KnownWatcher{Name: "web2"}
	for name, tc := range map[string]struct {
		w    *sera.KnownWatcher
		out  []byte
		want string
	}{
		"no keys":     {ok, nil, "no host keys"},
		"not json":    {ok, []byte("ssh-ed25519 AAAA\n"), "unreadable"},
		"bad key":     {ok, []byte(`{"type":"ssh-ed25519","key":"ssh-ed25519 AAAA"}`), "reported key"},
		"cert":        {ok, []byte(`{"type":"ssh-ed25519-cert-v01@openssh.com","key":"` + keyText(khCert(t, ed)) + `"}`), "certificate"},
		"wrong type":  {ok, []byte(`{"type":"ssh-rsa","key":"` + keyText(ed) + `"}`), "not ssh-rsa"},
		"two of type": {ok, khReport(t, "web2", nil, nil, ed, khEd25519(t)), "two ssh-ed25519 keys"},
		"bad name":    {&sera.KnownWatcher{Name: "web_2"}, khReport(t, "web_2", nil, nil, ed), "not a host name"},
	} {
		if _, _, err := parseHostKeyReport(tc.w, "", tc.out); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// A host's entry carries the names the admin gave it, and what it reports
// only when accepted; a name is one host's only, and the admin's
// assignment (known_watchers, SERA_DOMAIN, watcher names, selected in
// this sync or not) wins over anything a host reports.
func TestBuildSyncSet(t *testing.T) {
	const domain = "example.com"
	k1, k2, k3 := khEd25519(t), khEd25519(t), khEd25519(t)
	all := []*sera.KnownWatcher{
		{Name: "Dup"}, {Name: "dup"},
		{Name: "web1", Addrs: []string{"10.0.0.9", "10.0.0.1"}},
		{Name: "web2"},
		{Name: "web3", Addrs: []string{"10.0.0.5", "web9"}},
		{Name: "web4", Addrs: []string{"10.0.0.5"}},
		{Name: "web5"},
		{Name: "web9", Addrs: []string{"10.0.0.99"}}, // not in this sync
	}
	host := func(i int, key ssh.PublicKey, reported ...string) *syncHost {
		w := all[i]
		name := strings.ToLower(w.Name)
		admin, _ := adminNames(w, name, domain)
		return &syncHost{watcher: w, name: name, admin: admin, reported: reported, keys: []ssh.PublicKey{key}}
	}
	hosts := []*syncHost{
		host(0, k1), host(1, k2),
		// Not accepted: all it says of itself is shown, nothing trusted.
		host(3, k2, "github.com", "web1.example.com", "web2.example", "10.0.0.9", "10.0.0.99", "172.17.0.1"),
		host(2, k1, "172.17.0.1"),
		host(4, k3),
		host(5, k3),
		host(6, k3, "db.example.com", "web3", "web9.example.com", "10.0.0.9", "172.17.0.1"),
	}
	set := buildSyncSet(hosts, all, domain, []string{"web1", "web5"})
	var got []string
	for _, e := range set.entries {
		got = append(got, strings.Join(e.names(), ","))
	}
	want := []string{
		"web1,web1.example.com,10.0.0.1,10.0.0.9",
		"web2,web2.example.com",
		"web3,web3.example.com",
		"web4,web4.example.com",
		"web5,db.example.com,web5.example.com",
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
	if u := set.untrusted["web2"]; !slices.Equal(u, []string{"github.com", "web1.example.com", "web2.example", "10.0.0.9", "10.0.0.99", "172.17.0.1"}) || len(set.untrusted) != 1 {
		t.Errorf("untrusted %q", set.untrusted)
	}
	if len(set.accepted) != 1 || !slices.Equal(set.accepted["web5"], []string{"db.example.com"}) {
		t.Errorf("accepted %q", set.accepted)
	}
	all2 := strings.Join(set.warnings, "\n")
	for _, w := range []string{
		"172.17.0.1 is reported by web1, web5: accepted for none of them",
		"web5: reports the name web3, which is another watcher's: not accepted",
		"web5: reports 10.0.0.9, which known_watchers gives to web1: not accepted",
		"web5: reports web9.example.com, which known_watchers gives to web9: not accepted",
		"known_watchers and SERA_DOMAIN give 10.0.0.5 to web3, web4: left out of all of them",
		"web3: web9, a name known_watchers or SERA_DOMAIN gives it, is another watcher's name: left out",
		"watchers Dup, dup are all the host name dup: left out",
	} {
		if !strings.Contains(all2, w) {
			t.Errorf("warnings lack %q:\n%s", w, all2)
		}
	}
	if strings.Contains(all2, "web2") {
		t.Errorf("names of a host not accepted are reported as untrusted, not warned about:\n%s", all2)
	}
}

// known-hosts sync end to end over the spool transport: real watchers,
// each with its own host root, the real client command.
//
// A fleet lives in a testing/synctest bubble (see inKHFleet): every timer
// of its watchers, client and spool runs on the bubble's fake clock, which
// moves only when all of them wait. A client's --timeout then fires for a
// silent host however loaded the machine is, and never before a live one
// has answered. The spools poll instead of waiting on inotify, as a
// goroutine blocked on a file descriptor would keep the clock from moving.
type khFleet struct {
	t        *testing.T
	dir      string
	spool    string
	env      map[string]string
	clientID *crypto.Identity
	hosts    map[string]*hkRoot
	stops    map[string]func()
	// maxSize, if set, is the client transport's message size limit.
	maxSize int
}

// inKHFleet runs test in a synctest bubble on a fleet made in it, with
// watchers for running and none for silent.
func inKHFleet(t *testing.T, running, silent []string, test func(t *testing.T, f *khFleet)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		test(t, newKHFleet(t, running, silent...))
	})
}

func newKHFleet(t *testing.T, running []string, silent ...string) *khFleet {
	t.Helper()
	dir := t.TempDir()
	f := &khFleet{t: t, dir: dir, spool: filepath.Join(dir, "spool"), hosts: map[string]*hkRoot{}, stops: map[string]func(){}}
	f.env = map[string]string{
		"SERA_HOME": filepath.Join(dir, "client"), "SERA_STATE": filepath.Join(dir, "client", "state"),
		"SERA_TRANSPORT": "spool", "SERA_SPOOL": f.spool, "SERA_PREFIX": "kh",
		// The hosts' names the admin gives: NAME.example, and each one's
		// address in known_watchers.
		"SERA_DOMAIN": "example",
	}
	if out, _, err := f.sera("keygen"); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "client", "key"))
	if err != nil {
		t.Fatal(err)
	}
	if f.clientID, err = crypto.ParseIdentityFile(b); err != nil {
		t.Fatal(err)
	}
	// Each host's names come from hooks that tell the hosts apart by name.
	addrOf := map[string]string{}
	for i, n := range append(slices.Clone(running), silent...) {
		addrOf[n] = "10.0.0." + strconv.Itoa(i+1)
	}
	kw := &sera.KnownWatchers{}
	for _, n := range append(slices.Clone(running), silent...) {
		id, err := crypto.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		kw.Watchers = append(kw.Watchers, &sera.KnownWatcher{Name: n, Key: id.Public(), Addrs: []string{addrOf[n]}})
		r := newHostkeyRoot(t, n)
		r.h.Sys.Net = staticNet(n+".example", "127.0.0.1", "fe80::1", addrOf[n])
		f.hosts[n] = r
		if slices.Contains(running, n) {
			f.startWatcher(n, id, r.h)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "client", "known_watchers"), kw.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *khFleet) startWatcher(name string, id *crypto.Identity, h *Host) {
	t := f.t
	dir := filepath.Join(f.dir, "w-"+name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	kc := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: f.clientID.Public(), Name: "admin", Allow: []string{sera.AllowAll}}}}
	if err := os.WriteFile(filepath.Join(dir, "known_clients"), kc.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	replay, err := sera.OpenReplayCache(filepath.Join(dir, "replay"))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := spool.New(f.spool, spool.WithPolling())
	if err != nil {
		t.Fatal(err)
	}
	w := &sera.Watcher{
		Identity: id, Name: name, Prefix: "kh", Transport: tr,
		Clients: &sera.ClientFile{Path: filepath.Join(dir, "known_clients")},
		Handler: &Handler{Host: h}, Replay: replay,
		Audit: &sera.AuditLog{Path: filepath.Join(dir, "audit.log")},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	var once sync.Once
	f.stops[name] = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(f.stops[name])
}

func (f *khFleet) sera(args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	o := &cli.Options{Stdout: &stdout, Stderr: &stderr, Env: settings.Env{Getenv: func(k string) string { return f.env[k] }, UserHome: f.dir, Hostname: "laptop"},
		OpenTransport: func(context.Context, *settings.Config) (transport.Transport, error) {
			if f.maxSize > 0 {
				return spool.New(f.spool, spool.WithPolling(), spool.WithMaxMessageSize(f.maxSize))
			}
			return spool.New(f.spool, spool.WithPolling())
		}}
	root := NewRoot(o)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return stdout.String(), stderr.String(), err
}

// files returns every known_hosts file of the fleet, the client's last.
func (f *khFleet) files() map[string]string {
	out := map[string]string{}
	for n, r := range f.hosts {
		b, _ := os.ReadFile(r.h.Sys.Path(systemKnownHosts))
		out[n] = string(b)
	}
	b, _ := os.ReadFile(filepath.Join(f.dir, ".ssh", "known_hosts"))
	out["client"] = string(b)
	return out
}

func TestKnownHostsSync(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2"}, []string{"web3"}, testKnownHostsSync)
}

func testKnownHostsSync(t *testing.T, f *khFleet) {
	// The client has a line of its own, and a stale key for web2.
	staleWeb2 := khEd25519(t)
	if err := os.MkdirAll(filepath.Join(f.dir, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	own := "github.com " + keyText(khEd25519(t)) + "\nweb2 " + keyText(staleWeb2) + "\n"
	if err := os.WriteFile(filepath.Join(f.dir, ".ssh", "known_hosts"), []byte(own), 0o644); err != nil {
		t.Fatal(err)
	}

	// web3 is silent: web1 and web2 are synced, web3 reported, exit 1.
	// The 1s is fake time, which does not pass while web1 and web2 work.
	out, errOut, err := f.sera("known-hosts", "sync", "--timeout=1s")
	if code, _ := cli.ExitCode(err); code != 1 {
		t.Fatalf("exit %d, want 1 (web3 silent)\n%s\n%s", code, out, errOut)
	}
	for _, w := range []string{"web3: no keys collected (no reply within 1s); its entries are left as each host has them",
		"keys of 2 of 3 hosts; installed on 2 of 3 hosts and in ~/.ssh/known_hosts; failed: web3",
		"line 2, outside sera's block, trusts another ssh-ed25519 key for web2 (" + fp(staleWeb2)} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	files := f.files()
	k1 := slices.Clone(f.hosts["web1"].keys)
	k2 := slices.Clone(f.hosts["web2"].keys)
	block := khBegin + "\n"
	for _, k := range k1 {
		block += "web1,web1.example,10.0.0.1 " + keyText(k) + "\n"
	}
	for _, k := range k2 {
		block += "web2,web2.example,10.0.0.2 " + keyText(k) + "\n"
	}
	block += khEnd + "\n"
	for _, n := range []string{"web1", "web2"} {
		if files[n] != block {
			t.Errorf("%s's known_hosts:\n%s\nwant:\n%s", n, files[n], block)
		}
	}
	if files["web3"] != "" {
		t.Errorf("web3 changed")
	}
	if files["client"] != own+block {
		t.Errorf("client's known_hosts:\n%s", files["client"])
	}
	if fi, _ := os.Stat(filepath.Join(f.dir, ".ssh", "known_hosts")); fi.Mode().Perm() != 0o644 {
		t.Errorf("client file mode %o: an existing file keeps its mode", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(f.hosts["web1"].h.Sys.Path(systemKnownHosts)); fi.Mode().Perm() != 0o644 {
		t.Errorf("host file mode %o", fi.Mode().Perm())
	}

	// Again, only the answering hosts: no change anywhere.
	out, errOut, err = f.sera("known-hosts", "sync", "--to", "web1,web2")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	if strings.Count(out, "known hosts: no change") != 2 || !strings.Contains(out, "local: ~/.ssh/known_hosts: no change") || strings.Contains(out, "done:") {
		t.Errorf("second sync:\n%s", out)
	}
	if again := f.files(); !maps2Equal(again, files) {
		t.Errorf("second sync changed files")
	}

	// web2 re-keys: a dry run shows it and changes nothing; the real run
	// replaces the key everywhere.
	newKey := khEd25519(t)
	f.hosts["web2"].writeHostKey(t, "ed25519", newKey)
	out, errOut, err = f.sera("known-hosts", "sync", "--to", "web*2", "--to", "web1", "--dry-run")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	repl := "web2: replace ssh-ed25519 " + fp(k2[0]) + " with " + fp(newKey)
	if strings.Count(out, "would: write /etc/ssh/ssh_known_hosts (0644): "+repl) != 2 || !strings.Contains(out, "local: would: write ~/.ssh/known_hosts (0644): "+repl) ||
		!strings.Contains(out, "dry run: nothing changed") {
		t.Errorf("dry run:\n%s", out)
	}
	if again := f.files(); !maps2Equal(again, files) {
		t.Errorf("dry run changed files")
	}
	if out, errOut, err = f.sera("known-hosts", "sync", "--to", "web1,web2"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	files = f.files()
	for n, s := range files {
		if n == "web3" {
			continue
		}
		if strings.Contains(s, keyText(k2[0])) || !strings.Contains(s, "web2,web2.example,10.0.0.2 "+keyText(newKey)) {
			t.Errorf("%s after re-key:\n%s", n, s)
		}
	}

	// web1 stops answering: its entries stay where they are.
	f.stops["web1"]()
	out, errOut, err = f.sera("known-hosts", "sync", "--timeout=500ms", "--no-local")
	if code, _ := cli.ExitCode(err); code != 1 || !strings.Contains(errOut, "failed: web1, web3") {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}
	if again := f.files(); !maps2Equal(again, files) {
		t.Errorf("a sync with web1 silent changed files")
	}
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Keys that do not fit one message are installed in parts, each whole
// hosts: the result is the same as in one request.
func TestKnownHostsSyncInParts(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2", "web3"}, nil, testKnownHostsSyncInParts)
}

func testKnownHostsSyncInParts(t *testing.T, f *khFleet) {
	f.maxSize = 1300 // room for one host's two lines a request
	out, errOut, err := f.sera("known-hosts", "sync", "--no-local")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, w := range []string{"web1", "web2", "web3"} {
		if n := strings.Count(out, w+": done: "); n != 3 {
			t.Errorf("%s got %d parts, want 3:\n%s", w, n, out)
		}
	}
	files := f.files()
	if files["web1"] != files["web2"] || files["web1"] != files["web3"] || strings.Count(files["web1"], "\n") != 8 {
		t.Errorf("files after a sync in parts:\n%v", files)
	}
	out, _, err = f.sera("known-hosts", "sync", "--no-local")
	if err != nil || strings.Count(out, "known hosts: no change") != 9 {
		t.Errorf("again: %v\n%s", err, out)
	}
	if parts := chunkEntries([]*khHost{mustEntry(t, "a", khEd25519(t)), mustEntry(t, "b", khEd25519(t))}, 1); len(parts) != 2 {
		t.Errorf("a host larger than the budget still gets its own part: %d", len(parts))
	}
}

// The client creates ~/.ssh 0700 and the file 0600; bad flags are usage
// errors before anything is sent.
func TestKnownHostsSyncLocalFile(t *testing.T) {
	inKHFleet(t, []string{"web1"}, nil, testKnownHostsSyncLocalFile)
}

func testKnownHostsSyncLocalFile(t *testing.T, f *khFleet) {
	if out, errOut, err := f.sera("known-hosts", "sync"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for p, want := range map[string]os.FileMode{filepath.Join(f.dir, ".ssh"): 0o700, filepath.Join(f.dir, ".ssh", "known_hosts"): 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %o", p, fi.Mode(), err, want)
		}
	}
	// --file: another file; a symlink there is refused.
	other := filepath.Join(f.dir, "kh")
	if err := os.Symlink("/etc/passwd", other); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := f.sera("known-hosts", "sync", "--file", other)
	if code, _ := cli.ExitCode(err); code != 1 || !strings.Contains(errOut, "symbolic link") {
		t.Errorf("symlinked --file: exit %d, %s", code, errOut)
	}
	for _, args := range [][]string{
		{"known-hosts", "sync", "extra"},
		{"known-hosts", "sync", "--to", "nope"},
		{"known-hosts", "sync", "--file", "x", "--no-local"},
		{"known-hosts"},
	} {
		if _, _, err := f.sera(args...); !errors.Is(err, cli.ErrUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

// A host names itself what it likes: web2 says it is github.com and has
// a public address and web1's; web3 says it is web1. Each host's keys end
// up trusted for the names the admin gave it only, on every host and in
// the client's known_hosts, where an earlier sync had entered what they
// said; the rest is shown, and only --accept trusts it, per host, never
// another watcher's name or address.
func TestKnownHostsSyncTrustsOnlyTheAdmin(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2", "web3"}, nil, testKnownHostsSyncTrustsOnlyTheAdmin)
}

func testKnownHostsSyncTrustsOnlyTheAdmin(t *testing.T, f *khFleet) {
	// Set before any request reaches the watchers.
	f.hosts["web2"].h.Sys.Net = staticNet("github.com", "10.0.0.2", "203.0.113.9", "10.0.0.1")
	f.hosts["web3"].h.Sys.Net = staticNet("web1", "10.0.0.3", "10.0.0.1")
	f.hosts["web1"].h.Sys.Net = staticNet("web1.example", "10.0.0.1")
	k := func(n string) []ssh.PublicKey { return f.hosts[n].keys }
	block := func(names map[string]string) string {
		b := khBegin + "\n"
		for _, n := range []string{"web1", "web2", "web3"} {
			for _, key := range k(n) {
				b += names[n] + " " + keyText(key) + "\n"
			}
		}
		return b + khEnd + "\n"
	}
	adminOnly := block(map[string]string{"web1": "web1,web1.example,10.0.0.1", "web2": "web2,web2.example,10.0.0.2", "web3": "web3,web3.example,10.0.0.3"})
	// What a sync before this fix entered: what web2 said of itself.
	old := block(map[string]string{"web1": "web1,web1.example", "web2": "web2,github.com,10.0.0.1,10.0.0.2,203.0.113.9", "web3": "web3,10.0.0.3"})
	own := "github.com " + keyText(khEd25519(t)) + "\n"
	if err := os.MkdirAll(filepath.Join(f.dir, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, ".ssh", "known_hosts"), []byte(own+old), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.hosts {
		if err := os.WriteFile(r.h.Sys.Path(systemKnownHosts), []byte(old), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kwPath := filepath.Join(f.dir, "client", "known_watchers")
	kwBefore, err := os.ReadFile(kwPath)
	if err != nil {
		t.Fatal(err)
	}

	out, errOut, err := f.sera("known-hosts", "sync", "--json")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, w := range []string{
		"sera: web2 also reports github.com, 10.0.0.1, 203.0.113.9: not trusted",
		"accept them with 'sera known-hosts sync --accept web2'",
		"sera: web3 also reports web1, 10.0.0.1: not trusted",
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	files := f.files()
	for n, s := range files {
		want := adminOnly
		if n == "client" {
			want = own + adminOnly
		}
		if s != want {
			t.Errorf("%s's known_hosts:\n%s\nwant:\n%s", n, s, want)
		}
	}
	reports := map[string]syncReport{}
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r syncReport
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("--json output: %v\n%s", err, out)
		}
		reports[r.Watcher] = r
	}
	if r := reports["web2"]; !slices.Equal(r.Names, []string{"web2", "web2.example", "10.0.0.2"}) || !slices.Equal(r.Untrusted, []string{"github.com", "10.0.0.1", "203.0.113.9"}) ||
		len(r.Accepted) != 0 || !r.Installed || len(r.Keys) != 2 {
		t.Errorf("web2's JSON: %+v", r)
	}
	if r := reports["web1"]; len(reports) != 3 || len(r.Untrusted) != 0 || !slices.Equal(r.Names, []string{"web1", "web1.example", "10.0.0.1"}) {
		t.Errorf("JSON: %+v", reports)
	}

	// --accept is per targeted host; a dry run records nothing.
	if _, _, err := f.sera("known-hosts", "sync", "--to", "web1", "--accept", "web2"); !errors.Is(err, cli.ErrUsage) {
		t.Errorf("--accept of a host not targeted: %v, want a usage error", err)
	}
	out, errOut, err = f.sera("known-hosts", "sync", "--accept", "web2", "--dry-run")
	if err != nil || !strings.Contains(errOut, "web2: would accept github.com, 203.0.113.9") {
		t.Errorf("dry run: %v\n%s\n%s", err, out, errOut)
	}
	if b, _ := os.ReadFile(kwPath); !bytes.Equal(b, kwBefore) || !maps2Equal(f.files(), files) {
		t.Errorf("a dry run changed known_watchers or known_hosts")
	}

	// Accepted: what web2 reports becomes the admin's, in known_watchers,
	// except web1's address; web3 cannot take web1's name or address.
	out, errOut, err = f.sera("known-hosts", "sync", "--accept", "web2,web3")
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, errOut)
	}
	for _, w := range []string{
		"web2: reports 10.0.0.1, which known_watchers gives to web1: not accepted",
		"web3: reports the name web1, which is another watcher's: not accepted",
		"web3: reports 10.0.0.1, which known_watchers gives to web1: not accepted",
		"--accept web3: it reports no name to accept",
		"web2: accepted github.com, 203.0.113.9: added to its addrs= in known_watchers",
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	accepted := block(map[string]string{"web1": "web1,web1.example,10.0.0.1", "web2": "web2,github.com,web2.example,10.0.0.2,203.0.113.9", "web3": "web3,web3.example,10.0.0.3"})
	files = f.files()
	for n, s := range files {
		if want := map[bool]string{false: accepted, true: own + accepted}[n == "client"]; s != want {
			t.Errorf("%s's known_hosts after --accept:\n%s\nwant:\n%s", n, s, want)
		}
	}
	kw, err := sera.ReadKnownWatchers(kwPath)
	if err != nil {
		t.Fatal(err)
	}
	if w := kw.ByName("web2"); !slices.Equal(w.Addrs, []string{"10.0.0.2", "github.com", "203.0.113.9"}) {
		t.Errorf("web2's known_watchers addresses: %q", w.Addrs)
	}
	if w := kw.ByName("web3"); !slices.Equal(w.Addrs, []string{"10.0.0.3"}) {
		t.Errorf("web3's known_watchers addresses: %q", w.Addrs)
	}
	// From now on they are the admin's: a plain sync keeps them.
	out, errOut, err = f.sera("known-hosts", "sync")
	if err != nil || strings.Contains(out, "done:") || strings.Contains(errOut, "web2 also reports github.com") {
		t.Errorf("sync after --accept: %v\n%s\n%s", err, out, errOut)
	}
	if !maps2Equal(f.files(), files) {
		t.Errorf("a sync after --accept changed files")
	}
}

// What a watcher answers to 'hostkey list' is the host's word: however it
// is made, it parses or is refused, never panics, and the entry built from
// it carries only the watcher's name and the names the admin gave it;
// what the host reported is kept apart, and trusted only when accepted.
func FuzzParseHostKeyReport(f *testing.F) {
	ed := khEd25519(f)
	f.Add(khReport(f, "web2", []string{"web2", "github.com"}, []string{"10.0.0.2", "203.0.113.9"}, ed), false)
	f.Add(khReport(f, "web2", []string{"web1", "WEB2.example.com", "*", "|1|x|y"}, []string{"10.0.0.1", "::ffff:1.2.3.4", "fe80::1%eth0"}, ed, khECDSA(f)), true)
	f.Add([]byte(`{"type":"ssh-ed25519","key":"`+keyText(ed)+`","names":["a","a"],"addrs":[]}`+"\n{"), false)
	f.Add([]byte("null\n[]\n\"x\""), true)
	const domain = "example.com"
	w := &sera.KnownWatcher{Name: "web2", Addrs: []string{"10.0.0.2", "web2.lan"}}
	all := []*sera.KnownWatcher{{Name: "web1", Addrs: []string{"10.0.0.1"}}, w}
	f.Fuzz(func(t *testing.T, out []byte, accept bool) {
		h, _, err := parseHostKeyReport(w, domain, out)
		if err != nil {
			return
		}
		if len(h.keys) == 0 || h.name != "web2" || !slices.Equal(h.admin, []string{"10.0.0.2", "web2.lan", "web2.example.com"}) {
			t.Fatalf("report %+v", h)
		}
		types := map[string]bool{}
		for _, k := range h.keys {
			if checkHostKey(k) != nil || types[k.Type()] {
				t.Fatalf("key %s accepted", k.Type())
			}
			types[k.Type()] = true
		}
		for _, n := range h.reported {
			if c, err := parseHostName(n); err != nil || c != n || n == h.name || slices.Contains(h.admin, n) {
				t.Fatalf("reported name %q: %v", n, err)
			}
		}
		var acc []string
		if accept {
			acc = []string{"web2"}
		}
		set := buildSyncSet([]*syncHost{h}, all, domain, acc)
		if len(set.entries) != 1 {
			t.Fatalf("%d entries", len(set.entries))
		}
		for _, n := range set.entries[0].names() {
			switch {
			case n == "web2", slices.Contains(h.admin, n):
			case !accept:
				t.Fatalf("a name the host reported, %q, is trusted without --accept", n)
			case n == "web1" || n == "10.0.0.1" || n == "web1.example.com":
				t.Fatalf("web1's name %q is trusted for web2", n)
			case !slices.Contains(set.accepted["web2"], n):
				t.Fatalf("%q is trusted but not reported as accepted", n)
			}
		}
	})
}
