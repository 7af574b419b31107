package crypto

import (
	"bytes"
	"encoding/json"
	"errors"
	"hash/fnv"
	"strings"
	"testing"
)

// Fuzz fixtures: one client that seals every seed request, three watchers
// it seals to, and the payloads it signed. Everything is deterministic, so
// the fuzzer's cached corpus stays meaningful between runs.
type fuzzFixture struct {
	client   *Identity
	watchers []*Identity
	payloads map[string]bool
}

func newFuzzFixture(t testing.TB) *fuzzFixture {
	fx := &fuzzFixture{
		client:   testIdentity(t, 900),
		watchers: []*Identity{testIdentity(t, 901), testIdentity(t, 902), testIdentity(t, 903)},
		payloads: map[string]bool{},
	}
	for _, p := range fuzzPayloads {
		fx.payloads[string(p)] = true
	}
	return fx
}

var fuzzPayloads = [][]byte{
	{},
	[]byte("x"),
	[]byte(`{"id":"3f9a","argv":["uptime"],"target":["web-*"]}`),
	bytes.Repeat([]byte{0}, 300),
}

// inputRand derives a deterministic randomness source from a fuzz input.
func inputRand(b []byte) (uint64, func(n int) int) {
	h := fnv.New64a()
	h.Write(b)
	seed := h.Sum64()
	return seed, func(n int) int { return int(seed % uint64(n)) }
}

