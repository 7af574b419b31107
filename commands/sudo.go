package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/accounts"
	"github.com/sera-dev/sera/host/sudo"
	"github.com/sera-dev/sera/plan"
)

func (t *hostTree) sudoCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "sudo",
		Short: "Grant sudo to regular groups, one drop-in per group in /etc/sudoers.d",
		Long: `Grant sudo to the members of a regular group (gid in GID_MIN..GID_MAX),
through one drop-in per group, /etc/sudoers.d/sera-GROUP (mode 0440),
checked with 'visudo -cf' before it is moved into place. Drop-ins sera did
not write are never touched. Manage the members with 'sera group members'.`,
	})
	c.AddCommand(t.sudoGrantCmd(), t.sudoRevokeCmd(), t.sudoListCmd())
	return c
}

func (t *hostTree) sudoGrantCmd() *cobra.Command {
	var nopasswd, dryRun bool
	c := &cobra.Command{
		Use:   "grant GROUP [--nopasswd]",
		Short: "Let the members of a regular group use sudo",
		Long: `Let the members of a regular group run any command as any user with sudo:
/etc/sudoers.d/sera-GROUP gets '%GROUP ALL=(ALL:ALL) ALL' (with --nopasswd,
'NOPASSWD: ALL'). Run again it says "already granted"; with the other
--nopasswd it rewrites the drop-in.`,
		Example: `  sera sudo grant ops --to web1
  sera sudo grant deploy --nopasswd --to 'web*'`,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		return t.groupCheckOnHost(func(h *Host, db *accounts.DB) error {
			_, _, err := accounts.PlanSudoGrant(h.Sys, db, args[0], nopasswd)
			return err
		})
	}
	c.Flags().BoolVar(&nopasswd, "nopasswd", false, "no password asked (NOPASSWD)")
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		return h.withAccounts(func(db *accounts.DB) error {
			return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
				p, noChange, err := accounts.PlanSudoGrant(h.Sys, db, args[0], nopasswd)
				if err != nil {
					return plan.Plan{}, "", err
				}
				if w := sudo.NoIncludedirWarning(h.Sys); w != "" {
					fmt.Fprintln(errOut, w)
				}
				return p, noChange, nil
			})
		})
	})
}

func (t *hostTree) sudoRevokeCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "revoke GROUP",
		Short: "Remove the sudo drop-in of a group",
		Long: `Remove /etc/sudoers.d/sera-GROUP. Other drop-ins, and sudo a group gets
from anywhere else, are left alone.`,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		return t.groupCheckOnHost(func(h *Host, db *accounts.DB) error {
			_, _, err := accounts.PlanSudoRevoke(h.Sys, db, args[0])
			return err
		})
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accounts.DB) error {
			return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
				p, noChange, err := accounts.PlanSudoRevoke(h.Sys, db, args[0])
				if err != nil {
					return plan.Plan{}, "", err
				}
				return p, noChange, nil
			})
		})
	})
}

func (t *hostTree) sudoListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List the groups sera granted sudo",
		Args:  cli.UsageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per group")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		infos, err := accounts.SudoGrants(h.Sys)
		if err != nil {
			return err
		}
		for _, info := range infos {
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			kind := "password"
			if info.NoPasswd {
				kind = "nopasswd"
			}
			var notes []string
			if info.Edited {
				notes = append(notes, "edited by hand")
			}
			if info.NoGroup {
				notes = append(notes, "no such group")
			}
			line := fmt.Sprintf("%-16s %-9s %s", info.Group, kind, info.File)
			if len(notes) > 0 {
				line += " (" + strings.Join(notes, ", ") + ")"
			}
			fmt.Fprintln(out, line)
		}
		return nil
	})
}
