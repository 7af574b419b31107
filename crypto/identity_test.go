package crypto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/crypto/curve25519"
)

// testRand returns a deterministic randomness source, so that test keys and
// fuzz seeds are the same on every run.
func testRand(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// testIdentity returns the deterministic test identity number n.
func testIdentity(t testing.TB, n uint64) *Identity {
	t.Helper()
	id, err := GenerateIdentity(testRand(1000 + n))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// encodeKeyIndependently encodes a key string from its parts without using
// the package's encoder, to pin the wire format.
func encodeKeyIndependently(prefix string, a, b []byte) string {
	body := append(append([]byte{}, a...), b...)
	sum := sha256.Sum256(append([]byte(prefix), body...))
	data := append(body, sum[:4]...)
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(data))
}

// errReader fails every read.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("entropy exhausted") }

func TestKnownAnswer(t *testing.T) {
	// Fixed seeds in, independently computed strings out: a change to the
	// key encoding breaks every key file and known_* list in the field.
	r := io.MultiReader(bytes.NewReader(bytes.Repeat([]byte{0x01}, 32)), bytes.NewReader(bytes.Repeat([]byte{0x02}, 32)))
	id, err := GenerateIdentity(r)
	if err != nil {
		t.Fatal(err)
	}
	seed := bytes.Repeat([]byte{0x01}, 32)
	boxPriv := bytes.Repeat([]byte{0x02}, 32)
	signPub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	boxPub, err := curve25519.X25519(boxPriv, curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	wantPub := encodeKeyIndependently(PublicPrefix, signPub, boxPub)
	if got := id.Public().String(); got != wantPub {
		t.Errorf("public key:\n got %s\nwant %s", got, wantPub)
	}
	wantSecret := encodeKeyIndependently(SecretPrefix, seed, boxPriv)
	if got := id.SecretString(); got != wantSecret {
		t.Errorf("secret key does not match the independent encoding")
	}
	sum := sha256.Sum256([]byte(wantPub))
	wantFP := strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:FingerprintLen]
	if got := id.Public().Fingerprint(); got != wantFP {
		t.Errorf("fingerprint: got %s, want %s", got, wantFP)
	}
	// 68 bytes of data are 109 base32 characters.
	if n := len(wantPub) - len(PublicPrefix); n != 109 {
		t.Errorf("public key body is %d characters, want 109", n)
	}
}

func TestGenerateIdentity(t *testing.T) {
	a := testIdentity(t, 1)
	b := testIdentity(t, 1)
	c := testIdentity(t, 2)
	if !a.Public().Equal(b.Public()) || a.SecretString() != b.SecretString() {
		t.Error("same randomness gave different identities")
	}
	if a.Public().Equal(c.Public()) {
		t.Error("different randomness gave the same identity")
	}
	if _, err := GenerateIdentity(errReader{}); err == nil {
		t.Error("GenerateIdentity succeeded with a failing reader")
	}
	if _, err := GenerateIdentity(bytes.NewReader(make([]byte, 63))); err == nil {
		t.Error("GenerateIdentity succeeded with 63 bytes of randomness")
	}
}

func TestPublicKeyRoundTrip(t *testing.T) {
	for i := range uint64(20) {
		id := testIdentity(t, i)
		s := id.Public().String()
		if !strings.HasPrefix(s, PublicPrefix) {
			t.Fatalf("public key %q lacks prefix %q", s, PublicPrefix)
		}
		p, err := ParsePublicKey(s)
		if err != nil {
			t.Fatalf("ParsePublicKey(%q): %v", s, err)
		}
		if p.String() != s {
			t.Errorf("round trip: got %q, want %q", p.String(), s)
		}
		if !p.Equal(id.Public()) || !id.Public().Equal(p) {
			t.Errorf("parsed key not Equal to the original")
		}
		if p.Fingerprint() != id.Public().Fingerprint() {
			t.Errorf("fingerprint changed in round trip")
		}
		if !bytes.Equal(p.sign, id.pub.sign) || p.box != id.pub.box {
			t.Errorf("parsed key material differs")
		}
	}
}

func TestSecretKeyRoundTrip(t *testing.T) {
	for i := range uint64(20) {
		id := testIdentity(t, i)
		s := id.SecretString()
		if !strings.HasPrefix(s, SecretPrefix) {
			t.Fatalf("secret key lacks prefix %q", SecretPrefix)
		}
		got, err := ParseIdentity(s)
		if err != nil {
			t.Fatalf("ParseIdentity: %v", err)
		}
		if got.SecretString() != s {
			t.Errorf("secret round trip changed the key")
		}
		if !got.Public().Equal(id.Public()) || got.Public().String() != id.Public().String() {
			t.Errorf("parsed identity has a different public key")
		}
		if got.box != id.box || !bytes.Equal(got.sign, id.sign) {
			t.Errorf("parsed identity has different private key material")
		}
	}
}

// flipUnusedBit returns s with its last base32 character changed so that
// it decodes to the same bytes: 109 characters carry 545 bits for 544.
func flipUnusedBit(s string) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	last := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[last^1])
}

