package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/plan"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// sera's keys live in a marked block of authorized_keys; every other line
// is the user's own and is kept as it is (unless key sync --exclusive).
const (
	blockBegin = "# sera: keys between these lines are managed by sera ('sera key'); edits are overwritten"
	blockEnd   = "# sera: end of managed keys"
	// lockedPrefix comments out a managed key while its user is locked.
	lockedPrefix = "#sera-locked "
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

// authKey is one parsed key.
type authKey struct {
	key      ssh.PublicKey
	options  []string
	comment  string
	disabled bool
}

func (k *authKey) fingerprint() string { return ssh.FingerprintSHA256(k.key) }

func (k *authKey) same(o *authKey) bool { return bytes.Equal(k.key.Marshal(), o.key.Marshal()) }

func (k *authKey) line() string {
	var b strings.Builder
	if k.disabled {
		b.WriteString(lockedPrefix)
	}
	if len(k.options) > 0 {
		b.WriteString(strings.Join(k.options, ","))
		b.WriteByte(' ')
	}
	b.WriteString(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.key))))
	if k.comment != "" {
		b.WriteString(" " + k.comment)
	}
	return b.String()
}

func (k *authKey) describe() string {
	s := k.fingerprint() + " (" + k.key.Type()
	if k.comment != "" {
		s += " " + k.comment
	}
	return s + ")"
}

// parseKeyArg parses one key given on the command line: exactly one
// authorized_keys line. Options are accepted only through --options, so
// a pasted key cannot smuggle in a forced command or a from= widening.
func parseKeyArg(arg, options string) (*authKey, error) {
	if strings.ContainsAny(arg, "\r\n") {
		return nil, usageErr("invalid key: it spans several lines; give one key per argument")
	}
	pub, comment, opts, rest, err := ssh.ParseAuthorizedKey([]byte(arg))
	if err != nil {
		return nil, usageErr("invalid key %q: %v", abbreviate(arg), err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, usageErr("invalid key: give one key per argument")
	}
	if len(opts) > 0 {
		return nil, usageErr("key %s carries options (%s): sera adds options only through --options", ssh.FingerprintSHA256(pub), strings.Join(opts, ","))
	}
	k := &authKey{key: pub, comment: comment}
	if options != "" {
		if k.options, err = parseOptions(options); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// parseOptions validates an --options value with the same parser sshd's
// format needs, and against sshd's option names.
func parseOptions(options string) ([]string, error) {
	if strings.ContainsAny(options, "\r\n") {
		return nil, usageErr("invalid --options: line break")
	}
	// A throwaway key lets ssh's own parser split the options exactly as
	// an authorized_keys line would be split.
	const probe = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR"
	_, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(options + " " + probe))
	if err != nil || len(bytes.TrimSpace(rest)) > 0 || len(opts) == 0 {
		return nil, usageErr("invalid --options %q: not an authorized_keys option list", options)
	}
	for _, o := range opts {
		name, _, _ := strings.Cut(o, "=")
		if !sshdOptions[strings.ToLower(name)] {
			return nil, usageErr("invalid --options: %q is not an sshd authorized_keys option", name)
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

// authorizedKeys is a parsed authorized_keys file.
type authorizedKeys struct {
	before, after []string // the user's own lines
	managed       []*authKey
	hadBlock      bool
}

func parseAuthorizedKeys(b []byte) *authorizedKeys {
	ak := &authorizedKeys{}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return ak
	}
	in := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case !in && line == blockBegin && !ak.hadBlock:
			in, ak.hadBlock = true, true
		case in && line == blockEnd:
			in = false
		case in:
			disabled := strings.HasPrefix(line, lockedPrefix)
			pub, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimPrefix(line, lockedPrefix)))
			if err == nil {
				ak.managed = append(ak.managed, &authKey{key: pub, comment: comment, options: opts, disabled: disabled})
			}
		case ak.hadBlock:
			ak.after = append(ak.after, line)
		default:
			ak.before = append(ak.before, line)
		}
	}
	if in {
		// A begin marker with no end (a hand edit): sera cannot tell its
		// keys from the user's, so every line is the user's, and only the
		// dangling marker goes.
		own := &authorizedKeys{}
		for _, line := range strings.Split(s, "\n") {
			if line != blockBegin {
				own.before = append(own.before, line)
			}
		}
		return own
	}
	return ak
}

