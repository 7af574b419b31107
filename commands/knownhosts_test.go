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
	"net/netip"
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
	"github.com/sera-dev/sera/crypto"
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
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrUsage) {
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
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrUsage) {
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

func khReport(t *testing.T, host string, names, addrs []string, keys ...ssh.PublicKey) []byte {
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
	h, warn, err := parseHostKeyReport(w, khReport(t, "web2", []string{"web2", "web2.example", "*"}, []string{"10.0.0.2"}, ed, ec, ed), "")
	if err != nil {
		t.Fatal(err)
	}
	if h.name != "web2" || !slices.Equal(h.claimed, []string{"web2.example", "10.0.0.2"}) || !slices.Equal(h.admin, []string{"192.0.2.7"}) || len(h.keys) != 2 {
		t.Errorf("report: %+v", h)
	}
	if len(warn) != 4 || !strings.Contains(strings.Join(warn, "\n"), "bad_addr") {
		t.Errorf("warnings: %q", warn)
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
		if _, _, err := parseHostKeyReport(tc.w, tc.out, ""); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	// SERA_DOMAIN is the admin's word: NAME.DOMAIN is given, like an addr.
	h, _, err = parseHostKeyReport(ok, khReport(t, "web2", nil, nil, ed), "example.net")
	if err != nil || !slices.Equal(h.admin, []string{"web2.example.net"}) {
		t.Errorf("with a domain: %+v, %v", h, err)
	}
}

// Names that two hosts report, or that are another watcher's, are left
// out; known_watchers' addresses are the admin's word.
func TestBuildSyncSet(t *testing.T) {
	k1, k2, k3 := khEd25519(t), khEd25519(t), khEd25519(t)
	w := func(n string) *sera.KnownWatcher { return &sera.KnownWatcher{Name: n} }
	hosts := []*syncHost{
		{watcher: w("Dup"), name: "dup", keys: []ssh.PublicKey{k1}},
		{watcher: w("dup"), name: "dup", keys: []ssh.PublicKey{k2}},
		{watcher: w("web2"), name: "web2", claimed: []string{"web2.example", "172.17.0.1", "web3", "10.0.0.9"}, keys: []ssh.PublicKey{k2}},
		{watcher: w("web1"), name: "web1", claimed: []string{"10.0.0.1", "172.17.0.1"}, admin: []string{"10.0.0.9", "10.0.0.1"}, keys: []ssh.PublicKey{k1}},
		{watcher: w("web3"), name: "web3", claimed: []string{"10.0.0.3"}, admin: []string{"10.0.0.5", "web9"}, keys: []ssh.PublicKey{k3}},
		{watcher: w("web4"), name: "web4", admin: []string{"10.0.0.5"}, keys: []ssh.PublicKey{k3}},
	}
	entries, warn := buildSyncSet(hosts, []string{"web1", "web2", "web3", "web4", "web9"})
	var got []string
	for _, e := range entries {
		got = append(got, strings.Join(e.names(), ","))
	}
	// Only the admin's names: what a host reports about itself is shown,
	// never trusted by itself.
	want := []string{"web1,10.0.0.1,10.0.0.9", "web2", "web3", "web4"}
	if !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
	all := strings.Join(warn, "\n")
	for _, w := range []string{
		"web2: also reports web2.example, 172.17.0.1: not trusted",
		"'sera watchers add web2 PUBKEY --addr NAME'",
		"web1: also reports 172.17.0.1: not trusted",
		"web3: also reports 10.0.0.3: not trusted",
		"web2: reports the name web3, which is another watcher's",
		"web2: reports 10.0.0.9, which known_watchers gives to web1",
		"known_watchers gives 10.0.0.5 to web3, web4",
		"web3: known_watchers address web9 is another watcher's name",
		"watchers Dup, dup are all the host name dup: left out",
	} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %q:\n%s", w, all)
		}
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
		// The admin's names for the hosts: NAME.example, and each host's
		// address in known_watchers (what hosts report is not trusted).
		"SERA_DOMAIN":    "example",
		"SERA_TRANSPORT": "spool", "SERA_SPOOL": f.spool, "SERA_PREFIX": "kh",
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
	oldName, oldAddrs := hostHostname, hostAddrs
	hostHostname = func(h *Host) (string, error) { return h.Name + ".example", nil }
	hostAddrs = func(h *Host) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr(addrOf[h.Name])}, nil
	}
	t.Cleanup(func() { hostHostname, hostAddrs = oldName, oldAddrs })
	kw := &sera.KnownWatchers{}
	for _, n := range append(slices.Clone(running), silent...) {
		id, err := crypto.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		kw.Watchers = append(kw.Watchers, &sera.KnownWatcher{Name: n, Key: id.Public(), Addrs: []string{addrOf[n]}})
		r := newHostkeyRoot(t, n)
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
	o := &Options{Stdout: &stdout, Stderr: &stderr, Env: sera.Env{Getenv: func(k string) string { return f.env[k] }, UserHome: f.dir, Hostname: "laptop"},
		OpenTransport: func(context.Context, *sera.Config) (transport.Transport, error) {
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
		b, _ := os.ReadFile(r.h.path(systemKnownHosts))
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
	if code, _ := ExitCode(err); code != 1 {
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
	if fi, _ := os.Stat(f.hosts["web1"].h.path(systemKnownHosts)); fi.Mode().Perm() != 0o644 {
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
	if code, _ := ExitCode(err); code != 1 || !strings.Contains(errOut, "failed: web1, web3") {
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
	if code, _ := ExitCode(err); code != 1 || !strings.Contains(errOut, "symbolic link") {
		t.Errorf("symlinked --file: exit %d, %s", code, errOut)
	}
	for _, args := range [][]string{
		{"known-hosts", "sync", "extra"},
		{"known-hosts", "sync", "--to", "nope"},
		{"known-hosts", "sync", "--file", "x", "--no-local"},
		{"known-hosts"},
	} {
		if _, _, err := f.sera(args...); !errors.Is(err, ErrUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

// A compromised host reports itself as github.com and a bastion's address:
// none of it is entered anywhere; only the admin's names are.
func TestKnownHostsSyncTrustsOnlyTheAdminsNames(t *testing.T) {
	inKHFleet(t, []string{"web1", "web2"}, nil, func(t *testing.T, f *khFleet) {
		hostHostname = func(h *Host) (string, error) {
			if h.Name == "web2" {
				return "github.com", nil
			}
			return h.Name + ".example", nil
		}
		real := hostAddrs
		hostAddrs = func(h *Host) ([]netip.Addr, error) {
			if h.Name == "web2" {
				return []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("203.0.113.9")}, nil
			}
			return real(h)
		}
		_, errOut, err := f.sera("known-hosts", "sync", "--timeout=1s")
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		if !strings.Contains(errOut, "web2: also reports github.com, 203.0.113.9: not trusted") {
			t.Errorf("stderr does not show the untrusted names:\n%s", errOut)
		}
		for n, content := range f.files() {
			if strings.Contains(content, "github.com") || strings.Contains(content, "203.0.113.9") {
				t.Errorf("%s trusts a name web2 gave itself:\n%s", n, content)
			}
			if !strings.Contains(content, "web2,web2.example,10.0.0.2 ") {
				t.Errorf("%s lacks web2 under the admin's names:\n%s", n, content)
			}
		}
	})
}
