package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/sera-dev/sera"
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
	c := group(&cobra.Command{
		Use:   "group",
		Short: "Manage regular groups (gid in GID_MIN..GID_MAX) and their members",
		Long: `Manage regular groups through shadow-utils (groupadd, groupdel, gpasswd);
/etc/group is never edited by hand. root and system groups (gid outside
GID_MIN..GID_MAX of /etc/login.defs, e.g. sudo or adm) are refused. Give a
group sudo with 'sera sudo grant GROUP'.`,
	})
	members := group(&cobra.Command{
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
func (t *hostTree) groupCheckOnHost(check func(h *Host, db *accountDB) error) error {
	if t.host == nil {
		return nil
	}
	db, err := t.host.loadAccounts()
	if err != nil {
		return err
	}
	return check(t.host, db)
}

// withAccounts runs fn with the host's account database loaded under the
// accounts lock: one account change at a time on a host.
func (h *Host) withAccounts(fn func(db *accountDB) error) error {
	unlock, err := h.lockAccounts()
	if err != nil {
		return err
	}
	defer unlock()
	db, err := h.loadAccounts()
	if err != nil {
		return err
	}
	return fn(db)
}

// checkGIDFlag is the client's check of --gid: never a system id. The
// host's own GID_MIN..GID_MAX is checked on the host.
func checkGIDFlag(gid int) error {
	if gid < defaultLoginDefs.GIDMin {
		return usageErr("refusing --gid %d: sera only manages regular groups (gid %d and up); nothing was changed", gid, defaultLoginDefs.GIDMin)
	}
	if int64(gid) > maxGID {
		return usageErr("invalid --gid %d: not a group id (at most %d); nothing was changed", gid, maxGID)
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
		Args: usageArgs(cobra.ExactArgs(1)),
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
		return t.groupCheckOnHost(func(h *Host, db *accountDB) error {
			_, _, err := h.planGroupAdd(db, args[0], gid, gidSet)
			return err
		})
	}
	c.Flags().IntVar(&gid, "gid", 0, "the group id (default: the next free one in GID_MIN..GID_MAX)")
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accountDB) error {
			gidSet := c.Flags().Changed("gid")
			p, noChange, err := h.planGroupAdd(db, args[0], gid, gidSet)
			if err != nil {
				return err
			}
			if len(p.Steps) > 0 {
				if err := h.guardGroupAdd(t.caller, db, args[0], gid, gidSet); err != nil {
					return err
				}
			}
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}

func (h *Host) planGroupAdd(db *accountDB, name string, gid int, gidSet bool) (plan.Plan, string, error) {
	if gidSet && !db.managedGID(gid) {
		return plan.Plan{}, "", fmt.Errorf("refusing --gid %d: outside this host's regular range %d..%d (GID_MIN..GID_MAX); nothing was changed",
			gid, db.defs.GIDMin, db.defs.GIDMax)
	}
	if g := db.group(name); g != nil {
		if !db.managedGID(g.GID) {
			return plan.Plan{}, "", fmt.Errorf("refusing group %s: it is a system group (gid %d, outside %d..%d); nothing was changed",
				name, g.GID, db.defs.GIDMin, db.defs.GIDMax)
		}
		if gidSet && g.GID != gid {
			return plan.Plan{}, "", fmt.Errorf("group %s exists with gid %d, not %d; sera does not renumber groups (nothing was changed)", name, g.GID, gid)
		}
		return plan.Plan{}, fmt.Sprintf("group %s already present (gid %d)", name, g.GID), nil
	}
	if gidSet {
		if other := db.groupByGID(gid); other != nil {
			return plan.Plan{}, "", fmt.Errorf("gid %d is already used by group %s; nothing was changed", gid, other.Name)
		}
	}
	argv := []string{"groupadd"}
	if gidSet {
		argv = append(argv, "--gid", strconv.Itoa(gid))
	}
	argv = append(argv, "--", name)
	var p plan.Plan
	p.Run(h.Sys.Exec, argv...)
	// A drop-in left by a group of the same name, deleted behind sera's
	// back, gives the new group sudo at once: say so.
	if h.sudoersPresent(name) {
		p.Note("%s", fmt.Sprintf("%s grants sudo to the members of %s (remove it with 'sera sudo revoke %s')", sudoersPath(name), name, name))
	}
	return p, "", nil
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
		Args: usageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkAccountName("group", args[0]); err != nil {
			return err
		}
		return t.groupCheckOnHost(func(h *Host, db *accountDB) error {
			_, _, err := h.planGroupDel(db, args[0])
			return err
		})
	}
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accountDB) error {
			p, noChange, err := h.planGroupDel(db, args[0])
			if err != nil {
				return err
			}
			// Deleting a group changes the groups of every member.
			if g := db.group(args[0]); g != nil && len(p.Steps) > 0 {
				for _, name := range g.Members {
					if u := db.user(name); u != nil {
						if err := h.guardAccount(t.caller, db, "delete group "+args[0], db.current(u)); err != nil {
							return err
						}
					}
				}
			}
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}

func (h *Host) planGroupDel(db *accountDB, name string) (plan.Plan, string, error) {
	var p plan.Plan
	g := db.group(name)
	if g != nil {
		if _, err := db.manageableGroup(name); err != nil {
			return plan.Plan{}, "", fmt.Errorf("%w; nothing was changed", err)
		}
		var primaryOf []string
		for _, u := range db.users {
			if u.GID == g.GID {
				primaryOf = append(primaryOf, u.Name)
			}
		}
		if len(primaryOf) > 0 {
			return plan.Plan{}, "", fmt.Errorf("refusing to delete group %s: it is the primary group of user %s (delete the user or change its group first); nothing was changed",
				name, strings.Join(primaryOf, ", "))
		}
	}
	// Revoke first: if groupdel then fails, the group has lost sudo, the
	// safe way round.
	if err := h.planSudoRevoke(&p, name); err != nil {
		return plan.Plan{}, "", err
	}
	if g != nil {
		p.Run(h.Sys.Exec, "groupdel", "--", name)
	}
	return p, "group " + name + " already absent", nil
}

func (t *hostTree) groupMembersCmd(add bool) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "add GROUP USER...",
		Short: "Add users to a regular group",
		Long: `Add regular users (uid in UID_MIN..UID_MAX) to a regular group with
'gpasswd -a'. Users already in the group are left as they are.`,
		Example: "  sera group members add ops alice bob --to web1",
		Args:    usageArgs(cobra.MinimumNArgs(2)),
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
		return t.groupCheckOnHost(func(h *Host, db *accountDB) error {
			_, _, err := h.planGroupMembers(db, add, args[0], args[1:])
			return err
		})
	}
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accountDB) error {
			p, noChange, err := h.planGroupMembers(db, add, args[0], args[1:])
			if err != nil {
				return err
			}
			// Joining a group may make an account privileged; leaving
			// one changes the groups of an account that may already be
			// (and sudoers can negate a group: !%restricted).
			for _, name := range args[1:] {
				u := db.user(name)
				if u == nil {
					continue
				}
				a := db.current(u)
				what := "remove " + name + " from group " + args[0]
				if add {
					a.groups = append(a.groups, args[0])
					what = "add " + name + " to group " + args[0]
				}
				if err := h.guardAccount(t.caller, db, what, db.current(u), a); err != nil {
					return err
				}
			}
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}

