// Package sera is the request/reply core: the Watcher that serves a host
// (receive, verify, replay cache, dispatch, reply) and the Client that
// addresses watchers and collects their replies. It knows host commands
// only through the Handler it is given; transports and cryptography live
// in the transport and crypto packages.
package sera

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"time"

	"github.com/sera-dev/sera/crypto"
)

// Protocol limits. Requests outside them are rejected before anything runs.
const (
	// MaxRequestLifetime is the longest expires_at − issued_at a watcher
	// accepts, which bounds how long replay-cache entries are kept.
	MaxRequestLifetime = 24 * time.Hour
	// MaxClockSkew is how far in the future issued_at may be.
	MaxClockSkew = 2 * time.Minute
	// MaxArgs and MaxArgLen bound a request's argv.
	MaxArgs   = 256
	MaxArgLen = 8192
	// MaxSelectors bounds the names and groups of a target.
	MaxSelectors = 10000
	// MaxReplyParts bounds how many messages one reply may span.
	MaxReplyParts = 512
)

// ErrBadRequest is returned for a payload that opens but is not a valid
// request.
var ErrBadRequest = errors.New("invalid request")

// Request is the signed payload of an envelope.
type Request struct {
	ID        string    `json:"id"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Target    Target    `json:"target"`
	Argv      []string  `json:"argv"`
	ReplyTo   string    `json:"reply_to"`
	// ExecTimeoutMS bounds how long the command may run, in milliseconds,
	// apart from ExpiresAt, which bounds only how long the request may
	// wait to be delivered. 0 leaves it to the watcher's own limit, which
	// also caps a longer value.
	ExecTimeoutMS int64 `json:"exec_timeout_ms,omitempty"`
}

// ExecTimeout is ExecTimeoutMS as a duration.
func (r *Request) ExecTimeout() time.Duration {
	return time.Duration(r.ExecTimeoutMS) * time.Millisecond
}

// Target is the selector the client used, signed with the request so that
// a recipient cannot re-address it to another host.
type Target struct {
	// Names are watcher names or shell-style globs ("web*").
	Names  []string `json:"names,omitempty"`
	Groups []string `json:"groups,omitempty"`
	All    bool     `json:"all,omitempty"`
}

// Selects reports whether a watcher called name in groups is selected.
func (t Target) Selects(name string, groups []string) bool {
	if t.All {
		return true
	}
	for _, n := range t.Names {
		if ok, err := path.Match(n, name); err == nil && ok {
			return true
		}
	}
	for _, g := range t.Groups {
		if slices.Contains(groups, g) {
			return true
		}
	}
	return false
}

// String formats the target as a user would type it.
func (t Target) String() string {
	if t.All {
		return "--all"
	}
	var b bytes.Buffer
	for i, n := range t.Names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
	}
	for _, g := range t.Groups {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("group:" + g)
	}
	return b.String()
}

// NewRequestID returns a random 128-bit id in hex.
func NewRequestID(rand io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", fmt.Errorf("failed to read randomness: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && id == lowerHex(id)
}

func lowerHex(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'F' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// ParseRequest decodes and validates a request payload. It checks shape
// and limits; the acceptance rules that need context (target, time,
// replay, allowlist) are the Watcher's.
func ParseRequest(b []byte) (*Request, error) {
	var r Request
	if err := crypto.UnmarshalStrict(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if !validID(r.ID) {
		return nil, fmt.Errorf("%w: id is not 32 lower-case hex digits", ErrBadRequest)
	}
	if r.IssuedAt.IsZero() || r.ExpiresAt.IsZero() || !r.ExpiresAt.After(r.IssuedAt) {
		return nil, fmt.Errorf("%w: issued_at must be before expires_at", ErrBadRequest)
	}
	if r.ExpiresAt.Sub(r.IssuedAt) > MaxRequestLifetime {
		return nil, fmt.Errorf("%w: lifetime longer than %s", ErrBadRequest, MaxRequestLifetime)
	}
	if len(r.Argv) == 0 || len(r.Argv) > MaxArgs {
		return nil, fmt.Errorf("%w: argv has %d words, want 1 to %d", ErrBadRequest, len(r.Argv), MaxArgs)
	}
	for _, a := range r.Argv {
		if len(a) > MaxArgLen {
			return nil, fmt.Errorf("%w: an argument is longer than %d bytes", ErrBadRequest, MaxArgLen)
		}
	}
	t := r.Target
	if len(t.Names)+len(t.Groups) > MaxSelectors {
		return nil, fmt.Errorf("%w: target has more than %d selectors", ErrBadRequest, MaxSelectors)
	}
	if !t.All && len(t.Names) == 0 && len(t.Groups) == 0 {
		return nil, fmt.Errorf("%w: empty target", ErrBadRequest)
	}
	for _, n := range t.Names {
		if _, err := path.Match(n, ""); err != nil || n == "" {
			return nil, fmt.Errorf("%w: bad target name %q", ErrBadRequest, n)
		}
	}
	if r.ReplyTo == "" {
		return nil, fmt.Errorf("%w: no reply queue", ErrBadRequest)
	}
	if r.ExecTimeoutMS < 0 || r.ExecTimeoutMS > MaxRequestLifetime.Milliseconds() {
		return nil, fmt.Errorf("%w: exec_timeout_ms outside 0 to %d", ErrBadRequest, MaxRequestLifetime.Milliseconds())
	}
	return &r, nil
}

// Marshal encodes the request payload.
func (r *Request) Marshal() ([]byte, error) { return json.Marshal(r) }

// Reply is a watcher's answer to one request.
type Reply struct {
	ID      string    `json:"id"`
	Watcher string    `json:"watcher"`
	Status  int       `json:"status"`
	Stdout  []byte    `json:"stdout,omitempty"`
	Stderr  []byte    `json:"stderr,omitempty"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	// Rejected says why the watcher refused to run the request; empty if
	// it ran.
	Rejected string `json:"rejected,omitempty"`
	// Changed says the command changed the host. Clients before it was
	// added reject a reply that carries it (replies are parsed strictly):
	// upgrade clients before watchers.
	Changed bool `json:"changed,omitempty"`
}