func TestParsePublicKeyRejects(t *testing.T) {
	id := testIdentity(t, 1)
	s := id.Public().String()
	body := strings.TrimPrefix(s, PublicPrefix)

	// The non-canonical tail must decode to the same bytes, or the test
	// would pass for the wrong reason.
	nc := flipUnusedBit(s)
	if nc == s {
		t.Fatal("flipUnusedBit did not change the string")
	}
	d1, err1 := b32.DecodeString(body)
	d2, err2 := b32.DecodeString(strings.TrimPrefix(nc, PublicPrefix))
	if err1 != nil || err2 != nil || !bytes.Equal(d1, d2) {
		t.Fatalf("non-canonical tail does not decode to the same bytes (%v, %v)", err1, err2)
	}
	// Go's base32 decoder skips newlines: the canonical check must not.
	withNewline := s[:40] + "\n" + s[40:]
	if d, err := b32.DecodeString(strings.TrimPrefix(withNewline, PublicPrefix)); err != nil || !bytes.Equal(d, d1) {
		t.Fatalf("embedded newline no longer decodes to the same bytes (%v)", err)
	}

	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"prefix only", PublicPrefix},
		{"non-canonical tail", nc},
		{"embedded newline", withNewline},
		{"embedded space", s[:40] + " " + s[40:]},
		{"wrong prefix", "sera2" + body},
		{"no prefix", body},
		{"age prefix", "age1" + body},
		{"upper-case", strings.ToUpper(s)},
		{"upper-case body", PublicPrefix + strings.ToUpper(body)},
		{"upper-case prefix", strings.ToUpper(PublicPrefix) + body},
		{"one upper-case character", s[:30] + strings.ToUpper(s[30:31]) + s[31:]},
		{"truncated", s[:len(s)-1]},
		{"truncated by 8", s[:len(s)-8]},
		{"extended", s + "a"},
		{"extended by 8", s + "aaaaaaaa"},
		{"doubled", s + s},
		{"padding", s + "==="},
		{"secret key", id.SecretString()},
		{"bad character", s[:30] + "1" + s[31:]},
		{"non-ASCII", s[:30] + "é" + s[31:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePublicKey(tt.in)
			if !errors.Is(err, ErrMalformedKey) {
				t.Fatalf("ParsePublicKey(%q) = %v, %v; want ErrMalformedKey", tt.in, p, err)
			}
			if p != nil {
				t.Errorf("ParsePublicKey returned a key with an error")
			}
		})
	}
}

func TestParsePublicKeyTypo(t *testing.T) {
	// Every one-character substitution in the body must be caught. Each
	// mangled string still decodes to 68 bytes, so only the checksum (or, in
	// the last character, the canonical check) can reject it.
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	s := testIdentity(t, 3).Public().String()
	n := 0
	for i := len(PublicPrefix); i < len(s); i++ {
		for _, c := range []byte(alphabet) {
			if c == s[i] {
				continue
			}
			typo := s[:i] + string(c) + s[i+1:]
			data, err := b32.DecodeString(typo[len(PublicPrefix):])
			if err != nil || len(data) != 2*keyBytes+checksumBytes {
				t.Fatalf("typo at %d does not decode to a full key: %v", i, err)
			}
			if _, err := ParsePublicKey(typo); !errors.Is(err, ErrMalformedKey) {
				t.Fatalf("typo %q at %d: got %v, want ErrMalformedKey", c, i, err)
			}
			n++
		}
	}
	if n != 109*31 {
		t.Errorf("tried %d typos, want %d", n, 109*31)
	}
	// A typo in the prefix is a wrong prefix.
	for i := range len(PublicPrefix) {
		typo := s[:i] + "x" + s[i+1:]
		if _, err := ParsePublicKey(typo); !errors.Is(err, ErrMalformedKey) {
			t.Errorf("prefix typo at %d: got %v, want ErrMalformedKey", i, err)
		}
	}
}

