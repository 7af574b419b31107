package crypto

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"golang.org/x/crypto/nacl/box"
	"golang.org/x/crypto/nacl/secretbox"
)

// wireEnvelope is the request envelope's wire format, written out here
// independently of the package so that a change to it fails the tests.
type wireEnvelope struct {
	V          int             `json:"v"`
	Sender     string          `json:"sender"`
	Recipients []wireRecipient `json:"recipients"`
	Nonce      []byte          `json:"nonce"`
	Box        []byte          `json:"box"`
}

type wireRecipient struct {
	KID string `json:"kid"`
	Key []byte `json:"key"`
}

func decodeWire(t testing.TB, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("message does not decode as the documented wire format: %v", err)
	}
}

func encodeWire(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rewrite decodes a sealed envelope, lets f change it and encodes it again.
func rewrite(t testing.TB, b []byte, f func(*wireEnvelope)) []byte {
	t.Helper()
	var w wireEnvelope
	decodeWire(t, b, &w)
	f(&w)
	return encodeWire(t, w)
}

// seal calls SealRequest with deterministic randomness and fails the test
// on error.
func seal(t testing.TB, from *Identity, to []*PublicKey, payload []byte) []byte {
	t.Helper()
	b, err := SealRequest(testRand(42), from, to, payload)
	if err != nil {
		t.Fatalf("SealRequest: %v", err)
	}
	return b
}

// parseOpen parses b and opens it with id.
func parseOpen(b []byte, id *Identity) ([]byte, error) {
	env, err := ParseEnvelope(b)
	if err != nil {
		return nil, err
	}
	return env.Open(id)
}

// handSeal mirrors SealRequest step by step with nacl/secretbox and
// nacl/box, but signs context‖payload with signer: it makes envelopes that
// are encrypted correctly yet signed wrongly.
func handSeal(t testing.TB, from *Identity, signer ed25519.PrivateKey, context []byte, to []*PublicKey, payload []byte) []byte {
	t.Helper()
	var key [32]byte
	var nonce [24]byte
	r := testRand(7)
	io.ReadFull(r, key[:])
	io.ReadFull(r, nonce[:])
	sig := ed25519.Sign(signer, append(append([]byte{}, context...), payload...))
	w := wireEnvelope{V: 1, Sender: from.Public().String(), Nonce: nonce[:]}
	w.Box = secretbox.Seal(nil, append(append([]byte{}, payload...), sig...), &nonce, &key)
	for _, p := range to {
		w.Recipients = append(w.Recipients, wireRecipient{
			KID: p.Fingerprint(),
			Key: box.Seal(nil, key[:], &nonce, &p.box, &from.box),
		})
	}
	return encodeWire(t, w)
}

func publics(ids ...*Identity) []*PublicKey {
	var ps []*PublicKey
	for _, id := range ids {
		ps = append(ps, id.Public())
	}
	return ps
}

func TestSealOpen(t *testing.T) {
	client := testIdentity(t, 100)
	w := []*Identity{testIdentity(t, 101), testIdentity(t, 102), testIdentity(t, 103)}
	outsider := testIdentity(t, 104)
	payloads := map[string][]byte{
		"empty": {},
		"short": []byte(`{"id":"x","argv":["uptime"]}`),
		"64KiB": bytes.Repeat([]byte("sera"), 1<<14),
	}
	for _, n := range []int{1, 3} {
		for name, payload := range payloads {
			t.Run(fmt.Sprintf("recipients=%d/%s", n, name), func(t *testing.T) {
				b := seal(t, client, publics(w[:n]...), payload)

				var wire wireEnvelope
				decodeWire(t, b, &wire)
				if wire.V != 1 || wire.Sender != client.Public().String() || len(wire.Recipients) != n {
					t.Fatalf("wire envelope: v=%d sender=%q recipients=%d", wire.V, wire.Sender, len(wire.Recipients))
				}
				for i, r := range wire.Recipients {
					if r.KID != w[i].Public().Fingerprint() {
						t.Errorf("recipient %d kid %q, want %q", i, r.KID, w[i].Public().Fingerprint())
					}
				}
				if bytes.Contains(b, payload[:min(len(payload), 16)]) && len(payload) > 0 {
					t.Errorf("envelope contains the plaintext")
				}

				env, err := ParseEnvelope(b)
				if err != nil {
					t.Fatalf("ParseEnvelope: %v", err)
				}
				if env.Recipients() != n {
					t.Errorf("Recipients() = %d, want %d", env.Recipients(), n)
				}
				if !env.Sender.Equal(client.Public()) {
					t.Errorf("Sender = %v, want %v", env.Sender, client.Public())
				}
				for i := range n {
					got, err := env.Open(w[i])
					if err != nil {
						t.Fatalf("recipient %d: Open: %v", i, err)
					}
					if !bytes.Equal(got, payload) {
						t.Fatalf("recipient %d: payload %q, want %q", i, got, payload)
					}
				}
				for i := n; i < len(w); i++ {
					if _, err := env.Open(w[i]); !errors.Is(err, ErrNotRecipient) {
						t.Errorf("unaddressed watcher %d: got %v, want ErrNotRecipient", i, err)
					}
				}
				if _, err := env.Open(outsider); !errors.Is(err, ErrNotRecipient) {
					t.Errorf("outsider: got %v, want ErrNotRecipient", err)
				}
				// The sender is not a recipient of its own request.
				if _, err := env.Open(client); !errors.Is(err, ErrNotRecipient) {
					t.Errorf("sender: got %v, want ErrNotRecipient", err)
				}
			})
		}
	}
}

func TestSealIsRandomized(t *testing.T) {
	client, watcher := testIdentity(t, 110), testIdentity(t, 111)
	to := publics(watcher)
	a, err := SealRequest(testRand(1), client, to, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := SealRequest(testRand(2), client, to, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	var wa, wb wireEnvelope
	decodeWire(t, a, &wa)
	decodeWire(t, b, &wb)
	if bytes.Equal(wa.Nonce, wb.Nonce) || bytes.Equal(wa.Box, wb.Box) || bytes.Equal(wa.Recipients[0].Key, wb.Recipients[0].Key) {
		t.Error("two seals with different randomness share a nonce, box or wrapped key")
	}
}

func TestSealToSelf(t *testing.T) {
	id := testIdentity(t, 112)
	got, err := parseOpen(seal(t, id, publics(id), []byte("note to self")), id)
	if err != nil || string(got) != "note to self" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestSealRequestDeduplicates(t *testing.T) {
	client := testIdentity(t, 120)
	a, b := testIdentity(t, 121), testIdentity(t, 122)
	aAgain, err := ParsePublicKey(a.Public().String())
	if err != nil {
		t.Fatal(err)
	}
	to := []*PublicKey{a.Public(), a.Public(), b.Public(), aAgain, b.Public()}
	sealed := seal(t, client, to, []byte("once each"))
	var w wireEnvelope
	decodeWire(t, sealed, &w)
	if len(w.Recipients) != 2 {
		t.Fatalf("envelope has %d recipient entries, want 2", len(w.Recipients))
	}
	if w.Recipients[0].KID != a.Public().Fingerprint() || w.Recipients[1].KID != b.Public().Fingerprint() {
		t.Errorf("recipient order not kept: %q, %q", w.Recipients[0].KID, w.Recipients[1].KID)
	}
	env, err := ParseEnvelope(sealed)
	if err != nil {
		t.Fatalf("ParseEnvelope: %v", err)
	}
	if env.Recipients() != 2 {
		t.Errorf("Recipients() = %d, want 2", env.Recipients())
	}
	for _, id := range []*Identity{a, b} {
		if got, err := env.Open(id); err != nil || string(got) != "once each" {
			t.Errorf("Open: %q, %v", got, err)
		}
	}
}

func TestSealRequestErrors(t *testing.T) {
	client, w := testIdentity(t, 130), testIdentity(t, 131)
	tooMany := make([]*PublicKey, MaxRecipients+1)
	for i := range tooMany {
		tooMany[i] = w.Public()
	}
	tests := []struct {
		name    string
		rand    io.Reader
		to      []*PublicKey
		payload []byte
	}{
		{"no recipients", testRand(1), nil, []byte("p")},
		{"empty recipients", testRand(1), []*PublicKey{}, []byte("p")},
		{"too many recipients", testRand(1), tooMany, []byte("p")},
		{"too large", testRand(1), publics(w), make([]byte, MaxEnvelopeSize)},
		{"no randomness", errReader{}, publics(w), []byte("p")},
		{"short randomness", bytes.NewReader(make([]byte, 40)), publics(w), []byte("p")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := SealRequest(tt.rand, client, tt.to, tt.payload)
			if err == nil {
				t.Fatalf("SealRequest succeeded (%d bytes)", len(b))
			}
			if b != nil {
				t.Errorf("SealRequest returned bytes with an error")
			}
		})
	}
}

func TestSealRequestSizeLimit(t *testing.T) {
	// Every envelope SealRequest returns must be one ParseEnvelope accepts:
	// find the largest payload that seals and check it.
	client, w := testIdentity(t, 132), testIdentity(t, 133)
	to := publics(w)
	lo, hi := 0, MaxEnvelopeSize // seals at lo, fails at hi
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if _, err := SealRequest(testRand(1), client, to, make([]byte, mid)); err == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	b, err := SealRequest(testRand(1), client, to, make([]byte, lo))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxEnvelopeSize || len(b) < MaxEnvelopeSize-8 {
		t.Errorf("largest envelope is %d bytes, want just under %d", len(b), MaxEnvelopeSize)
	}
	got, err := parseOpen(b, w)
	if err != nil || len(got) != lo {
		t.Fatalf("largest envelope (%d bytes, payload %d) does not open: %v", len(b), lo, err)
	}
}

func TestOpenSenderSwapped(t *testing.T) {
	client, mallory := testIdentity(t, 140), testIdentity(t, 141)
	ws := []*Identity{testIdentity(t, 142), testIdentity(t, 143)}
	b := seal(t, client, publics(ws...), []byte("run uptime"))
	// The kids still name the watchers, but the claimed sender is another
	// client: the box between that client and a watcher does not open.
	swapped := rewrite(t, b, func(w *wireEnvelope) { w.Sender = mallory.Public().String() })
	env, err := ParseEnvelope(swapped)
	if err != nil {
		t.Fatalf("ParseEnvelope: %v", err)
	}
	if !env.Sender.Equal(mallory.Public()) {
		t.Fatal("rewrite did not change the sender")
	}
	for i, w := range ws {
		if _, err := env.Open(w); !errors.Is(err, ErrBoxOpen) {
			t.Errorf("watcher %d: got %v, want ErrBoxOpen", i, err)
		}
	}
	// A recipient named as the sender does not help either.
	swapped = rewrite(t, b, func(w *wireEnvelope) { w.Sender = ws[1].Public().String() })
	if _, err := parseOpen(swapped, ws[0]); !errors.Is(err, ErrBoxOpen) {
		t.Errorf("recipient as sender: got %v, want ErrBoxOpen", err)
	}
}

func TestOpenWrappedKeyTampered(t *testing.T) {
	client := testIdentity(t, 150)
	a, b := testIdentity(t, 151), testIdentity(t, 152)
	sealed := seal(t, client, publics(a, b), []byte("payload"))
	var w wireEnvelope
	decodeWire(t, sealed, &w)
	for i := range wrappedKeySize {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			bad := rewrite(t, sealed, func(w *wireEnvelope) { w.Recipients[0].Key[i] ^= mask })
			if _, err := parseOpen(bad, a); !errors.Is(err, ErrBoxOpen) {
				t.Fatalf("byte %d ^ %#x: got %v, want ErrBoxOpen", i, mask, err)
			}
			// The other recipient's entry is untouched and still opens.
			if _, err := parseOpen(bad, b); err != nil {
				t.Fatalf("byte %d ^ %#x: untouched recipient: %v", i, mask, err)
			}
		}
	}
	// Entries swapped between kids: each watcher gets the other's box.
	crossed := rewrite(t, sealed, func(w *wireEnvelope) {
		w.Recipients[0].Key, w.Recipients[1].Key = w.Recipients[1].Key, w.Recipients[0].Key
	})
	for _, id := range []*Identity{a, b} {
		if _, err := parseOpen(crossed, id); !errors.Is(err, ErrBoxOpen) {
			t.Errorf("crossed entries: got %v, want ErrBoxOpen", err)
		}
	}
}

func TestOpenNonceTampered(t *testing.T) {
	client, watcher := testIdentity(t, 153), testIdentity(t, 154)
	sealed := seal(t, client, publics(watcher), []byte("payload"))
	for i := range nonceSize {
		bad := rewrite(t, sealed, func(w *wireEnvelope) { w.Nonce[i] ^= 0x01 })
		if _, err := parseOpen(bad, watcher); !errors.Is(err, ErrBoxOpen) {
			t.Fatalf("nonce byte %d: got %v, want ErrBoxOpen", i, err)
		}
	}
}

func TestOpenPayloadTampered(t *testing.T) {
	client := testIdentity(t, 160)
	a, b := testIdentity(t, 161), testIdentity(t, 162)
	payload := []byte(`{"id":"0123456789abcdef","argv":["systemctl","restart","nginx"]}`)
	sealed := seal(t, client, publics(a, b), payload)
	var w wireEnvelope
	decodeWire(t, sealed, &w)
	if want := len(payload) + ed25519.SignatureSize + secretbox.Overhead; len(w.Box) != want {
		t.Fatalf("box is %d bytes, want %d", len(w.Box), want)
	}
	for i := range w.Box {
		for _, mask := range []byte{0x01, 0x80} {
			bad := rewrite(t, sealed, func(w *wireEnvelope) { w.Box[i] ^= mask })
			for _, id := range []*Identity{a, b} {
				if got, err := parseOpen(bad, id); !errors.Is(err, ErrPayloadOpen) {
					t.Fatalf("box byte %d ^ %#x: got %q, %v; want ErrPayloadOpen", i, mask, got, err)
				}
			}
		}
	}
	for name, f := range map[string]func(*wireEnvelope){
		"truncated": func(w *wireEnvelope) { w.Box = w.Box[:len(w.Box)-1] },
		"extended":  func(w *wireEnvelope) { w.Box = append(w.Box, 0) },
		"tag only": func(w *wireEnvelope) {
			w.Box = append(w.Box[:secretbox.Overhead:secretbox.Overhead], make([]byte, 64)...)
		},
	} {
		if _, err := parseOpen(rewrite(t, sealed, f), a); !errors.Is(err, ErrPayloadOpen) {
			t.Errorf("%s: got %v, want ErrPayloadOpen", name, err)
		}
	}
	// A box from another envelope between the same parties: the wrapped
	// key opens, but it is the wrong key for this box.
	other, err := SealRequest(testRand(43), client, publics(a, b), payload)
	if err != nil {
		t.Fatal(err)
	}
	var wo wireEnvelope
	decodeWire(t, other, &wo)
	spliced := rewrite(t, sealed, func(w *wireEnvelope) { w.Box = wo.Box })
	if _, err := parseOpen(spliced, a); !errors.Is(err, ErrPayloadOpen) {
		t.Errorf("spliced box: got %v, want ErrPayloadOpen", err)
	}
}

func TestOpenSignature(t *testing.T) {
	client, mallory := testIdentity(t, 170), testIdentity(t, 171)
	a, b := testIdentity(t, 172), testIdentity(t, 173)
	to := publics(a, b)
	payload := []byte(`{"argv":["reboot"]}`)

	// Control: the hand-made envelope with the right key and context opens,
	// so the failures below are the signature's and nothing else's.
	good := handSeal(t, client, client.sign, requestSigContext, to, payload)
	for _, id := range []*Identity{a, b} {
		if got, err := parseOpen(good, id); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("hand-sealed control envelope: %q, %v", got, err)
		}
	}

	tests := []struct {
		name    string
		signer  ed25519.PrivateKey
		context []byte
	}{
		{"signed by another client", mallory.sign, requestSigContext},
		{"signed by the recipient", a.sign, requestSigContext},
		{"no context", client.sign, nil},
		{"context without NUL", client.sign, []byte("sera request v1")},
		{"next version's context", client.sign, []byte("sera request v2\x00")},
		{"reply context", client.sign, replyContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed := handSeal(t, client, tt.signer, tt.context, to, payload)
			for _, id := range []*Identity{a, b} {
				if got, err := parseOpen(sealed, id); !errors.Is(err, ErrSignature) {
					t.Fatalf("got %q, %v; want ErrSignature", got, err)
				}
			}
		})
	}

	// Context moved into the payload: signing "sera request v1\x00" ‖ p
	// with no context is the same signature as signing p with it, but the
	// payload then carries the context bytes, so it is not the same request.
	shifted := handSeal(t, client, client.sign, nil, to, append(append([]byte{}, requestSigContext...), payload...))
	if _, err := parseOpen(shifted, a); !errors.Is(err, ErrSignature) {
		t.Errorf("context inside the payload: got %v, want ErrSignature", err)
	}
}

