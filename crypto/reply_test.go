package crypto

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/crypto/nacl/box"
)

// wireReply is the reply's wire format, written out independently.
type wireReply struct {
	V     int    `json:"v"`
	From  string `json:"from"`
	Nonce []byte `json:"nonce"`
	Box   []byte `json:"box"`
}

func rewriteReply(t testing.TB, b []byte, f func(*wireReply)) []byte {
	t.Helper()
	var w wireReply
	decodeWire(t, b, &w)
	f(&w)
	return encodeWire(t, w)
}

func sealReply(t testing.TB, from *Identity, to *PublicKey, plain []byte) []byte {
	t.Helper()
	b, err := SealReply(testRand(99), from, to, plain)
	if err != nil {
		t.Fatalf("SealReply: %v", err)
	}
	return b
}

func parseOpenReply(b []byte, id *Identity) ([]byte, error) {
	r, err := ParseReply(b)
	if err != nil {
		return nil, err
	}
	return r.Open(id)
}

// handSealReply boxes plain exactly as given, with no reply context added.
func handSealReply(t testing.TB, from *Identity, to *PublicKey, nonce []byte, plain []byte) []byte {
	t.Helper()
	var n [24]byte
	copy(n[:], nonce)
	w := wireReply{V: 1, From: from.Public().String(), Nonce: n[:]}
	w.Box = box.Seal(nil, plain, &n, &to.box, &from.box)
	return encodeWire(t, w)
}

func TestReplyRoundTrip(t *testing.T) {
	watcher, client := testIdentity(t, 200), testIdentity(t, 201)
	for name, plain := range map[string][]byte{
		"empty":  {},
		"short":  []byte(`{"id":"x","exit":0,"stdout":"up 3 days"}`),
		"binary": {0, 1, 2, 0xff, 0xfe},
		"256KiB": bytes.Repeat([]byte{0xa5}, 256<<10),
	} {
		t.Run(name, func(t *testing.T) {
			b := sealReply(t, watcher, client.Public(), plain)
			var w wireReply
			decodeWire(t, b, &w)
			if w.V != 1 || w.From != watcher.Public().String() || len(w.Nonce) != 24 {
				t.Fatalf("wire reply: v=%d from=%q nonce=%d bytes", w.V, w.From, len(w.Nonce))
			}
			if want := len(replyContext) + len(plain) + box.Overhead; len(w.Box) != want {
				t.Errorf("box is %d bytes, want %d", len(w.Box), want)
			}
			r, err := ParseReply(b)
			if err != nil {
				t.Fatalf("ParseReply: %v", err)
			}
			if !r.From.Equal(watcher.Public()) {
				t.Errorf("From = %v, want %v", r.From, watcher.Public())
			}
			got, err := r.Open(client)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("Open = %d bytes, want %d", len(got), len(plain))
			}
		})
	}
}

func TestReplyWrongRecipient(t *testing.T) {
	watcher, client, other := testIdentity(t, 210), testIdentity(t, 211), testIdentity(t, 212)
	b := sealReply(t, watcher, client.Public(), []byte("secret output"))
	for name, id := range map[string]*Identity{"other client": other, "the watcher itself": watcher} {
		if got, err := parseOpenReply(b, id); !errors.Is(err, ErrBoxOpen) {
			t.Errorf("%s: got %q, %v; want ErrBoxOpen", name, got, err)
		}
	}
}

func TestReplyTampered(t *testing.T) {
	watcher, client, mallory := testIdentity(t, 220), testIdentity(t, 221), testIdentity(t, 222)
	b := sealReply(t, watcher, client.Public(), []byte(`{"exit":0,"stdout":"ok"}`))
	var w wireReply
	decodeWire(t, b, &w)
	for i := range w.Box {
		for _, mask := range []byte{0x01, 0x80} {
			bad := rewriteReply(t, b, func(w *wireReply) { w.Box[i] ^= mask })
			if got, err := parseOpenReply(bad, client); !errors.Is(err, ErrBoxOpen) {
				t.Fatalf("box byte %d ^ %#x: got %q, %v; want ErrBoxOpen", i, mask, got, err)
			}
		}
	}
	for i := range w.Nonce {
		bad := rewriteReply(t, b, func(w *wireReply) { w.Nonce[i] ^= 0x01 })
		if _, err := parseOpenReply(bad, client); !errors.Is(err, ErrBoxOpen) {
			t.Fatalf("nonce byte %d: got %v, want ErrBoxOpen", i, err)
		}
	}
	for name, f := range map[string]func(*wireReply){
		"from another watcher": func(w *wireReply) { w.From = mallory.Public().String() },
		"from the client":      func(w *wireReply) { w.From = client.Public().String() },
		"truncated":            func(w *wireReply) { w.Box = w.Box[:len(w.Box)-1] },
		"extended":             func(w *wireReply) { w.Box = append(w.Box, 0) },
	} {
		if _, err := parseOpenReply(rewriteReply(t, b, f), client); !errors.Is(err, ErrBoxOpen) {
			t.Errorf("%s: got %v, want ErrBoxOpen", name, err)
		}
	}
}

