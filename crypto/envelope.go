package crypto

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/nacl/box"
	"golang.org/x/crypto/nacl/secretbox"
)

// Limits on what ParseEnvelope accepts, so that a hostile message cannot
// make a watcher allocate or compute much before it is rejected.
const (
	// MaxEnvelopeSize bounds a sealed request: one SQS message.
	MaxEnvelopeSize = 1 << 20
	// MaxRecipients bounds the recipient list of one envelope. At ~90
	// bytes a recipient, more would not fit MaxEnvelopeSize anyway.
	MaxRecipients = 12000

	nonceSize      = 24
	wrappedKeySize = keyBytes + box.Overhead
	envelopeV      = 1
)

// Domain separation: a request signature can never be mistaken for a
// signature over anything else sera signs.
var requestSigContext = []byte("sera request v1\x00")

// Errors from opening envelopes and replies, one per acceptance rule they
// decide. Callers check them with errors.Is.
var (
	ErrMalformed    = errors.New("malformed envelope")
	ErrNotRecipient = errors.New("not a recipient")
	ErrBoxOpen      = errors.New("recipient key does not open")
	ErrPayloadOpen  = errors.New("payload does not open")
	ErrSignature    = errors.New("signature does not verify")
)

// Envelope is a parsed, still sealed request.
type Envelope struct {
	// Sender is the client that claims to have sealed the envelope; it is
	// authenticated only once Open succeeds.
	Sender     *PublicKey
	nonce      [nonceSize]byte
	recipients map[string][]byte // fingerprint → wrapped key
	sealed     []byte
}

type envelopeJSON struct {
	V          int             `json:"v"`
	Sender     string          `json:"sender"`
	Recipients []recipientJSON `json:"recipients"`
	Nonce      []byte          `json:"nonce"`
	Box        []byte          `json:"box"`
}

type recipientJSON struct {
	KID string `json:"kid"`
	Key []byte `json:"key"`
}

// SealRequest signs payload with from's signing key, encrypts it once with
// a fresh symmetric key, and wraps that key with box for each recipient:
// Seal, then the envelope for every recipient.
func SealRequest(rand io.Reader, from *Identity, to []*PublicKey, payload []byte) ([]byte, error) {
	if len(to) > MaxRecipients {
		// Refused before any work is done for them.
		return nil, fmt.Errorf("failed to seal request: %d recipients, at most %d", len(to), MaxRecipients)
	}
	s, err := Seal(rand, from, to, payload)
	if err != nil {
		return nil, err
	}
	return s.Envelope()
}

// Sealed is a request signed and encrypted once for a set of recipients.
// Its envelopes, for all of them (Envelope) or for one (EnvelopeFor), carry
// the same signature, ciphertext and wrapped keys, so a recipient opens any
// of them alike. A request sent to each watcher's queue needs only that
// watcher's entry: 700 bytes instead of 100 KB when there are 1,000.
type Sealed struct {
	env   envelopeJSON
	index map[string]int // fingerprint → position in env.Recipients
}

// Seal signs payload with from's signing key, encrypts it once with a fresh
// symmetric key, and wraps that key with box for each recipient (once for a
// recipient named twice). Only an envelope is bounded in size and
// recipients, so Seal takes any number.
func Seal(rand io.Reader, from *Identity, to []*PublicKey, payload []byte) (*Sealed, error) {
	if len(to) == 0 {
		return nil, errors.New("failed to seal request: no recipients")
	}
	var key [keyBytes]byte
	var nonce [nonceSize]byte
	if _, err := io.ReadFull(rand, key[:]); err != nil {
		return nil, fmt.Errorf("failed to read randomness: %w", err)
	}
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("failed to read randomness: %w", err)
	}
	sig := ed25519.Sign(from.sign, append(append([]byte{}, requestSigContext...), payload...))
	plain := make([]byte, 0, len(payload)+len(sig))
	plain = append(append(plain, payload...), sig...)

	s := &Sealed{env: envelopeJSON{V: envelopeV, Sender: from.pub.text, Nonce: nonce[:]}, index: make(map[string]int, len(to))}
	s.env.Box = secretbox.Seal(nil, plain, &nonce, &key)
	s.env.Recipients = make([]recipientJSON, 0, len(to))
	for _, r := range to {
		if _, ok := s.index[r.fp]; ok {
			continue
		}
		s.index[r.fp] = len(s.env.Recipients)
		// One nonce serves every recipient: each wrap uses a different
		// sender↔recipient key, so no key ever sees the nonce twice.
		wrapped := box.Seal(nil, key[:], &nonce, &r.box, &from.box)
		s.env.Recipients = append(s.env.Recipients, recipientJSON{KID: r.fp, Key: wrapped})
	}
	return s, nil
}