func TestParseEnvelopeDuplicateKid(t *testing.T) {
	client, watcher := testIdentity(t, 180), testIdentity(t, 181)
	// Two entries for the same watcher, both of which open: which one a
	// parser keeps must not matter, so the envelope is rejected.
	one := handSeal(t, client, client.sign, requestSigContext, publics(watcher), []byte("p"))
	if _, err := parseOpen(one, watcher); err != nil {
		t.Fatalf("control: %v", err)
	}
	dup := rewrite(t, one, func(w *wireEnvelope) { w.Recipients = append(w.Recipients, w.Recipients[0]) })
	if _, err := ParseEnvelope(dup); !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v; want ErrMalformed", err)
	}
	// A duplicate kid separated by another recipient.
	three := seal(t, client, publics(watcher, testIdentity(t, 182)), []byte("p"))
	dup = rewrite(t, three, func(w *wireEnvelope) { w.Recipients = append(w.Recipients, w.Recipients[0]) })
	if _, err := ParseEnvelope(dup); !errors.Is(err, ErrMalformed) {
		t.Fatalf("non-adjacent duplicate: got %v, want ErrMalformed", err)
	}
}

func TestParseEnvelopeMalformed(t *testing.T) {
	client, watcher := testIdentity(t, 190), testIdentity(t, 191)
	good := seal(t, client, publics(watcher), []byte(`{"argv":["uptime"]}`))
	if _, err := parseOpen(good, watcher); err != nil {
		t.Fatalf("control envelope: %v", err)
	}
	mod := func(f func(*wireEnvelope)) []byte { return rewrite(t, good, f) }
	// raw edits the JSON text of the good envelope.
	raw := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("envelope does not contain %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	var w wireEnvelope
	decodeWire(t, good, &w)
	tooManyEmpty := []byte(`{"v":1,"sender":"` + client.Public().String() + `","recipients":[` +
		strings.Repeat(`{},`, MaxRecipients) + `{}],"nonce":"` + strings.Repeat("A", 32) + `","box":""}`)

	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"whitespace", []byte("  \n")},
		{"not JSON", []byte("sera")},
		{"JSON null", []byte("null")},
		{"JSON array", []byte("[]")},
		{"JSON string", []byte(`"x"`)},
		{"empty object", []byte("{}")},
		{"truncated", good[:len(good)-1]},
		{"version 0", mod(func(w *wireEnvelope) { w.V = 0 })},
		{"version 2", mod(func(w *wireEnvelope) { w.V = 2 })},
		{"version -1", mod(func(w *wireEnvelope) { w.V = -1 })},
		{"version as string", raw(`"v":1`, `"v":"1"`)},
		{"version as float", raw(`"v":1`, `"v":1.0`)},
		{"version missing", raw(`"v":1,`, ``)},
		{"unknown field", raw(`{"v":1`, `{"v":1,"x":0`)},
		{"unknown field in recipient", raw(`"kid"`, `"x":0,"kid"`)},
		{"reply field", raw(`{"v":1`, `{"v":1,"from":""`)},
		{"trailing garbage", append(bytes.Clone(good), 'x')},
		{"trailing object", append(bytes.Clone(good), "{}"...)},
		{"trailing envelope", append(bytes.Clone(good), good...)},
		{"trailing newline and envelope", append(append(bytes.Clone(good), '\n'), good...)},
		{"trailing brace", append(bytes.Clone(good), '}')},
		{"trailing bracket", append(bytes.Clone(good), ']')},
		{"trailing number", append(bytes.Clone(good), " 1"...)},
		{"oversized", append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxEnvelopeSize+1-len(good))...)},
		{"oversized garbage", bytes.Repeat([]byte("{"), MaxEnvelopeSize+1)},
		{"sender missing", mod(func(w *wireEnvelope) { w.Sender = "" })},
		{"sender garbage", mod(func(w *wireEnvelope) { w.Sender = "sera1xyz" })},
		{"sender secret key", mod(func(w *wireEnvelope) { w.Sender = client.SecretString() })},
		{"sender non-canonical", mod(func(w *wireEnvelope) { w.Sender = flipUnusedBit(w.Sender) })},
		{"sender as number", raw(`"sender":"`+client.Public().String()+`"`, `"sender":1`)},
		{"nonce missing", mod(func(w *wireEnvelope) { w.Nonce = nil })},
		{"nonce 23 bytes", mod(func(w *wireEnvelope) { w.Nonce = w.Nonce[:23] })},
		{"nonce 25 bytes", mod(func(w *wireEnvelope) { w.Nonce = append(w.Nonce, 0) })},
		{"nonce not base64", raw(`"nonce":"`, `"nonce":"!`)},
		{"no recipients", mod(func(w *wireEnvelope) { w.Recipients = []wireRecipient{} })},
		{"null recipients", mod(func(w *wireEnvelope) { w.Recipients = nil })},
		{"too many recipients", tooManyEmpty},
		{"recipients bracket mismatch", raw(`"recipients":[`, `"recipients":{"a":`)},
		{"recipients as object", raw(`"recipients":[`, `"recipients":{},"r":[`)},
		{"empty recipient", mod(func(w *wireEnvelope) { w.Recipients[0] = wireRecipient{} })},
		{"kid missing", mod(func(w *wireEnvelope) { w.Recipients[0].KID = "" })},
		{"kid upper-case", mod(func(w *wireEnvelope) { w.Recipients[0].KID = strings.ToUpper(w.Recipients[0].KID) })},
		{"kid 15 characters", mod(func(w *wireEnvelope) { w.Recipients[0].KID = w.Recipients[0].KID[:15] })},
		{"kid 17 characters", mod(func(w *wireEnvelope) { w.Recipients[0].KID += "a" })},
		{"kid is a path", mod(func(w *wireEnvelope) { w.Recipients[0].KID = "../../etc/passwd" })},
		{"key missing", mod(func(w *wireEnvelope) { w.Recipients[0].Key = nil })},
		{"key 47 bytes", mod(func(w *wireEnvelope) { w.Recipients[0].Key = w.Recipients[0].Key[:47] })},
		{"key 49 bytes", mod(func(w *wireEnvelope) { w.Recipients[0].Key = append(w.Recipients[0].Key, 0) })},
		{"one bad recipient of two", mod(func(w *wireEnvelope) {
			w.Recipients = append(w.Recipients, wireRecipient{KID: "abcdefghijklmnop", Key: make([]byte, 47)})
		})},
		{"box missing", mod(func(w *wireEnvelope) { w.Box = nil })},
		{"box too short", mod(func(w *wireEnvelope) { w.Box = w.Box[:secretbox.Overhead+ed25519.SignatureSize-1] })},
		{"box tag only", mod(func(w *wireEnvelope) { w.Box = w.Box[:secretbox.Overhead] })},
		{"box not base64", raw(`"box":"`, `"box":"*`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := ParseEnvelope(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v; want ErrMalformed", err)
			}
			if env != nil {
				t.Errorf("ParseEnvelope returned an envelope with an error")
			}
		})
	}
}