func (ak *authorizedKeys) bytes() []byte {
	var lines []string
	lines = append(lines, ak.before...)
	if len(ak.managed) > 0 {
		lines = append(lines, blockBegin)
		for _, k := range ak.managed {
			lines = append(lines, k.line())
		}
		lines = append(lines, blockEnd)
	}
	lines = append(lines, ak.after...)
	if len(lines) == 0 {
		return nil
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// ownKeys are the keys on the user's own lines.
func (ak *authorizedKeys) ownKeys() []*authKey {
	var out []*authKey
	for _, line := range append(append([]string{}, ak.before...), ak.after...) {
		if pub, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
			out = append(out, &authKey{key: pub, comment: comment, options: opts})
		}
	}
	return out
}

func findKey(keys []*authKey, k *authKey) *authKey {
	for _, m := range keys {
		if m.same(k) {
			return m
		}
	}
	return nil
}

// loadKeys reads u's authorized_keys; a missing .ssh or file is empty.
func (h *Host) loadKeys(u *passwdEntry) (*authorizedKeys, error) {
	d, err := h.Sys.FS.OpenUserDir(u.Home, u.UID, u.GID, 0o700, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	sshDir, err := d.OpenChild(".ssh", 0o700, false)
	if errors.Is(err, unix.ENOENT) {
		return &authorizedKeys{}, nil
	} else if err != nil {
		return nil, err
	}
	defer sshDir.Close()
	b, err := sshDir.ReadFile("authorized_keys")
	if err != nil {
		return nil, err
	}
	return parseAuthorizedKeys(b), nil
}

// planKeys adds the write of ak to p when it differs from what is on disk.
func (h *Host) planKeys(p *plan.Plan, u *passwdEntry, before, ak *authorizedKeys, what string) {
	data := ak.bytes()
	if bytes.Equal(before.bytes(), data) {
		return
	}
	path := u.Home + "/.ssh/authorized_keys"
	p.Add(fmt.Sprintf("write %s (0600 %s): %s", path, u.Name, what), func(ctx context.Context) error {
		d, err := h.Sys.FS.OpenUserDir(u.Home, u.UID, u.GID, 0o700, true, ".ssh")
		if err != nil {
			return err
		}
		defer d.Close()
		if err := d.FixMode(0o700); err != nil {
			return err
		}
		// Re-read under the account lock: the plan was made from this
		// same content, unless the user edited it meanwhile.
		cur, err := d.ReadFile("authorized_keys")
		if err != nil {
			return err
		}
		if !bytes.Equal(cur, before.bytes()) && !bytes.Equal(parseAuthorizedKeys(cur).bytes(), before.bytes()) {
			return fmt.Errorf("%s changed while sera was planning; nothing written, run the command again", path)
		}
		return d.WriteFile("authorized_keys", data, 0o600)
	})
}

func clone(ak *authorizedKeys) *authorizedKeys {
	c := &authorizedKeys{before: append([]string{}, ak.before...), after: append([]string{}, ak.after...), hadBlock: ak.hadBlock}
	for _, k := range ak.managed {
		kk := *k
		c.managed = append(c.managed, &kk)
	}
	return c
}

func (t *hostTree) keyCmd() *cobra.Command {
	c := group(&cobra.Command{
		Use:   "key",
		Short: "Manage a user's SSH keys (~/.ssh/authorized_keys)",
		Long: `Manage the SSH keys of a regular user (uid in UID_MIN..UID_MAX).

sera keeps the keys it adds in a marked block of ~/.ssh/authorized_keys and
leaves every other line alone, unless 'key sync --exclusive'. Every key is
parsed before anything is written; key options only come from --options. The
file is replaced atomically, 0600 and owned by the user, in a 0700 .ssh; a
symbolic or hard link in the way is refused.`,
	})
	c.AddCommand(t.keyAddCmd(), t.keyRemoveCmd(), t.keyListCmd(), t.keySyncCmd())
	return c
}

// keyArgs validates "USER KEY…" on both sides.
func keyArgs(options *string) func(c *cobra.Command, args []string) error {
	return func(c *cobra.Command, args []string) error {
		if err := checkAccountName("user", args[0]); err != nil {
			return err
		}
		for _, a := range args[1:] {
			if _, err := parseKeyArg(a, *options); err != nil {
				return err
			}
		}
		return nil
	}
}

func (t *hostTree) keyAddCmd() *cobra.Command {
	var options string
	var dryRun bool
	c := &cobra.Command{
		Use:     "add USER KEY…",
		Short:   "Add SSH keys for a user",
		Example: `  sera key add alice "$(cat ~/.ssh/id_ed25519.pub)" --to web1`,
		Args:    usageArgs(cobra.MinimumNArgs(2)),
		PreRunE: keyArgs(&options),
	}
	c.Flags().StringVar(&options, "options", "", `authorized_keys options for these keys, e.g. 'from="10.0.0.0/8",no-pty'`)
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withUserKeys(ctx, t.caller, out, dryRun, args[0], func(ak *authorizedKeys) ([]string, error) {
			var did []string
			for _, a := range args[1:] {
				k, _ := parseKeyArg(a, options)
				if m := findKey(ak.managed, k); m != nil {
					if strings.Join(m.options, ",") != strings.Join(k.options, ",") || m.comment != k.comment {
						m.options, m.comment = k.options, k.comment
						did = append(did, "update "+k.describe())
					}
					continue
				}
				if findKey(ak.ownKeys(), k) != nil {
					fmt.Fprintf(out, "key %s is already in the file, not added by sera; left as it is\n", k.fingerprint())
					continue
				}
				ak.managed = append(ak.managed, k)
				did = append(did, "add "+k.describe())
			}
			return did, nil
		})
	})
}