// ParseReplyBody decodes a reassembled reply.
func ParseReplyBody(b []byte) (*Reply, error) {
	var r Reply
	if err := crypto.UnmarshalStrict(b, &r); err != nil {
		return nil, fmt.Errorf("invalid reply: %w", err)
	}
	if !validID(r.ID) {
		return nil, errors.New("invalid reply: bad id")
	}
	return &r, nil
}

// A reply part, the plaintext of one sealed reply message, is
//
//	id (16 bytes) ‖ part (uint16, big endian) ‖ parts (uint16) ‖ data
//
// so the client learns which request a part belongs to as soon as it
// opens it, before it has every part.
const partHeader = 16 + 2 + 2

type replyPart struct {
	id          string
	part, parts int
	data        []byte
}

func encodePart(id string, part, parts int, data []byte) []byte {
	raw, _ := hex.DecodeString(id)
	b := make([]byte, partHeader+len(data))
	copy(b, raw)
	binary.BigEndian.PutUint16(b[16:], uint16(part))
	binary.BigEndian.PutUint16(b[18:], uint16(parts))
	copy(b[partHeader:], data)
	return b
}

// parsePart decodes one opened reply part.
func parsePart(b []byte) (*replyPart, error) {
	if len(b) < partHeader {
		return nil, errors.New("reply part too short")
	}
	p := &replyPart{
		id:    hex.EncodeToString(b[:16]),
		part:  int(binary.BigEndian.Uint16(b[16:])),
		parts: int(binary.BigEndian.Uint16(b[18:])),
		data:  b[partHeader:],
	}
	if p.parts < 1 || p.parts > MaxReplyParts || p.part >= p.parts {
		return nil, fmt.Errorf("reply part %d of %d out of range", p.part, p.parts)
	}
	return p, nil
}

// splitReply cuts an encoded reply into parts of at most size bytes.
func splitReply(body []byte, size int) ([][]byte, error) {
	n := (len(body) + size - 1) / size
	if n == 0 {
		n = 1
	}
	if n > MaxReplyParts {
		return nil, fmt.Errorf("reply of %d bytes needs %d messages, at most %d", len(body), n, MaxReplyParts)
	}
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		end := min((i+1)*size, len(body))
		out = append(out, body[i*size:end])
	}
	return out, nil
}
