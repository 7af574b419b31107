package hostkeys

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sera-dev/sera/host/hostkeys/keystest"
	"golang.org/x/crypto/ssh"
)

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
		got, err := ParseHostName(in)
		if err != nil || got != want {
			t.Errorf("ParseHostName(%q) = %q, %v; want %q", in, got, err, want)
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
		_, err := ParseHostName(in)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseHostName(%q) = %v, want an ErrInvalid error with %q", in, err, want)
		}
	}
}

func TestParseHostKeyArg(t *testing.T) {
	ed := keystest.Ed25519(t)
	rsa2048, rsa1024 := keystest.RSA(t)
	line := KeyText(ed)
	if k, err := ParseKeyArg(line + " root@web2"); err != nil || !SameKey(k, ed) {
		t.Fatalf("good key: %v", err)
	}
	if _, err := ParseKeyArg(KeyText(rsa2048)); err != nil {
		t.Errorf("2048-bit RSA: %v", err)
	}
	if _, err := ParseKeyArg(KeyText(keystest.ECDSA(t))); err != nil {
		t.Errorf("ECDSA: %v", err)
	}
	bad := map[string]string{
		"":                            "invalid key",
		"ssh-ed25519 notbase64":       "invalid key",
		"ssh-ed25519":                 "invalid key",
		line + "\n" + line:            "several lines",
		"@cert-authority " + line:     "markers",
		"@revoked " + line:            "markers",
		"web2 " + line:                `"web2" before it`,
		`command="x" ` + line:         "not part of a key",
		KeyText(rsa1024):              "too weak",
		KeyText(keystest.Cert(t, ed)): "certificate",
		KeyText(keystest.SK(t)):       "not a host key type",
		"ssh-dss AAAAB3NzaC1kc3MAAACBAP" + "xx==": "invalid key",
	}
	for in, want := range bad {
		_, err := ParseKeyArg(in)
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseKeyArg(%q) = %v, want an ErrInvalid error with %q", abbreviate(in), err, want)
		}
	}
}

func TestParseKnownHostsEntry(t *testing.T) {
	ed := keystest.Ed25519(t)
	name, aliases, k, err := ParseEntry("Web2,10.0.0.2,web2.example,10.0.0.2 " + KeyText(ed) + " comment")
	if err != nil || name != "web2" || !slices.Equal(aliases, []string{"10.0.0.2", "web2.example"}) || !SameKey(k, ed) {
		t.Fatalf("entry: %q %q %v", name, aliases, err)
	}
	bad := map[string]string{
		"":                                              "empty or a comment",
		"# web2 " + KeyText(ed):                         "empty or a comment",
		"web2 ssh-ed25519":                              "invalid entry",
		"@revoked web2 " + KeyText(ed):                  "marker",
		"@cert-authority *.ex " + KeyText(ed):           "marker",
		"|1|abc=|def= " + KeyText(ed):                   "hashed",
		"*.example " + KeyText(ed):                      "wildcards",
		"[web2]:2222 " + KeyText(ed):                    "[host]:port",
		"web_2 " + KeyText(ed):                          "RFC 1123",
		"web2 " + KeyText(keystest.Cert(t, ed)):         "certificate",
		"web2 " + KeyText(ed) + "\nweb3 " + KeyText(ed): "several lines",
	}
	for in, want := range bad {
		_, _, _, err := ParseEntry(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseEntry(%q) = %v, want %q", abbreviate(in), err, want)
		}
	}
}