func TestReplyContext(t *testing.T) {
	watcher, client := testIdentity(t, 230), testIdentity(t, 231)
	nonce := bytes.Repeat([]byte{9}, 24)

	// Control: a hand-made box with the reply context opens.
	good := handSealReply(t, watcher, client.Public(), nonce, append(append([]byte{}, replyContext...), "out"...))
	if got, err := parseOpenReply(good, client); err != nil || string(got) != "out" {
		t.Fatalf("hand-sealed control reply: %q, %v", got, err)
	}
	for name, plain := range map[string][]byte{
		"no context":       []byte("a reply long enough to pass the size check"),
		"request context":  append(append([]byte{}, requestSigContext...), "out"...),
		"context, no NUL":  []byte("sera reply v1 and then some output"),
		"next version":     []byte("sera reply v2\x00out"),
		"truncated prefix": append(bytes.Repeat([]byte{0}, 20), replyContext[1:]...),
	} {
		b := handSealReply(t, watcher, client.Public(), nonce, plain)
		if got, err := parseOpenReply(b, client); !errors.Is(err, ErrBoxOpen) {
			t.Errorf("%s: got %q, %v; want ErrBoxOpen", name, got, err)
		}
	}
}

func TestRequestWrapIsNotAReply(t *testing.T) {
	// A request's recipient entry is a box between the same two key pairs
	// as a reply. Presented as a reply "from" the client to the watcher,
	// it opens as a box, and only the reply context rejects it.
	client, watcher := testIdentity(t, 240), testIdentity(t, 241)
	var w wireEnvelope
	decodeWire(t, seal(t, client, publics(watcher), []byte("p")), &w)
	forged := encodeWire(t, wireReply{V: 1, From: client.Public().String(), Nonce: w.Nonce, Box: w.Recipients[0].Key})
	r, err := ParseReply(forged)
	if err != nil {
		t.Fatalf("ParseReply: %v", err)
	}
	if _, err := r.Open(watcher); !errors.Is(err, ErrBoxOpen) {
		t.Fatalf("got %v, want ErrBoxOpen", err)
	}
}

func TestRequestAndReplyAreNotInterchangeable(t *testing.T) {
	client, watcher := testIdentity(t, 250), testIdentity(t, 251)
	req := seal(t, client, publics(watcher), []byte("p"))
	rep := sealReply(t, watcher, client.Public(), []byte("p"))
	if r, err := ParseReply(req); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseReply(request) = %v, %v; want ErrMalformed", r != nil, err)
	}
	if e, err := ParseEnvelope(rep); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseEnvelope(reply) = %v, %v; want ErrMalformed", e != nil, err)
	}
}

func TestSealReplyErrors(t *testing.T) {
	watcher, client := testIdentity(t, 260), testIdentity(t, 261)
	for name, r := range map[string]io.Reader{
		"no randomness":    errReader{},
		"short randomness": bytes.NewReader(make([]byte, 23)),
	} {
		if b, err := SealReply(r, watcher, client.Public(), []byte("p")); err == nil || b != nil {
			t.Errorf("%s: SealReply = %d bytes, %v; want an error", name, len(b), err)
		}
	}
}

func TestSealReplySize(t *testing.T) {
	// MaxReplyOverhead is the caller's rule for splitting output: a sealed
	// reply of n plaintext bytes is at most 4n/3 + MaxReplyOverhead bytes
	// (the box travels as base64), and every reply SealReply returns is one
	// that ParseReply accepts.
	watcher, client := testIdentity(t, 270), testIdentity(t, 271)
	for _, n := range []int{0, 1, 2, 3, 100, 1000, 4096, 65536, 100003} {
		b := sealReply(t, watcher, client.Public(), make([]byte, n))
		if limit := 4*n/3 + MaxReplyOverhead; len(b) > limit {
			t.Errorf("%d-byte plaintext sealed to %d bytes, more than %d", n, len(b), limit)
		}
	}
	part := (MaxEnvelopeSize - MaxReplyOverhead) * 3 / 4
	b := sealReply(t, watcher, client.Public(), make([]byte, part))
	if len(b) > MaxEnvelopeSize {
		t.Fatalf("a %d-byte part sealed to %d bytes, more than MaxEnvelopeSize", part, len(b))
	}
	if got, err := parseOpenReply(b, client); err != nil || len(got) != part {
		t.Fatalf("largest documented part: %d bytes, %v", len(got), err)
	}
	for _, n := range []int{MaxEnvelopeSize - MaxReplyOverhead, MaxEnvelopeSize} {
		if b, err := SealReply(testRand(1), watcher, client.Public(), make([]byte, n)); err == nil {
			if _, perr := ParseReply(b); perr != nil {
				t.Errorf("SealReply(%d bytes) returned a %d-byte reply that ParseReply rejects: %v", n, len(b), perr)
			}
		}
	}
}

