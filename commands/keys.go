package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/accounts"
	"github.com/sera-dev/sera/host/sshkeys"
	"github.com/sera-dev/sera/plan"
)

// parseKeyArg is sshkeys.ParseArg whose errors are usage errors: a bad
// key is the caller's mistake, refused before anything is sent or run.
func parseKeyArg(arg, options string) (*sshkeys.Key, error) {
	k, err := sshkeys.ParseArg(arg, options)
	if err != nil {
		return nil, cli.AsUsage(err)
	}
	return k, nil
}

func (t *hostTree) keyCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{
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
		Args:    cli.UsageArgs(cobra.MinimumNArgs(2)),
		PreRunE: keyArgs(&options),
	}
	c.Flags().StringVar(&options, "options", "", `authorized_keys options for these keys, e.g. 'from="10.0.0.0/8",no-pty'`)
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withUserKeys(ctx, t.caller, out, dryRun, args[0], func(ak *sshkeys.File) []string {
			return sshkeys.Add(ak, mustKeys(args[1:], options), out)
		})
	})
}

// mustKeys parses keys the command's PreRunE has checked.
func mustKeys(args []string, options string) []*sshkeys.Key {
	var keys []*sshkeys.Key
	for _, a := range args {
		k, _ := parseKeyArg(a, options)
		keys = append(keys, k)
	}
	return keys
}

func (t *hostTree) keyRemoveCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "remove USER KEY|FINGERPRINT…",
		Short: "Remove SSH keys sera added for a user",
		Args:  cli.UsageArgs(cobra.MinimumNArgs(2)),
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
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withUserKeys(ctx, t.caller, out, dryRun, args[0], func(ak *sshkeys.File) []string {
			return sshkeys.Remove(ak, args[1:], out)
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
		Args:    cli.UsageArgs(cobra.MinimumNArgs(2)),
		PreRunE: keyArgs(&options),
	}
	c.Flags().StringVar(&options, "options", "", "authorized_keys options for these keys")
	c.Flags().BoolVar(&exclusive, "exclusive", false, "also remove every key sera did not add")
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withUserKeys(ctx, t.caller, out, dryRun, args[0], func(ak *sshkeys.File) []string {
			return sshkeys.Sync(ak, mustKeys(args[1:], options), exclusive, out)
		})
	})
}

func (t *hostTree) keyListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "list USER",
		Short:   "List a user's SSH keys",
		Args:    cli.UsageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per key")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		_, u, err := h.loadUser(args[0])
		if err != nil {
			return err
		}
		ak, err := sshkeys.Load(h.Sys, u.Owner())
		if err != nil {
			return err
		}
		show := func(k *sshkeys.Key, managed bool) {
			state := "active"
			if k.Disabled {
				state = "disabled"
			}
			by := "sera"
			if !managed {
				by = "other"
			}
			if asJSON {
				json.NewEncoder(out).Encode(map[string]any{"fingerprint": k.Fingerprint(), "type": k.Key.Type(), "comment": k.Comment,
					"options": k.Options, "managed": managed, "disabled": k.Disabled})
				return
			}
			fmt.Fprintf(out, "%s  %-20s %-5s %-8s %s\n", k.Fingerprint(), k.Key.Type(), by, state, k.Comment)
		}
		for _, k := range ak.Managed {
			show(k, true)
		}
		for _, k := range ak.OwnKeys() {
			show(k, false)
		}
		return nil
	})
}

// withUserKeys loads user's keys under the account lock, lets change edit
// them (returning what it did), and writes the result.
func (h *Host) withUserKeys(ctx context.Context, who *sera.KnownClient, out io.Writer, dryRun bool, user string, change func(*sshkeys.File) []string) error {
	return h.withAccounts(func(db *accounts.DB) error {
		return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
			u, err := db.ManageableUser(user)
			if err != nil {
				return plan.Plan{}, "", err
			}
			before, err := sshkeys.Load(h.Sys, u.Owner())
			if err != nil {
				return plan.Plan{}, "", err
			}
			ak := before.Clone()
			did := change(ak)
			// Any change to the keys of an account that can sudo needs the
			// sudo grant: adding one is a way in, and removing one is
			// changing the credentials of root.
			if !bytes.Equal(before.Bytes(), ak.Bytes()) {
				if err := h.guardAccount(who, db, "change the SSH keys of "+user, db.Current(u)); err != nil {
					return plan.Plan{}, "", err
				}
			}
			var p plan.Plan
			if accounts.LockedBySera(h.Sys, db, u) && sshkeys.DisableNew(before, ak) {
				p.Note("%s", user+" is locked: the new keys are added disabled; 'sera user unlock "+user+"' enables them")
			}
			sshkeys.PlanWrite(&p, h.Sys, u.Owner(), before, ak, strings.Join(did, "; "))
			return p, "keys of " + user + ": no change", nil
		})
	})
}