// Envelope is the envelope for every recipient.
func (s *Sealed) Envelope() ([]byte, error) {
	if n := len(s.env.Recipients); n > MaxRecipients {
		return nil, fmt.Errorf("failed to seal request: %d recipients, at most %d", n, MaxRecipients)
	}
	return s.encode(s.env)
}

// EnvelopeFor is the envelope for one recipient, which must be one of
// those the request was sealed for.
func (s *Sealed) EnvelopeFor(to *PublicKey) ([]byte, error) {
	i, ok := s.index[to.fp]
	if !ok {
		return nil, fmt.Errorf("failed to seal request: %s is not a recipient", to.fp)
	}
	env := s.env
	env.Recipients = s.env.Recipients[i : i+1]
	return s.encode(env)
}

func (s *Sealed) encode(env envelopeJSON) ([]byte, error) {
	b, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("failed to encode envelope: %w", err)
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("failed to seal request: envelope is %d bytes, at most %d", len(b), MaxEnvelopeSize)
	}
	return b, nil
}

// ParseEnvelope parses a sealed request without opening it (acceptance
// rule 1). It checks sizes and shapes only; nothing it returns is trusted.
func ParseEnvelope(b []byte) (*Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(b), MaxEnvelopeSize)
	}
	var ej envelopeJSON
	if err := UnmarshalStrict(b, &ej); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if ej.V != envelopeV {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrMalformed, ej.V, envelopeV)
	}
	sender, err := ParsePublicKey(ej.Sender)
	if err != nil {
		return nil, fmt.Errorf("%w: sender: %v", ErrMalformed, err)
	}
	if len(ej.Nonce) != nonceSize {
		return nil, fmt.Errorf("%w: nonce is %d bytes, want %d", ErrMalformed, len(ej.Nonce), nonceSize)
	}
	if n := len(ej.Recipients); n == 0 || n > MaxRecipients {
		return nil, fmt.Errorf("%w: %d recipients, want 1 to %d", ErrMalformed, n, MaxRecipients)
	}
	if len(ej.Box) < secretbox.Overhead+ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: payload too short", ErrMalformed)
	}
	env := &Envelope{Sender: sender, sealed: ej.Box, recipients: make(map[string][]byte, len(ej.Recipients))}
	copy(env.nonce[:], ej.Nonce)
	for _, r := range ej.Recipients {
		if !ValidFingerprint(r.KID) || len(r.Key) != wrappedKeySize {
			return nil, fmt.Errorf("%w: bad recipient entry", ErrMalformed)
		}
		if _, dup := env.recipients[r.KID]; dup {
			return nil, fmt.Errorf("%w: duplicate recipient %s", ErrMalformed, r.KID)
		}
		env.recipients[r.KID] = r.Key
	}
	return env, nil
}

// Recipients returns how many recipients the envelope names.
func (e *Envelope) Recipients() int { return len(e.recipients) }

// Open unwraps the envelope's key with id (acceptance rule 3), decrypts the
// payload and verifies the sender's signature over it (rule 4).
func (e *Envelope) Open(id *Identity) ([]byte, error) {
	wrapped, ok := e.recipients[id.pub.fp]
	if !ok {
		return nil, ErrNotRecipient
	}
	keyb, ok := box.Open(nil, wrapped, &e.nonce, &e.Sender.box, &id.box)
	if !ok || len(keyb) != keyBytes {
		return nil, ErrBoxOpen
	}
	var key [keyBytes]byte
	copy(key[:], keyb)
	plain, ok := secretbox.Open(nil, e.sealed, &e.nonce, &key)
	if !ok || len(plain) < ed25519.SignatureSize {
		return nil, ErrPayloadOpen
	}
	payload, sig := plain[:len(plain)-ed25519.SignatureSize], plain[len(plain)-ed25519.SignatureSize:]
	msg := append(append([]byte{}, requestSigContext...), payload...)
	if !ed25519.Verify(e.Sender.sign, msg, sig) {
		return nil, ErrSignature
	}
	return payload, nil
}

// UnmarshalStrict decodes exactly one JSON value with no unknown fields and
// nothing after it, so that two parsers can never disagree about what a
// message says. Every JSON read from a queue goes through it.
func UnmarshalStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	// Not dec.More: it reports false for a trailing ']' or '}'.
	if len(bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n")) != 0 {
		return errors.New("trailing data")
	}
	return nil
}