func TestParseEnvelopeSizeBoundary(t *testing.T) {
	client, watcher := testIdentity(t, 192), testIdentity(t, 193)
	good := seal(t, client, publics(watcher), []byte("p"))
	// Trailing whitespace is not data: padded to exactly the limit, the
	// envelope still parses and opens.
	padded := append(bytes.Clone(good), bytes.Repeat([]byte("\n"), MaxEnvelopeSize-len(good))...)
	if got, err := parseOpen(padded, watcher); err != nil || string(got) != "p" {
		t.Fatalf("envelope of exactly MaxEnvelopeSize bytes: %q, %v", got, err)
	}
	if _, err := ParseEnvelope(append(padded, '\n')); !errors.Is(err, ErrMalformed) {
		t.Fatalf("envelope of MaxEnvelopeSize+1 bytes: got %v, want ErrMalformed", err)
	}
}

func TestParseEnvelopeDoesNotAlias(t *testing.T) {
	// The caller may reuse its receive buffer after parsing.
	client, watcher := testIdentity(t, 194), testIdentity(t, 195)
	b := seal(t, client, publics(watcher), []byte("payload"))
	env, err := ParseEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if got, err := env.Open(watcher); err != nil || string(got) != "payload" {
		t.Fatalf("after clearing the input: %q, %v", got, err)
	}
}