func FuzzParseEnvelope(f *testing.F) {
	fx := newFuzzFixture(f)
	c, ws := fx.client, fx.watchers
	for i, p := range fuzzPayloads {
		one := seal(f, c, publics(ws[i%3]), p)
		three := seal(f, c, publics(ws...), p)
		f.Add(one)
		f.Add(three)
		if i != 2 {
			continue
		}
		// Mutations of a real envelope, one per rejection path.
		f.Add(one[:len(one)/2])
		f.Add(append(bytes.Clone(one), '}'))
		f.Add(append(bytes.Clone(one), one...))
		f.Add(bytes.Replace(three, []byte(`"v":1`), []byte(`"v":2`), 1))
		f.Add(bytes.Replace(three, []byte(`"box":"`), []byte(`"box":"AAAA`), 1))
		f.Add(rewrite(f, three, func(w *wireEnvelope) { w.Box[len(w.Box)/2] ^= 1 }))
		f.Add(rewrite(f, three, func(w *wireEnvelope) { w.Recipients[1].Key[0] ^= 1 }))
		f.Add(rewrite(f, three, func(w *wireEnvelope) { w.Recipients[2].KID = w.Recipients[0].KID }))
		f.Add(rewrite(f, three, func(w *wireEnvelope) { w.Sender = ws[0].Public().String() }))
		f.Add(rewrite(f, three, func(w *wireEnvelope) { w.Nonce = w.Nonce[1:] }))
		f.Add(rewrite(f, three, func(w *wireEnvelope) { w.Recipients = nil }))
		f.Add(handSeal(f, c, ws[0].sign, requestSigContext, publics(ws...), p))
		f.Add(handSeal(f, c, c.sign, nil, publics(ws...), p))
		f.Add(sealReply(f, ws[0], c.Public(), p))
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"v":1,"sender":"","recipients":[{}],"nonce":"","box":""}`))

	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := ParseEnvelope(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseEnvelope error %v is not ErrMalformed", err)
			}
			if env != nil {
				t.Fatal("ParseEnvelope returned an envelope with an error")
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted input that is not exactly one JSON value")
		}
		if len(b) > MaxEnvelopeSize || env.Sender == nil || env.Recipients() < 1 || env.Recipients() > MaxRecipients {
			t.Fatalf("accepted out-of-bounds envelope: %d bytes, %d recipients", len(b), env.Recipients())
		}
		seed, pick := inputRand(b)
		stranger, err := GenerateIdentity(testRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.Open(stranger); !errors.Is(err, ErrNotRecipient) {
			t.Fatalf("a stranger's Open: got %v, want ErrNotRecipient", err)
		}
		for _, w := range ws {
			payload, err := env.Open(w)
			if err != nil {
				if !errors.Is(err, ErrNotRecipient) && !errors.Is(err, ErrBoxOpen) &&
					!errors.Is(err, ErrPayloadOpen) && !errors.Is(err, ErrSignature) {
					t.Fatalf("Open error %v is none of the sentinels", err)
				}
				continue
			}
			// Only the client signed anything, and only these payloads.
			if !env.Sender.Equal(c.Public()) {
				t.Fatalf("envelope from %s opened", env.Sender)
			}
			if !fx.payloads[string(payload)] {
				t.Fatalf("opened to a payload the client never signed: %q", payload)
			}
			// Any byte change in the sealed payload stops it opening.
			for _, i := range []int{0, len(env.sealed) - 1, pick(len(env.sealed))} {
				bad := *env
				bad.sealed = bytes.Clone(env.sealed)
				bad.sealed[i] ^= byte(1 << (seed % 8))
				if _, err := bad.Open(w); !errors.Is(err, ErrPayloadOpen) {
					t.Fatalf("box byte %d changed: got %v, want ErrPayloadOpen", i, err)
				}
			}
			// Nor does any change in this watcher's wrapped key.
			wrapped := bytes.Clone(env.recipients[w.Public().Fingerprint()])
			wrapped[pick(len(wrapped))] ^= 0x80
			bad := *env
			bad.recipients = map[string][]byte{w.Public().Fingerprint(): wrapped}
			if _, err := bad.Open(w); !errors.Is(err, ErrBoxOpen) {
				t.Fatalf("wrapped key changed: got %v, want ErrBoxOpen", err)
			}
		}
	})
}

func FuzzParseReply(f *testing.F) {
	fx := newFuzzFixture(f)
	// Here the watchers seal replies to the client.
	c, ws := fx.client, fx.watchers
	for i, p := range fuzzPayloads {
		r := sealReply(f, ws[i%3], c.Public(), p)
		f.Add(r)
		if i != 2 {
			continue
		}
		f.Add(r[:len(r)-2])
		f.Add(append(bytes.Clone(r), ']'))
		f.Add(rewriteReply(f, r, func(w *wireReply) { w.Box[3] ^= 1 }))
		f.Add(rewriteReply(f, r, func(w *wireReply) { w.From = ws[1].Public().String() }))
		f.Add(rewriteReply(f, r, func(w *wireReply) { w.Nonce = append(w.Nonce, 0) }))
		f.Add(handSealReply(f, ws[0], c.Public(), make([]byte, 24), p))
		f.Add(seal(f, c, publics(ws...), p))
	}
	f.Add([]byte(`{"v":1,"from":"","nonce":"","box":""}`))

	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReply(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseReply error %v is not ErrMalformed", err)
			}
			if r != nil {
				t.Fatal("ParseReply returned a reply with an error")
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted input that is not exactly one JSON value")
		}
		if r.From == nil || len(r.sealed) < len(replyContext) {
			t.Fatal("accepted a reply without a sender or box")
		}
		seed, pick := inputRand(b)
		stranger, err := GenerateIdentity(testRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Open(stranger); !errors.Is(err, ErrBoxOpen) {
			t.Fatalf("a stranger's Open: got %v, want ErrBoxOpen", err)
		}
		plain, err := r.Open(c)
		if err != nil {
			if !errors.Is(err, ErrBoxOpen) {
				t.Fatalf("Open error %v is not ErrBoxOpen", err)
			}
			return
		}
		known := false
		for _, w := range ws {
			known = known || r.From.Equal(w.Public())
		}
		if !known || !fx.payloads[string(plain)] {
			t.Fatalf("opened a reply nobody sealed: from %s, %q", r.From, plain)
		}
		for _, i := range []int{0, len(r.sealed) - 1, pick(len(r.sealed))} {
			bad := *r
			bad.sealed = bytes.Clone(r.sealed)
			bad.sealed[i] ^= byte(1 << (seed % 8))
			if _, err := bad.Open(c); !errors.Is(err, ErrBoxOpen) {
				t.Fatalf("box byte %d changed: got %v, want ErrBoxOpen", i, err)
			}
		}
	})
}

func FuzzParsePublicKey(f *testing.F) {
	for i := range uint64(3) {
		id := testIdentity(f, 950+i)
		s := id.Public().String()
		f.Add(s)
		f.Add(" " + s + "\r\n")
		f.Add(flipUnusedBit(s))
		f.Add(s[:50] + "\n" + s[50:])
		f.Add(strings.ToUpper(s))
		f.Add(s[:len(s)-1])
		f.Add(id.SecretString())
	}
	f.Add("")
	f.Add(PublicPrefix)
	f.Add(PublicPrefix + strings.Repeat("a", 109))

	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePublicKey(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedKey) {
				t.Fatalf("error %v is not ErrMalformedKey", err)
			}
			if p != nil {
				t.Fatal("ParsePublicKey returned a key with an error")
			}
			return
		}
		if p.String() != strings.TrimSpace(s) {
			t.Fatalf("String() = %q, want the trimmed input %q", p.String(), strings.TrimSpace(s))
		}
		if !strings.HasPrefix(p.String(), PublicPrefix) || len(p.String()) != len(PublicPrefix)+109 {
			t.Fatalf("accepted %q, not the canonical form", p.String())
		}
		q, err := ParsePublicKey(p.String())
		if err != nil {
			t.Fatalf("String() does not re-parse: %v", err)
		}
		if !q.Equal(p) || q.String() != p.String() || q.Fingerprint() != p.Fingerprint() {
			t.Fatalf("re-parsed key differs: %q vs %q", q, p)
		}
		if !ValidFingerprint(p.Fingerprint()) {
			t.Fatalf("invalid fingerprint %q", p.Fingerprint())
		}
		// One key, one string: re-encoding the key material gives it back.
		if got := encodeKeyIndependently(PublicPrefix, p.sign, p.box[:]); got != p.String() {
			t.Fatalf("key material encodes to %q, accepted %q", got, p.String())
		}
	})
}

func FuzzParseIdentity(f *testing.F) {
	id := testIdentity(f, 960)
	s := id.SecretString()
	f.Add(s)
	f.Add("\t" + s + "\n")
	f.Add(flipUnusedBit(s))
	f.Add(s[:len(s)-1])
	f.Add(id.Public().String())
	f.Add("# comment\n" + s)

	_, emptyErr := ParseIdentity("")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseIdentity(in)
		if err != nil {
			// The error must not depend on the input at all: it is a secret.
			if !errors.Is(err, ErrMalformedKey) || err.Error() != emptyErr.Error() {
				t.Fatalf("error %q differs from the fixed message %q", err, emptyErr)
			}
			return
		}
		if got.SecretString() != strings.TrimSpace(in) {
			t.Fatalf("SecretString() is not the trimmed input")
		}
		again, err := ParseIdentity(got.SecretString())
		if err != nil || !again.Public().Equal(got.Public()) {
			t.Fatalf("SecretString() does not round-trip: %v", err)
		}
		file, err := ParseIdentityFile([]byte("# key\n" + in + "\n"))
		if err != nil {
			t.Fatalf("ParseIdentityFile rejects a key ParseIdentity accepts: %v", err)
		}
		if err == nil && file.SecretString() != got.SecretString() {
			t.Fatalf("ParseIdentityFile parsed a different key")
		}
	})
}