func TestParseTrimsWhitespace(t *testing.T) {
	id := testIdentity(t, 4)
	pub, sec := id.Public().String(), id.SecretString()
	for _, w := range []struct{ before, after string }{
		{" ", ""},
		{"", "\n"},
		{"\t ", " \r\n"},
		{"\n\n", "\n\n"},
		{"", "\r\n"},
	} {
		p, err := ParsePublicKey(w.before + pub + w.after)
		if err != nil {
			t.Fatalf("ParsePublicKey with %q…%q: %v", w.before, w.after, err)
		}
		if p.String() != pub {
			t.Errorf("String() = %q, want the trimmed form %q", p.String(), pub)
		}
		if p.Fingerprint() != id.Public().Fingerprint() {
			t.Errorf("whitespace changed the fingerprint")
		}
		got, err := ParseIdentity(w.before + sec + w.after)
		if err != nil {
			t.Fatalf("ParseIdentity with %q…%q: %v", w.before, w.after, err)
		}
		if got.SecretString() != sec {
			t.Errorf("whitespace changed the secret key")
		}
	}
}

func TestParseIdentityRejects(t *testing.T) {
	id := testIdentity(t, 5)
	s := id.SecretString()
	body := strings.TrimPrefix(s, SecretPrefix)
	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"public key", id.Public().String()},
		{"wrong prefix", "sera-secret2" + body},
		{"public prefix", PublicPrefix + body},
		{"upper-case", strings.ToUpper(s)},
		{"typo", s[:20] + string("ab"[boolInt(s[20] == 'a')]) + s[21:]},
		{"non-canonical tail", flipUnusedBit(s)},
		{"truncated", s[:len(s)-1]},
		{"extended", s + "a"},
		{"embedded newline", s[:40] + "\n" + s[40:]},
		{"two keys on a line", s + " " + s},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIdentity(tt.in)
			if !errors.Is(err, ErrMalformedKey) {
				t.Fatalf("got %v, want ErrMalformedKey", err)
			}
			if got != nil {
				t.Errorf("ParseIdentity returned an identity with an error")
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// assertNoSecret fails if msg contains the secret or any 8-character run of
// its base32 body (40 bits of key material).
func assertNoSecret(t *testing.T, msg, secret string) {
	t.Helper()
	body := strings.TrimPrefix(secret, SecretPrefix)
	lower := strings.ToLower(msg)
	for i := 0; i+8 <= len(body); i++ {
		if strings.Contains(lower, body[i:i+8]) {
			t.Fatalf("error %q contains secret key material %q", msg, body[i:i+8])
		}
	}
}

func TestSecretNeverEchoed(t *testing.T) {
	id := testIdentity(t, 6)
	s := id.SecretString()
	body := strings.TrimPrefix(s, SecretPrefix)
	inputs := []string{
		s[:len(s)-1],
		s + "a",
		s[:30] + string("ab"[boolInt(s[30] == 'a')]) + s[31:],
		strings.ToUpper(s),
		body,
		"sera-secret2" + body,
		flipUnusedBit(s),
		"SERA_KEY=" + s,
	}
	for _, in := range inputs {
		_, err := ParseIdentity(in)
		if err == nil {
			t.Fatalf("ParseIdentity accepted a damaged key")
		}
		assertNoSecret(t, err.Error(), s)
		_, err = ParseIdentityFile([]byte("# sera key\n" + in + "\n"))
		if err == nil {
			t.Fatalf("ParseIdentityFile accepted a damaged key")
		}
		assertNoSecret(t, err.Error(), s)
	}
	// A secret key pasted where a public key belongs (known_clients, a
	// command-line argument) must not be echoed either: the error may be
	// logged.
	for _, in := range []string{s, " " + s, "key=" + s, strings.ToUpper(s), s[:len(s)-1]} {
		_, err := ParsePublicKey(in)
		if !errors.Is(err, ErrMalformedKey) {
			t.Fatalf("ParsePublicKey(secret) = %v, want ErrMalformedKey", err)
		}
		assertNoSecret(t, err.Error(), s)
	}
}

func TestParsePublicKeyErrorNamesInput(t *testing.T) {
	// Public keys are not secret: the error helps the user by quoting the
	// start of what was given, abbreviated.
	in := "sera1notakey" + strings.Repeat("x", 100)
	_, err := ParsePublicKey(in)
	if !errors.Is(err, ErrMalformedKey) {
		t.Fatalf("got %v, want ErrMalformedKey", err)
	}
	if !strings.Contains(err.Error(), "sera1notakey") {
		t.Errorf("error %q does not quote the input", err)
	}
	if strings.Contains(err.Error(), in) {
		t.Errorf("error %q is not abbreviated", err)
	}
}

func TestParseIdentityFile(t *testing.T) {
	id := testIdentity(t, 7)
	other := testIdentity(t, 8)
	s := id.SecretString()
	ok := []struct{ name, file string }{
		{"bare", s},
		{"newline", s + "\n"},
		{"CRLF", "# created by sera keygen\r\n" + s + "\r\n"},
		{"comments and blanks", "# created: 2026-01-01\n# public key: " + id.Public().String() + "\n\n" + s + "\n\n# end\n"},
		{"indented", "\t# comment\n   " + s + "   \n"},
		{"comment mentioning a key", "# old: " + other.SecretString() + "\n" + s + "\n"},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIdentityFile([]byte(tt.file))
			if err != nil {
				t.Fatalf("ParseIdentityFile: %v", err)
			}
			if got.SecretString() != s || !got.Public().Equal(id.Public()) {
				t.Errorf("parsed the wrong identity")
			}
		})
	}
	bad := []struct{ name, file string }{
		{"empty", ""},
		{"blank lines", "\n\n  \n\t\n"},
		{"comments only", "# nothing\n# here\n"},
		{"two keys", s + "\n" + other.SecretString() + "\n"},
		{"same key twice", s + "\n" + s + "\n"},
		{"two keys with comments", "# a\n" + s + "\n# b\n" + other.SecretString()},
		{"key then junk", s + "\njunk\n"},
		{"junk then key", "junk\n" + s + "\n"},
		{"public key", id.Public().String() + "\n"},
		{"trailing comment on key line", s + " # mine\n"},
		{"CR-only line endings", "# c\r" + s + "\r"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIdentityFile([]byte(tt.file))
			if !errors.Is(err, ErrMalformedKey) {
				t.Fatalf("got %v, %v; want ErrMalformedKey", got, err)
			}
			assertNoSecret(t, err.Error(), s)
			assertNoSecret(t, err.Error(), other.SecretString())
		})
	}
}

