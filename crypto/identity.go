// Package crypto holds sera's identities and the sealed envelopes that carry
// requests and replies.
//
// An identity is two key pairs: Ed25519 for signing requests and Curve25519
// (NaCl box) for encrypting to and from a peer. Its public half is one
// copy-pasteable string ("sera1…"), and its fingerprint, a short hash of
// that string, names it in logs, queue names and files.
package crypto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/curve25519"
)

const (
	// PublicPrefix starts every public key string.
	PublicPrefix = "sera1"
	// SecretPrefix starts every secret key string.
	SecretPrefix = "sera-secret1"

	keyBytes      = 32
	checksumBytes = 4
	// FingerprintLen is the length of a fingerprint string (80 bits in
	// base32): short enough for an SQS queue name, long enough that no two
	// keys of one fleet collide by chance.
	FingerprintLen = 16
)

// Lower-case base32 without padding: no characters that break
// double-click selection or need quoting in a shell or an env file.
var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// ErrMalformedKey is returned for a key string that does not parse.
var ErrMalformedKey = errors.New("malformed key")

// PublicKey is the public half of an identity.
type PublicKey struct {
	sign ed25519.PublicKey
	box  [keyBytes]byte
	text string
	fp   string
}

// Identity is a private key pair set. It is never sent or logged.
type Identity struct {
	sign ed25519.PrivateKey
	box  [keyBytes]byte
	pub  *PublicKey
}

// GenerateIdentity makes a new identity from rand (crypto/rand.Reader in
// production).
func GenerateIdentity(rand io.Reader) (*Identity, error) {
	var seed, boxPriv [keyBytes]byte
	if _, err := io.ReadFull(rand, seed[:]); err != nil {
		return nil, fmt.Errorf("failed to read randomness: %w", err)
	}
	if _, err := io.ReadFull(rand, boxPriv[:]); err != nil {
		return nil, fmt.Errorf("failed to read randomness: %w", err)
	}
	return newIdentity(seed[:], boxPriv)
}

func newIdentity(seed []byte, boxPriv [keyBytes]byte) (*Identity, error) {
	sk := ed25519.NewKeyFromSeed(seed)
	boxPub, err := curve25519.X25519(boxPriv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("failed to derive box key: %w", err)
	}
	pub := &PublicKey{sign: sk.Public().(ed25519.PublicKey)}
	copy(pub.box[:], boxPub)
	pub.text = encodeKey(PublicPrefix, pub.sign, pub.box[:])
	pub.fp = fingerprint(pub.text)
	return &Identity{sign: sk, box: boxPriv, pub: pub}, nil
}

// Public returns the identity's public key.
func (id *Identity) Public() *PublicKey { return id.pub }

// SecretString encodes the identity for its key file. Handle the result as
// a secret.
func (id *Identity) SecretString() string {
	return encodeKey(SecretPrefix, id.sign.Seed(), id.box[:])
}

// ParseIdentity parses a secret key string made by SecretString.
func ParseIdentity(s string) (*Identity, error) {
	seed, boxPriv, err := decodeKey(SecretPrefix, strings.TrimSpace(s))
	if err != nil {
		// Never echo the input: it is a secret.
		return nil, fmt.Errorf("%w: not a sera secret key", ErrMalformedKey)
	}
	var bp [keyBytes]byte
	copy(bp[:], boxPriv)
	return newIdentity(seed, bp)
}

// ParseIdentityFile parses the contents of a key file: one secret key line,
// with blank lines and lines starting with '#' ignored.
func ParseIdentityFile(b []byte) (*Identity, error) {
	var found *Identity
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("%w: key file holds more than one key", ErrMalformedKey)
		}
		id, err := ParseIdentity(line)
		if err != nil {
			return nil, err
		}
		found = id
	}
	if found == nil {
		return nil, fmt.Errorf("%w: key file holds no key", ErrMalformedKey)
	}
	return found, nil
}

// ParsePublicKey parses a "sera1…" public key string.
func ParsePublicKey(s string) (*PublicKey, error) {
	s = strings.TrimSpace(s)
	signPub, boxPub, err := decodeKey(PublicPrefix, s)
	if err != nil {
		if strings.Contains(strings.ToLower(s), SecretPrefix) {
			// A secret key pasted in the wrong place: never echo it.
			return nil, fmt.Errorf("%w: got a sera secret key, want a public key (%s…)", ErrMalformedKey, PublicPrefix)
		}
		return nil, fmt.Errorf("%w: %q is not a sera public key (want %s…)", ErrMalformedKey, abbreviate(s), PublicPrefix)
	}
	pub := &PublicKey{sign: ed25519.PublicKey(signPub), text: s}
	copy(pub.box[:], boxPub)
	pub.fp = fingerprint(s)
	return pub, nil
}

// String returns the "sera1…" form.
func (p *PublicKey) String() string { return p.text }

// Fingerprint returns the short name of the key.
func (p *PublicKey) Fingerprint() string { return p.fp }

// Equal reports whether p and q are the same key.
func (p *PublicKey) Equal(q *PublicKey) bool {
	if p == nil || q == nil {
		return p == q
	}
	return subtle.ConstantTimeCompare([]byte(p.text), []byte(q.text)) == 1
}

func encodeKey(prefix string, a, b []byte) string {
	data := make([]byte, 0, 2*keyBytes+checksumBytes)
	data = append(data, a...)
	data = append(data, b...)
	data = append(data, checksum(prefix, data)...)
	return prefix + b32.EncodeToString(data)
}

func decodeKey(prefix, s string) (a, b []byte, err error) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return nil, nil, ErrMalformedKey
	}
	data, err := b32.DecodeString(rest)
	if err != nil || len(data) != 2*keyBytes+checksumBytes {
		return nil, nil, ErrMalformedKey
	}
	body, sum := data[:2*keyBytes], data[2*keyBytes:]
	if !bytes.Equal(sum, checksum(prefix, body)) {
		return nil, nil, ErrMalformedKey
	}
	// The text must be canonical, so that one key has exactly one string
	// and string comparison is key comparison.
	if encodeKey(prefix, body[:keyBytes], body[keyBytes:]) != s {
		return nil, nil, ErrMalformedKey
	}
	return body[:keyBytes], body[keyBytes:], nil
}

// checksum catches copy-paste damage; it is not a security boundary.
func checksum(prefix string, data []byte) []byte {
	h := sha256.New()
	h.Write([]byte(prefix))
	h.Write(data)
	return h.Sum(nil)[:checksumBytes]
}

func fingerprint(text string) string {
	sum := sha256.Sum256([]byte(text))
	return b32.EncodeToString(sum[:])[:FingerprintLen]
}

// ValidFingerprint reports whether s has the form of a fingerprint.
func ValidFingerprint(s string) bool {
	if len(s) != FingerprintLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

func abbreviate(s string) string {
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}
