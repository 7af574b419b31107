package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/accounts"
	"github.com/sera-dev/sera/host/sudo"
	"github.com/sera-dev/sera/plan"
	"github.com/spf13/cobra"
)

// Groups are changed only through shadow-utils (groupadd, groupdel,
// gpasswd); /etc/group is read, never written by sera. Only regular groups
// (gid in GID_MIN..GID_MAX of /etc/login.defs) are managed: root and the
// system groups (sudo, adm, …) are refused.

// maxGID is the largest group id there can be: gid_t is 32 bits and
// (gid_t)-1 means "no group".
const maxGID = math.MaxUint32 - 1

func (t *hostTree) groupCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "group",
		Short: "Manage regular groups (gid in GID_MIN..GID_MAX) and their members",
		Long: `Manage regular groups through shadow-utils (groupadd, groupdel, gpasswd);
/etc/group is never edited by hand. root and system groups (gid outside
GID_MIN..GID_MAX of /etc/login.defs, e.g. sudo or adm) are refused. Give a
group sudo with 'sera sudo grant GROUP'.`,
	})
	members := cli.Group(&cobra.Command{
		Use:   "members",
		Short: "Add users to a group or remove them",
	})
	members.AddCommand(t.groupMembersCmd(true), t.groupMembersCmd(false))
	c.AddCommand(t.groupAddCmd(), t.groupDelCmd(), members, t.groupListCmd())
	return c
}

// groupCheckOnHost runs check against the host's account database when the
// tree runs inside the watcher, so that Resolve refuses what the host
// would refuse before anything runs. On the client the host is not known
// yet: the command checks again, under the accounts lock, before it builds
// its plan.
func (t *hostTree) groupCheckOnHost(check func(h *Host, db *accounts.DB) error) error {
	if t.host == nil {
		return nil
	}
	db, err := accounts.Load(t.host.Sys)
	if err != nil {
		return err
	}
	return plan.Unchanged(check(t.host, db))
}

// withAccounts runs fn with the host's account database loaded under the
// accounts lock: one account change at a time on a host.
func (h *Host) withAccounts(fn func(db *accounts.DB) error) error {
	unlock, err := accounts.Lock(h.Sys)
	if err != nil {
		return err
	}
	defer unlock()
	db, err := accounts.Load(h.Sys)
	if err != nil {
		return err
	}
	return fn(db)
}

// checkGIDFlag is the client's check of --gid: never a system id. The
// host's own GID_MIN..GID_MAX is checked on the host.
func checkGIDFlag(gid int) error {
	if gid < accounts.DefaultLoginDefs.GIDMin {
		return plan.Unchanged(cli.UsageErr("refusing --gid %d: sera only manages regular groups (gid %d and up)", gid, accounts.DefaultLoginDefs.GIDMin))
	}
	if int64(gid) > maxGID {
		return plan.Unchanged(cli.UsageErr("invalid --gid %d: not a group id (at most %d)", gid, maxGID))
	}
	return nil
}

func (t *hostTree) groupAddCmd() *cobra.Command {
	var gid int
	var dryRun bool
	c := &cobra.Command{
		Use:   "add NAME [--gid N]",
		Short: "Create a regular group, or check it is there",
		Long: `Create a group with groupadd, with the given gid or the next free one of
GID_MIN..GID_MAX. Run again it says "already present"; if the group exists
with another gid, or the gid belongs to another group, it fails and changes
nothing.`,
		Example: `  sera group add ops --to web1
  sera group add ops --gid 2000 --to 'web*'`,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		gidSet := c.Flags().Changed("gid")
		if gidSet {
			if err := checkGIDFlag(gid); err != nil {
				return err
			}
		}
		return t.groupCheckOnHost(func(h *Host, db *accounts.DB) error {
			_, _, err := accounts.PlanGroupAdd(h.Sys, db, args[0], gid, gidSet)
			return err
		})
	}
	c.Flags().IntVar(&gid, "gid", 0, "the group id (default: the next free one in GID_MIN..GID_MAX)")
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accounts.DB) error {
			gidSet := c.Flags().Changed("gid")
			return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
				p, noChange, err := accounts.PlanGroupAdd(h.Sys, db, args[0], gid, gidSet)
				if err != nil {
					return plan.Plan{}, "", err
				}
				if len(p.Steps) > 0 {
					if err := h.guardGroupAdd(t.caller, db, args[0], gid, gidSet); err != nil {
						return plan.Plan{}, "", err
					}
				}
				return p, noChange, nil
			})
		})
	})
}