func (t *hostTree) keyRemoveCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "remove USER KEY|FINGERPRINT…",
		Short: "Remove SSH keys sera added for a user",
		Args:  usageArgs(cobra.MinimumNArgs(2)),
		PreRunE: func(c *cobra.Command, args []string) error {
			if err := checkAccountName("user", args[0]); err != nil {
				return err
			}
			for _, a := range args[1:] {
				if !strings.HasPrefix(a, "SHA256:") {
					if _, err := parseKeyArg(a, ""); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withUserKeys(ctx, t.caller, out, dryRun, args[0], func(ak *authorizedKeys) ([]string, error) {
			var did []string
			for _, a := range args[1:] {
				match := func(k *authKey) bool { return k.fingerprint() == a }
				fp := a
				if !strings.HasPrefix(a, "SHA256:") {
					want, _ := parseKeyArg(a, "")
					match, fp = want.same, want.fingerprint()
				}
				kept := ak.managed[:0]
				found := false
				for _, k := range ak.managed {
					if match(k) {
						found = true
						did = append(did, "remove "+k.describe())
						continue
					}
					kept = append(kept, k)
				}
				ak.managed = kept
				if !found {
					for _, k := range ak.ownKeys() {
						if match(k) {
							fmt.Fprintf(out, "key %s was not added by sera; left as it is (use 'key sync --exclusive' to replace the whole file)\n", k.fingerprint())
							found = true
						}
					}
				}
				if !found {
					fmt.Fprintf(out, "key %s already absent\n", fp)
				}
			}
			return did, nil
		})
	})
}