func TestFingerprint(t *testing.T) {
	seen := map[string]bool{}
	for i := range uint64(50) {
		p := testIdentity(t, i).Public()
		fp := p.Fingerprint()
		if len(fp) != FingerprintLen || FingerprintLen != 16 {
			t.Fatalf("fingerprint %q is %d characters, want 16", fp, len(fp))
		}
		if !ValidFingerprint(fp) {
			t.Fatalf("ValidFingerprint(%q) = false for a real fingerprint", fp)
		}
		if seen[fp] {
			t.Fatalf("fingerprint %q repeated", fp)
		}
		seen[fp] = true
		again, err := ParsePublicKey(p.String())
		if err != nil {
			t.Fatal(err)
		}
		if again.Fingerprint() != fp {
			t.Errorf("fingerprint not stable across parsing: %q vs %q", again.Fingerprint(), fp)
		}
		sum := sha256.Sum256([]byte(p.String()))
		if want := strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:16]; fp != want {
			t.Errorf("fingerprint %q, want %q", fp, want)
		}
	}
}

func TestValidFingerprint(t *testing.T) {
	fp := testIdentity(t, 9).Public().Fingerprint()
	tests := []struct {
		in   string
		want bool
	}{
		{fp, true},
		{"abcdefghijklmnop", true},
		{"qrstuvwxyz234567", true},
		{"aaaaaaaaaaaaaaaa", true},
		{"", false},
		{fp[:15], false},
		{fp + "a", false},
		{strings.ToUpper(fp), false},
		{"Abcdefghijklmnop", false},
		{"abcdefghijklmno0", false},
		{"abcdefghijklmno1", false},
		{"abcdefghijklmno8", false},
		{"abcdefghijklmno9", false},
		{"abcdefghijklmno=", false},
		{"abcdefghijklmno-", false},
		{"abcdefghijklmno ", false},
		{"abcdefghijklmné", false}, // 16 bytes, not 16 characters
		{"abcdefghijklmn\x00o", false},
		{"../../etc/passwd", false},
	}
	for _, tt := range tests {
		if got := ValidFingerprint(tt.in); got != tt.want {
			t.Errorf("ValidFingerprint(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestEqual(t *testing.T) {
	a := testIdentity(t, 10).Public()
	a2, err := ParsePublicKey(a.String())
	if err != nil {
		t.Fatal(err)
	}
	b := testIdentity(t, 11).Public()
	var none *PublicKey
	tests := []struct {
		name string
		p, q *PublicKey
		want bool
	}{
		{"same pointer", a, a, true},
		{"same key, parsed again", a, a2, true},
		{"same key, parsed again, reversed", a2, a, true},
		{"different keys", a, b, false},
		{"different keys, reversed", b, a, false},
		{"nil and nil", none, none, true},
		{"key and nil", a, none, false},
		{"nil and key", none, a, false},
	}
	for _, tt := range tests {
		if got := tt.p.Equal(tt.q); got != tt.want {
			t.Errorf("%s: Equal = %v, want %v", tt.name, got, tt.want)
		}
	}
}