func (t *hostTree) groupDelCmd() *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "del NAME",
		Short: "Delete a regular group (and its sudo drop-in)",
		Long: `Delete a group with groupdel. A group that is the primary group of a user
is refused (delete or change the user first). If sera granted the group
sudo, its drop-in in /etc/sudoers.d is removed first, so a later group of
the same name does not inherit sudo.`,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		return t.groupCheckOnHost(func(h *Host, db *accounts.DB) error {
			_, _, err := accounts.PlanGroupDel(h.Sys, db, args[0])
			return err
		})
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accounts.DB) error {
			return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
				p, noChange, err := accounts.PlanGroupDel(h.Sys, db, args[0])
				if err != nil {
					return plan.Plan{}, "", err
				}
				// Deleting a group changes the groups of every member.
				if g := db.Group(args[0]); g != nil && len(p.Steps) > 0 {
					for _, name := range g.Members {
						if u := db.User(name); u != nil {
							if err := h.guardAccount(t.caller, db, "delete group "+args[0], db.Current(u)); err != nil {
								return plan.Plan{}, "", err
							}
						}
					}
				}
				return p, noChange, nil
			})
		})
	})
}

func (t *hostTree) groupMembersCmd(add bool) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "add GROUP USER...",
		Short: "Add users to a regular group",
		Long: `Add regular users (uid in UID_MIN..UID_MAX) to a regular group with
'gpasswd -a'. Users already in the group are left as they are.`,
		Example: "  sera group members add ops alice bob --to web1",
		Args:    cli.UsageArgs(cobra.MinimumNArgs(2)),
	}
	if !add {
		c.Use, c.Short = "remove GROUP USER...", "Remove users from a regular group"
		c.Long = `Remove users from a regular group with 'gpasswd -d'. Users not in the
group are left as they are. A user's primary group is not changed.`
		c.Example = "  sera group members remove ops bob --to web1"
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		for _, u := range args[1:] {
			if err := checkAccountName("user", u); err != nil {
				return err
			}
		}
		return t.groupCheckOnHost(func(h *Host, db *accounts.DB) error {
			_, _, err := accounts.PlanMembers(h.Sys, db, add, args[0], args[1:])
			return err
		})
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accounts.DB) error {
			return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
				p, noChange, err := accounts.PlanMembers(h.Sys, db, add, args[0], args[1:])
				if err != nil {
					return plan.Plan{}, "", err
				}
				// Joining a group may make an account privileged; leaving
				// one changes the groups of an account that may already be
				// (and sudoers can negate a group: !%restricted).
				for _, name := range args[1:] {
					u := db.User(name)
					if u == nil {
						continue
					}
					a := db.Current(u)
					what := "remove " + name + " from group " + args[0]
					if add {
						a.Groups = append(a.Groups, args[0])
						what = "add " + name + " to group " + args[0]
					}
					if err := h.guardAccount(t.caller, db, what, db.Current(u), a); err != nil {
						return plan.Plan{}, "", err
					}
				}
				return p, noChange, nil
			})
		})
	})
}

// guardGroupAdd refuses to create a group sudoers already grants (by
// name, or by a gid the new group gets): its members would be root.
func (h *Host) guardGroupAdd(who *sera.KnownClient, db *accounts.DB, name string, gid int, gidSet bool) error {
	if callerMay(who, "sudo grant") == nil {
		return nil
	}
	v, err := sudo.ReadView(h.Sys)
	if err != nil {
		return guardSudo(who, "create group "+name, err.Error())
	}
	why := ""
	if f, ok := v.Groups[name]; ok {
		why = "sudoers grants group " + name + " (" + f + ")"
	} else if slices.Contains(accounts.RootGroups, name) {
		why = name + " is a root-equivalent group name"
	} else if f, ok := v.GIDs[gid]; gidSet && ok {
		why = fmt.Sprintf("sudoers grants gid %d (%s)", gid, f)
	} else if !gidSet {
		for g, f := range v.GIDs {
			if db.ManagedGID(g) && db.GroupByGID(g) == nil {
				why = fmt.Sprintf("groupadd picks the gid and sudoers grants the free gid %d (%s)", g, f)
			}
		}
	}
	return guardSudo(who, "create group "+name, why)
}

// groupInfo is what group list reports.
type groupInfo struct {
	Name    string   `json:"name"`
	GID     int      `json:"gid"`
	Members []string `json:"members"`
}

func (t *hostTree) groupListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List regular groups with their gid and members",
		Args:  cli.UsageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per group")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		db, err := accounts.Load(h.Sys)
		if err != nil {
			return err
		}
		for _, g := range db.Groups {
			if !db.ManagedGID(g.GID) {
				continue
			}
			info := groupInfo{Name: g.Name, GID: g.GID, Members: cli.NonNil(g.Members)}
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			fmt.Fprintf(out, "%-16s %6d  %s\n", info.Name, info.GID, accounts.OrNone(info.Members))
		}
		return nil
	})
}