func TestParseReplyMalformed(t *testing.T) {
	watcher, client := testIdentity(t, 280), testIdentity(t, 281)
	good := sealReply(t, watcher, client.Public(), []byte("ok"))
	if _, err := parseOpenReply(good, client); err != nil {
		t.Fatalf("control reply: %v", err)
	}
	mod := func(f func(*wireReply)) []byte { return rewriteReply(t, good, f) }
	raw := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("reply does not contain %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"not JSON", []byte("ok")},
		{"JSON null", []byte("null")},
		{"empty object", []byte("{}")},
		{"truncated", good[:len(good)-1]},
		{"version 0", mod(func(w *wireReply) { w.V = 0 })},
		{"version 2", mod(func(w *wireReply) { w.V = 2 })},
		{"unknown field", raw(`{"v":1`, `{"v":1,"x":0`)},
		{"request field", raw(`{"v":1`, `{"v":1,"recipients":[]`)},
		{"trailing garbage", append(bytes.Clone(good), 'x')},
		{"trailing reply", append(bytes.Clone(good), good...)},
		{"trailing brace", append(bytes.Clone(good), '}')},
		{"trailing bracket", append(bytes.Clone(good), ']')},
		{"oversized", append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxEnvelopeSize+1-len(good))...)},
		{"from missing", mod(func(w *wireReply) { w.From = "" })},
		{"from garbage", mod(func(w *wireReply) { w.From = "sera1" + strings.Repeat("a", 109) })},
		{"from upper-case", mod(func(w *wireReply) { w.From = strings.ToUpper(w.From) })},
		{"from secret key", mod(func(w *wireReply) { w.From = watcher.SecretString() })},
		{"nonce missing", mod(func(w *wireReply) { w.Nonce = nil })},
		{"nonce 23 bytes", mod(func(w *wireReply) { w.Nonce = w.Nonce[:23] })},
		{"nonce 25 bytes", mod(func(w *wireReply) { w.Nonce = append(w.Nonce, 0) })},
		{"box missing", mod(func(w *wireReply) { w.Box = nil })},
		{"box too short", mod(func(w *wireReply) { w.Box = w.Box[:box.Overhead+len(replyContext)-1] })},
		{"box not base64", raw(`"box":"`, `"box":"%`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseReply(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v; want ErrMalformed", err)
			}
			if r != nil {
				t.Errorf("ParseReply returned a reply with an error")
			}
		})
	}
	// The shortest box that passes parsing holds an empty reply.
	empty := sealReply(t, watcher, client.Public(), nil)
	if got, err := parseOpenReply(empty, client); err != nil || len(got) != 0 {
		t.Errorf("empty reply: %q, %v", got, err)
	}
}

// A heartbeat opens only as a heartbeat, and a reply only as a reply,
// though both have one format between the same keys.
func TestHeartbeatIsNotAReply(t *testing.T) {
	watcher, client := testIdentity(t, 240), testIdentity(t, 241)
	hb, err := SealHeartbeat(testRand(242), watcher, client.Public(), []byte(`{"watcher":"web1"}`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseReply(hb)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.OpenHeartbeat(client); err != nil || string(got) != `{"watcher":"web1"}` {
		t.Fatalf("OpenHeartbeat = %q, %v", got, err)
	}
	if got, err := r.Open(client); !errors.Is(err, ErrBoxOpen) {
		t.Errorf("a heartbeat opened as a reply: %q, %v", got, err)
	}
	if _, err := r.OpenHeartbeat(watcher); !errors.Is(err, ErrBoxOpen) {
		t.Errorf("a heartbeat opened by another key: %v", err)
	}
	reply := sealReply(t, watcher, client.Public(), []byte("out"))
	if r, err = ParseReply(reply); err != nil {
		t.Fatal(err)
	}
	if got, err := r.OpenHeartbeat(client); !errors.Is(err, ErrBoxOpen) {
		t.Errorf("a reply opened as a heartbeat: %q, %v", got, err)
	}
}