func mustEntry(t *testing.T, names string, keys ...ssh.PublicKey) *Host {
	t.Helper()
	name, aliases, err := ParseHostList(names)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewHost(name, aliases, keys)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustParseKH(t *testing.T, s string) *File {
	t.Helper()
	f, err := ParseFile([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The merge keeps every line it did not write, byte for byte, and
// compares entries by host, type and key.
func TestKnownHostsMerge(t *testing.T) {
	ed2, ec2, ed3, ed2new := keystest.Ed25519(t), keystest.ECDSA(t), keystest.Ed25519(t), keystest.Ed25519(t)
	own := "# my own hosts\n|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR\n" +
		"gitlab.example.com,1.2.3.4   ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR  trailing  \n\n" +
		"not even a key line\n@cert-authority *.example.com " + KeyText(ed3) + "\n"
	f := mustParseKH(t, own)
	if !bytes.Equal(f.Bytes(), []byte(own)) {
		t.Fatalf("a file with no block does not round-trip:\n%s", f.Bytes())
	}

	// 1. trust web2: the block is appended, the rest is kept.
	if err := f.Set(mustEntry(t, "web2,10.0.0.2", ec2, ed2)); err != nil {
		t.Fatal(err)
	}
	want := own + Begin + "\n" +
		"web2,10.0.0.2 " + KeyText(ed2) + "\n" +
		"web2,10.0.0.2 " + KeyText(ec2) + "\n" +
		End + "\n"
	if got := string(f.Bytes()); got != want {
		t.Fatalf("after trust:\n%s\nwant:\n%s", got, want)
	}
	// Parsed back, it is the same; setting the same again changes nothing.
	g := mustParseKH(t, want)
	before := g.Clone()
	if err := g.Set(mustEntry(t, "WEB2,10.0.0.2", ed2, ec2)); err != nil {
		t.Fatal(err)
	}
	if d := Diff(before.Hosts, g.Hosts); len(d) != 0 || string(g.Bytes()) != want {
		t.Errorf("same keys again: diff %q", d)
	}

	// 2. a new ed25519 key replaces the old; the ECDSA key is dropped
	// because only the new key is given; web3 takes 10.0.0.2 over.
	before = g.Clone()
	if err := g.Set(mustEntry(t, "web2,web2.example", ed2new)); err != nil {
		t.Fatal(err)
	}
	if err := g.Set(mustEntry(t, "web3,10.0.0.2", ed3)); err != nil {
		t.Fatal(err)
	}
	d := strings.Join(Diff(before.Hosts, g.Hosts), "; ")
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
	want = own + Begin + "\n" +
		"web2,web2.example " + KeyText(ed2new) + "\n" +
		"web3,10.0.0.2 " + KeyText(ed3) + "\n" +
		End + "\n"
	if got := string(g.Bytes()); got != want {
		t.Fatalf("after replace:\n%s\nwant:\n%s", got, want)
	}

	// 3. a managed host's name cannot become another's alias.
	if err := g.Set(mustEntry(t, "web4,web2", ed3)); err == nil || !strings.Contains(err.Error(), "web2 is a host sera keeps keys for") {
		t.Errorf("alias = another host's name: %v", err)
	}
	// A managed host may take over a name that was only an alias.
	if err := g.Set(mustEntry(t, "web2.example", ed2)); err != nil {
		t.Fatal(err)
	}
	if e := g.Host("web2"); e == nil || len(e.Aliases) != 0 {
		t.Errorf("web2.example still an alias of web2: %+v", e)
	}

	// 4. untrust: the entry goes, and the name as anyone's alias.
	g.Remove("10.0.0.2")
	g.Remove("web2")
	g.Remove("web2.example")
	if e := g.Host("web3"); e == nil || len(e.Aliases) != 0 {
		t.Errorf("untrust 10.0.0.2 left it on web3: %+v", e)
	}
	g.Remove("web3")
	if got := string(g.Bytes()); got != own {
		t.Errorf("with nothing managed, the block must go and the rest stay:\n%s", got)
	}
}

func TestKnownHostsFileDamaged(t *testing.T) {
	ed := keystest.Ed25519(t)
	line := "web2 " + KeyText(ed)
	for name, tc := range map[string]struct{ file, want string }{
		"start without end": {"a\n" + Begin + "\n" + line + "\nmine\n", "has no end line"},
		"two starts":        {Begin + "\n" + End + "\n" + Begin + "\n" + End + "\n", "a second start"},
		"end without start": {"mine\n" + End + "\n", "without its start"},
	} {
		if _, err := ParseFile([]byte(tc.file)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	// Lines in the block that sera did not write are reported and
	// dropped at the next write; a good entry beside them is kept.
	f := mustParseKH(t, "mine\n"+Begin+"\n"+line+"\ngarbage here\n*.example "+KeyText(ed)+"\n\n# note\n"+End+"\r\n")
	if len(f.Bad) != 2 || !strings.Contains(f.Bad[0], "line 4") || !strings.Contains(f.Bad[1], "wildcards") {
		t.Errorf("bad lines: %q", f.Bad)
	}
	if want := "mine\n" + Begin + "\n" + line + "\n" + End + "\n"; string(f.Bytes()) != want {
		t.Errorf("rewritten:\n%s", f.Bytes())
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
	old, cur, ec := keystest.Ed25519(t), keystest.Ed25519(t), keystest.ECDSA(t)
	file := "web2 " + KeyText(old) + "\n" +
		hashName([]byte("saltsaltsaltsaltsalt"), "10.0.0.2") + " " + KeyText(old) + "\n" +
		"web2 " + KeyText(cur) + "\n" + // the same key: fine
		"web2 " + KeyText(ec) + "\n" + // a type sera does not manage for web2
		"@revoked web2 " + KeyText(old) + "\n" +
		"web9 " + KeyText(old) + "\n"
	f := mustParseKH(t, file)
	if err := f.Set(mustEntry(t, "web2,10.0.0.2", cur)); err != nil {
		t.Fatal(err)
	}
	w := f.OutsideWarnings("known_hosts")
	if len(w) != 2 || !strings.Contains(w[0], "line 1") || !strings.Contains(w[0], fp(old)) ||
		!strings.Contains(w[1], "line 2") || !strings.Contains(w[1], "for 10.0.0.2") {
		t.Errorf("warnings: %q", w)
	}
}

// FuzzParseFile feeds known_hosts anything an admin may have written: a
// file that parses writes back to one that parses to the same bytes, and
// the admin's lines are kept verbatim.
func FuzzParseFile(f *testing.F) {
	k := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR"
	f.Add("# mine\nweb1 " + k + "\n")
	f.Add(Begin + "\nweb1,10.0.0.1 " + k + "\nbad line\n" + End + "\nafter\n")
	f.Add(Begin + "\n" + Begin + "\n")
	f.Fuzz(func(t *testing.T, in string) {
		kf, err := ParseFile([]byte(in))
		if err != nil {
			return
		}
		out := kf.Bytes()
		again, err := ParseFile(out)
		if err != nil {
			t.Fatalf("%q: rewritten %q does not parse: %v", in, out, err)
		}
		if string(again.Bytes()) != string(out) {
			t.Fatalf("%q: rewritten %q, then %q", in, out, again.Bytes())
		}
		for _, line := range append(slices.Clone(kf.Before), kf.After...) {
			if !strings.Contains(string(out), line) {
				t.Fatalf("%q: admin's line %q lost", in, line)
			}
		}
	})
}