func TestOpenIsRepeatable(t *testing.T) {
	client := testIdentity(t, 196)
	ws := []*Identity{testIdentity(t, 197), testIdentity(t, 198)}
	env, err := ParseEnvelope(seal(t, client, publics(ws...), []byte("again")))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		for _, w := range ws {
			got, err := env.Open(w)
			if err != nil || string(got) != "again" {
				t.Fatalf("%q, %v", got, err)
			}
			got[0] = 'X' // must not corrupt the envelope
		}
	}
}

func TestUnmarshalStrict(t *testing.T) {
	type msg struct {
		A int    `json:"a"`
		B string `json:"b"`
	}
	tests := []struct {
		in   string
		ok   bool
		want msg
	}{
		{`{"a":1,"b":"x"}`, true, msg{1, "x"}},
		{" \n{\"a\":1}\r\n\t ", true, msg{A: 1}},
		{`{}`, true, msg{}},
		{``, false, msg{}},
		{`{"a":1,"c":2}`, false, msg{}},
		{`{"a":1}x`, false, msg{}},
		{`{"a":1}}`, false, msg{}},
		{`{"a":1}]`, false, msg{}},
		{`{"a":1},`, false, msg{}},
		{`{"a":1}{"a":2}`, false, msg{}},
		{`{"a":1} {"a":2}`, false, msg{}},
		{`{"a":1} 2`, false, msg{}},
		{`{"a":1} null`, false, msg{}},
		{`{"a":1}` + "\x00", false, msg{}},
		{`{"a":1`, false, msg{}},
		{`{"a":"1"}`, false, msg{}},
	}
	for _, tt := range tests {
		var got msg
		err := UnmarshalStrict([]byte(tt.in), &got)
		if (err == nil) != tt.ok {
			t.Errorf("UnmarshalStrict(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && got != tt.want {
			t.Errorf("UnmarshalStrict(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

// Every envelope of one Sealed request opens to the same payload for its
// recipients, and one made for a single recipient names it alone.
func TestSealedEnvelopes(t *testing.T) {
	from := testIdentity(t, 1)
	a, b, c := testIdentity(t, 2), testIdentity(t, 3), testIdentity(t, 4)
	payload := []byte(`{"id":"x"}`)
	s, err := Seal(testRand(7), from, []*PublicKey{a.Public(), b.Public(), a.Public()}, payload)
	if err != nil {
		t.Fatal(err)
	}
	all, err := s.Envelope()
	if err != nil {
		t.Fatal(err)
	}
	onlyB, err := s.EnvelopeFor(b.Public())
	if err != nil {
		t.Fatal(err)
	}
	if len(onlyB) >= len(all) {
		t.Errorf("envelope for one is %d bytes, for all %d", len(onlyB), len(all))
	}
	open := func(env []byte, id *Identity) ([]byte, error) {
		e, err := ParseEnvelope(env)
		if err != nil {
			t.Fatal(err)
		}
		return e.Open(id)
	}
	for _, tt := range []struct {
		name string
		env  []byte
		id   *Identity
		ok   bool
	}{
		{"all, a", all, a, true}, {"all, b", all, b, true}, {"all, c", all, c, false},
		{"for b, b", onlyB, b, true}, {"for b, a", onlyB, a, false},
	} {
		got, err := open(tt.env, tt.id)
		if tt.ok && (err != nil || !bytes.Equal(got, payload)) {
			t.Errorf("%s: %q, %v", tt.name, got, err)
		}
		if !tt.ok && !errors.Is(err, ErrNotRecipient) {
			t.Errorf("%s: opened by a non-recipient: %v", tt.name, err)
		}
	}
	e, _ := ParseEnvelope(all)
	if e.Recipients() != 2 {
		t.Errorf("a recipient named twice is in the envelope %d times", e.Recipients())
	}
	if e, _ := ParseEnvelope(onlyB); e.Recipients() != 1 {
		t.Errorf("envelope for b names %d recipients", e.Recipients())
	}
	if _, err := s.EnvelopeFor(c.Public()); err == nil {
		t.Error("an envelope for a key the request was not sealed for")
	}
}
