package crypto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"golang.org/x/crypto/nacl/box"
)

// replyContext prefixes every sealed reply's plaintext. Requests and
// replies between one client and one watcher use the same box key pair, so
// the prefix keeps a reply from ever being read as anything else.
var replyContext = []byte("sera reply v1\x00")

// heartbeatContext prefixes a sealed heartbeat's plaintext, for the same
// reason: a heartbeat never opens as a reply, nor a reply as a heartbeat.
var heartbeatContext = []byte("sera heartbeat v1\x00")

// MaxReplyOverhead bounds what SealReply adds to its plaintext besides the
// base64 expansion of the box: n plaintext bytes seal to at most
// 4*n/3 + MaxReplyOverhead bytes. Callers split larger output into parts of
// at most (MaxEnvelopeSize-MaxReplyOverhead)*3/4 bytes, so each sealed part
// fits one message.
const MaxReplyOverhead = 512

// SealedReply is a parsed, still sealed reply.
type SealedReply struct {
	// From is the watcher that claims to have sealed the reply;
	// authenticated only once Open succeeds.
	From   *PublicKey
	nonce  [nonceSize]byte
	sealed []byte
}

type replyJSON struct {
	V     int    `json:"v"`
	From  string `json:"from"`
	Nonce []byte `json:"nonce"`
	Box   []byte `json:"box"`
}

// SealReply encrypts and authenticates plain from the watcher from to the
// client to.
func SealReply(rand io.Reader, from *Identity, to *PublicKey, plain []byte) ([]byte, error) {
	return sealBox(rand, from, to, replyContext, plain)
}

// SealHeartbeat is SealReply for a heartbeat: the same format (ParseReply
// parses it), a different context, so only OpenHeartbeat opens it.
func SealHeartbeat(rand io.Reader, from *Identity, to *PublicKey, plain []byte) ([]byte, error) {
	return sealBox(rand, from, to, heartbeatContext, plain)
}

func sealBox(rand io.Reader, from *Identity, to *PublicKey, context, plain []byte) ([]byte, error) {
	var nonce [nonceSize]byte
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("failed to read randomness: %w", err)
	}
	msg := append(append(make([]byte, 0, len(context)+len(plain)), context...), plain...)
	rj := replyJSON{V: envelopeV, From: from.pub.text, Nonce: nonce[:]}
	rj.Box = box.Seal(nil, msg, &nonce, &to.box, &from.box)
	b, err := json.Marshal(rj)
	if err != nil {
		return nil, fmt.Errorf("failed to encode reply: %w", err)
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("failed to seal reply: reply is %d bytes, at most %d", len(b), MaxEnvelopeSize)
	}
	return b, nil
}

// ParseReply parses a sealed reply without opening it.
func ParseReply(b []byte) (*SealedReply, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(b), MaxEnvelopeSize)
	}
	var rj replyJSON
	if err := UnmarshalStrict(b, &rj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if rj.V != envelopeV {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrMalformed, rj.V, envelopeV)
	}
	from, err := ParsePublicKey(rj.From)
	if err != nil {
		return nil, fmt.Errorf("%w: from: %v", ErrMalformed, err)
	}
	if len(rj.Nonce) != nonceSize {
		return nil, fmt.Errorf("%w: nonce is %d bytes, want %d", ErrMalformed, len(rj.Nonce), nonceSize)
	}
	if len(rj.Box) < box.Overhead+len(replyContext) {
		return nil, fmt.Errorf("%w: reply too short", ErrMalformed)
	}
	r := &SealedReply{From: from, sealed: rj.Box}
	copy(r.nonce[:], rj.Nonce)
	return r, nil
}

// Open decrypts the reply with id, proving it was sealed by r.From for id.
func (r *SealedReply) Open(id *Identity) ([]byte, error) { return r.open(id, replyContext) }

// OpenHeartbeat is Open for a heartbeat (SealHeartbeat).
func (r *SealedReply) OpenHeartbeat(id *Identity) ([]byte, error) {
	return r.open(id, heartbeatContext)
}

func (r *SealedReply) open(id *Identity, context []byte) ([]byte, error) {
	plain, ok := box.Open(nil, r.sealed, &r.nonce, &r.From.box, &id.box)
	if !ok || !bytes.HasPrefix(plain, context) {
		return nil, ErrBoxOpen
	}
	return plain[len(context):], nil
}