func (h *Host) planGroupMembers(db *accountDB, add bool, name string, users []string) (plan.Plan, string, error) {
	g, err := db.manageableGroup(name)
	if err != nil {
		return plan.Plan{}, "", fmt.Errorf("%w; nothing was changed", err)
	}
	users = dedupe(users)
	var problems []string
	for _, u := range users {
		if _, err := db.manageableUser(u); err != nil {
			// A user that is gone is not in the group once its
			// entry, if any (left by userdel behind sera's back), is
			// removed.
			if !add && db.user(u) == nil {
				continue
			}
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return plan.Plan{}, "", fmt.Errorf("%s; nothing was changed", strings.Join(problems, "; "))
	}
	var p plan.Plan
	var unchanged []string
	for _, u := range users {
		member := slices.Contains(g.Members, u)
		switch {
		case add && !member:
			p.Run(h.Sys.Exec, "gpasswd", "-a", u, "--", name)
		case !add && member:
			p.Run(h.Sys.Exec, "gpasswd", "-d", u, "--", name)
		default:
			unchanged = append(unchanged, u)
		}
	}
	noChange := fmt.Sprintf("group %s: no change, already members: %s", name, strings.Join(unchanged, ", "))
	if !add {
		noChange = fmt.Sprintf("group %s: no change, already not members: %s", name, strings.Join(unchanged, ", "))
	}
	return p, noChange, nil
}

// guardGroupAdd refuses to create a group sudoers already grants (by
// name, or by a gid the new group gets): its members would be root.
func (h *Host) guardGroupAdd(who *sera.KnownClient, db *accountDB, name string, gid int, gidSet bool) error {
	if callerMay(who, "sudo grant") == nil {
		return nil
	}
	v, err := h.readSudoView()
	if err != nil {
		return guardSudo(who, "create group "+name, err.Error())
	}
	why := ""
	if f, ok := v.groups[name]; ok {
		why = "sudoers grants group " + name + " (" + f + ")"
	} else if slices.Contains(rootGroups, name) {
		why = name + " is a root-equivalent group name"
	} else if f, ok := v.gids[gid]; gidSet && ok {
		why = fmt.Sprintf("sudoers grants gid %d (%s)", gid, f)
	} else if !gidSet {
		for g, f := range v.gids {
			if db.managedGID(g) && db.groupByGID(g) == nil {
				why = fmt.Sprintf("groupadd picks the gid and sudoers grants the free gid %d (%s)", g, f)
			}
		}
	}
	return guardSudo(who, "create group "+name, why)
}

// dedupe drops repeated names, keeping the first of each.
func dedupe(names []string) []string {
	var out []string
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
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
		Args:  usageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per group")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		db, err := h.loadAccounts()
		if err != nil {
			return err
		}
		for _, g := range db.groups {
			if !db.managedGID(g.GID) {
				continue
			}
			info := groupInfo{Name: g.Name, GID: g.GID, Members: nonNil(g.Members)}
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			fmt.Fprintf(out, "%-16s %6d  %s\n", info.Name, info.GID, orNone(info.Members))
		}
		return nil
	})
}
