// Package sshkeys is a user's ~/.ssh/authorized_keys as sera manages it:
// sera's keys live in a marked block and every other line is the user's
// own, kept as it is (unless a sync is exclusive). Keys are parsed and
// their options checked against sshd's before anything is written; the
// file is written through the host's no-follow user directory, 0600 in a
// 0700 .ssh, so a link planted by the user is refused.
package sshkeys

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// The markers of sera's block; LockedPrefix comments out a managed key
// while its user is locked.
const (
	BlockBegin   = "# sera: keys between these lines are managed by sera ('sera key'); edits are overwritten"
	BlockEnd     = "# sera: end of managed keys"
	LockedPrefix = "#sera-locked "
)

// sshdOptions are the authorized_keys options sshd(8) knows; anything else
// is refused rather than written for sshd to reject or misread.
var sshdOptions = map[string]bool{
	"agent-forwarding": true, "cert-authority": true, "command": true, "environment": true,
	"expiry-time": true, "from": true, "no-agent-forwarding": true, "no-port-forwarding": true,
	"no-pty": true, "no-touch-required": true, "no-user-rc": true, "no-x11-forwarding": true,
	"permitlisten": true, "permitopen": true, "port-forwarding": true, "principals": true,
	"pty": true, "restrict": true, "tunnel": true, "user-rc": true, "verify-required": true,
	"x11-forwarding": true,
}

// Key is one parsed key line.
type Key struct {
	Key      ssh.PublicKey
	Options  []string
	Comment  string
	Disabled bool
}

// Fingerprint is the key's SHA256 fingerprint, as ssh-keygen -l prints it.
func (k *Key) Fingerprint() string { return ssh.FingerprintSHA256(k.Key) }

// Same reports whether k and o are the same public key, whatever their
// options and comments.
func (k *Key) Same(o *Key) bool { return bytes.Equal(k.Key.Marshal(), o.Key.Marshal()) }

// Line is k as an authorized_keys line.
func (k *Key) Line() string {
	var b strings.Builder
	if k.Disabled {
		b.WriteString(LockedPrefix)
	}
	if len(k.Options) > 0 {
		b.WriteString(strings.Join(k.Options, ","))
		b.WriteByte(' ')
	}
	b.WriteString(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.Key))))
	if k.Comment != "" {
		b.WriteString(" " + k.Comment)
	}
	return b.String()
}

// Describe is k for people: fingerprint, type and comment.
func (k *Key) Describe() string {
	s := k.Fingerprint() + " (" + k.Key.Type()
	if k.Comment != "" {
		s += " " + k.Comment
	}
	return s + ")"
}

// ErrInvalid is wrapped by every error about a key or option list given on
// the command line: the caller's input, not the host, is wrong.
var ErrInvalid = errors.New("invalid key")

type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// ParseArg parses one key given on the command line: exactly one
// authorized_keys line. Options are accepted only through options (the
// --options flag), so a pasted key cannot smuggle in a forced command or
// a from= widening.
func ParseArg(arg, options string) (*Key, error) {
	if strings.ContainsAny(arg, "\r\n") {
		return nil, invalid("invalid key: it spans several lines; give one key per argument")
	}
	pub, comment, opts, rest, err := ssh.ParseAuthorizedKey([]byte(arg))
	if err != nil {
		return nil, invalid("invalid key %q: %v", abbreviate(arg), err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, invalid("invalid key: give one key per argument")
	}
	if len(opts) > 0 {
		return nil, invalid("key %s carries options (%s): sera adds options only through --options", ssh.FingerprintSHA256(pub), strings.Join(opts, ","))
	}
	k := &Key{Key: pub, Comment: comment}
	if options != "" {
		if k.Options, err = ParseOptions(options); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// ParseOptions validates an --options value with the same parser sshd's
// format needs, and against sshd's option names.
func ParseOptions(options string) ([]string, error) {
	if strings.ContainsAny(options, "\r\n") {
		return nil, invalid("invalid --options: line break")
	}
	// A throwaway key lets ssh's own parser split the options exactly as
	// an authorized_keys line would be split.
	const probe = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR"
	_, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(options + " " + probe))
	if err != nil || len(bytes.TrimSpace(rest)) > 0 || len(opts) == 0 {
		return nil, invalid("invalid --options %q: not an authorized_keys option list", options)
	}
	for _, o := range opts {
		name, _, _ := strings.Cut(o, "=")
		if !sshdOptions[strings.ToLower(name)] {
			return nil, invalid("invalid --options: %q is not an sshd authorized_keys option", name)
		}
	}
	return opts, nil
}

func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// Find returns the key of keys that is the same public key as k, or nil.
func Find(keys []*Key, k *Key) *Key {
	for _, m := range keys {
		if m.Same(k) {
			return m
		}
	}
	return nil
}