func (t *hostTree) keySyncCmd() *cobra.Command {
	var options string
	var dryRun, exclusive bool
	c := &cobra.Command{
		Use:   "sync USER KEY…",
		Short: "Make sera's keys for a user exactly these",
		Long: `Make the keys sera manages for a user exactly the given ones: missing ones
are added, others sera added are removed. Keys sera did not add are kept,
unless --exclusive, which makes these the only keys in the file.`,
		Args:    usageArgs(cobra.MinimumNArgs(2)),
		PreRunE: keyArgs(&options),
	}
	c.Flags().StringVar(&options, "options", "", "authorized_keys options for these keys")
	c.Flags().BoolVar(&exclusive, "exclusive", false, "also remove every key sera did not add")
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withUserKeys(ctx, t.caller, out, dryRun, args[0], func(ak *authorizedKeys) ([]string, error) {
			var want []*authKey
			for _, a := range args[1:] {
				k, _ := parseKeyArg(a, options)
				if findKey(want, k) != nil {
					continue
				}
				// As with key add: a key on the user's own line is left
				// as it is, not copied into the block without its
				// options (sshd would accept either line).
				if !exclusive && findKey(ak.managed, k) == nil && findKey(ak.ownKeys(), k) != nil {
					fmt.Fprintf(out, "key %s is already in the file, not added by sera; left as it is\n", k.fingerprint())
					continue
				}
				want = append(want, k)
			}
			var did []string
			for _, k := range ak.managed {
				if findKey(want, k) == nil {
					did = append(did, "remove "+k.describe())
				}
			}
			for _, k := range want {
				m := findKey(ak.managed, k)
				if m != nil {
					// A key disabled by 'user lock' stays disabled
					// until 'user unlock'.
					k.disabled = m.disabled
				}
				if m == nil {
					did = append(did, "add "+k.describe())
				} else if m.line() != k.line() {
					did = append(did, "update "+k.describe())
				}
			}
			ak.managed = want
			if exclusive {
				for _, k := range ak.ownKeys() {
					did = append(did, "remove "+k.describe()+", not added by sera")
				}
				ak.before, ak.after = nil, nil
			}
			return did, nil
		})
	})
}

func (t *hostTree) keyListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "list USER",
		Short:   "List a user's SSH keys",
		Args:    usageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per key")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		_, u, err := h.loadUser(args[0])
		if err != nil {
			return err
		}
		ak, err := h.loadKeys(u)
		if err != nil {
			return err
		}
		show := func(k *authKey, managed bool) {
			state := "active"
			if k.disabled {
				state = "disabled"
			}
			by := "sera"
			if !managed {
				by = "other"
			}
			if asJSON {
				json.NewEncoder(out).Encode(map[string]any{"fingerprint": k.fingerprint(), "type": k.key.Type(), "comment": k.comment,
					"options": k.options, "managed": managed, "disabled": k.disabled})
				return
			}
			fmt.Fprintf(out, "%s  %-20s %-5s %-8s %s\n", k.fingerprint(), k.key.Type(), by, state, k.comment)
		}
		for _, k := range ak.managed {
			show(k, true)
		}
		for _, k := range ak.ownKeys() {
			show(k, false)
		}
		return nil
	})
}

// withUserKeys loads user's keys under the account lock, lets change edit
// them (returning what it did), and writes the result.
func (h *Host) withUserKeys(ctx context.Context, who *sera.KnownClient, out io.Writer, dryRun bool, user string, change func(*authorizedKeys) ([]string, error)) error {
	unlock, err := h.lockAccounts()
	if err != nil {
		return err
	}
	defer unlock()
	db, err := h.loadAccounts()
	if err != nil {
		return err
	}
	u, err := db.manageableUser(user)
	if err != nil {
		return fmt.Errorf("%w; nothing was changed", err)
	}
	before, err := h.loadKeys(u)
	if err != nil {
		return fmt.Errorf("%w; nothing was changed", err)
	}
	ak := clone(before)
	did, err := change(ak)
	if err != nil {
		return fmt.Errorf("%w; nothing was changed", err)
	}
	// Any change to the keys of an account that can sudo needs the sudo
	// grant: adding one is a way in, and removing one is changing the
	// credentials of root.
	if !bytes.Equal(before.bytes(), ak.bytes()) {
		if err := h.guardAccount(who, db, "change the SSH keys of "+user, db.current(u)); err != nil {
			return err
		}
	}
	var p plan.Plan
	if h.lockedBySera(db, u) && disableNewKeys(before, ak) {
		p.Note("%s", user+" is locked: the new keys are added disabled; 'sera user unlock "+user+"' enables them")
	}
	h.planKeys(&p, u, before, ak, strings.Join(did, "; "))
	return p.Execute(ctx, out, dryRun, "keys of "+user+": no change")
}
