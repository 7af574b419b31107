package accounts

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sudo"
	"github.com/sera-dev/sera/plan"
)

// PlanGroupAdd plans 'sera group add': groupadd with gid (if gidSet) or
// the next free one. A group that is there with that gid is "already
// present" (the second result); with another gid it is an error, as sera
// does not renumber groups.
func PlanGroupAdd(sys *host.System, db *DB, name string, gid int, gidSet bool) (plan.Plan, string, error) {
	if gidSet && !db.ManagedGID(gid) {
		return plan.Plan{}, "", fmt.Errorf("refusing --gid %d: outside this host's regular range %d..%d (GID_MIN..GID_MAX)",
			gid, db.Defs.GIDMin, db.Defs.GIDMax)
	}
	if g := db.Group(name); g != nil {
		if !db.ManagedGID(g.GID) {
			return plan.Plan{}, "", fmt.Errorf("refusing group %s: it is a system group (gid %d, outside %d..%d)",
				name, g.GID, db.Defs.GIDMin, db.Defs.GIDMax)
		}
		if gidSet && g.GID != gid {
			return plan.Plan{}, "", fmt.Errorf("group %s exists with gid %d, not %d; sera does not renumber groups", name, g.GID, gid)
		}
		return plan.Plan{}, fmt.Sprintf("group %s already present (gid %d)", name, g.GID), nil
	}
	if gidSet {
		if other := db.GroupByGID(gid); other != nil {
			return plan.Plan{}, "", fmt.Errorf("gid %d is already used by group %s", gid, other.Name)
		}
	}
	argv := []string{"groupadd"}
	if gidSet {
		argv = append(argv, "--gid", strconv.Itoa(gid))
	}
	argv = append(argv, "--", name)
	var p plan.Plan
	p.Run(sys.Exec, argv...)
	// A drop-in left by a group of the same name, deleted behind sera's
	// back, gives the new group sudo at once: say so.
	if sudo.Present(sys, name) {
		p.Note("%s", fmt.Sprintf("%s grants sudo to the members of %s (remove it with 'sera sudo revoke %s')", sudo.Path(name), name, name))
	}
	return p, "", nil
}

// PlanGroupDel plans 'sera group del': the group's sudo drop-in removed
// first (if groupdel then fails, the group has lost sudo, the safe way
// round), then groupdel. The primary group of a user is refused.
func PlanGroupDel(sys *host.System, db *DB, name string) (plan.Plan, string, error) {
	var p plan.Plan
	g := db.Group(name)
	if g != nil {
		if _, err := db.ManageableGroup(name); err != nil {
			return plan.Plan{}, "", err
		}
		var primaryOf []string
		for _, u := range db.Users {
			if u.GID == g.GID {
				primaryOf = append(primaryOf, u.Name)
			}
		}
		if len(primaryOf) > 0 {
			return plan.Plan{}, "", fmt.Errorf("refusing to delete group %s: it is the primary group of user %s (delete the user or change its group first)",
				name, strings.Join(primaryOf, ", "))
		}
	}
	if err := sudo.PlanRevoke(&p, sys, name); err != nil {
		return plan.Plan{}, "", err
	}
	if g != nil {
		p.Run(sys.Exec, "groupdel", "--", name)
	}
	return p, "group " + name + " already absent", nil
}

// PlanMembers plans 'sera group members add' (add) or 'remove': gpasswd
// for each user not yet as asked.
func PlanMembers(sys *host.System, db *DB, add bool, name string, users []string) (plan.Plan, string, error) {
	g, err := db.ManageableGroup(name)
	if err != nil {
		return plan.Plan{}, "", err
	}
	users = Dedupe(users)
	var problems []string
	for _, u := range users {
		if _, err := db.ManageableUser(u); err != nil {
			// A user that is gone is not in the group once its
			// entry, if any (left by userdel behind sera's back), is
			// removed.
			if !add && db.User(u) == nil {
				continue
			}
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return plan.Plan{}, "", fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	var p plan.Plan
	var unchanged []string
	for _, u := range users {
		member := slices.Contains(g.Members, u)
		switch {
		case add && !member:
			p.Run(sys.Exec, "gpasswd", "-a", u, "--", name)
		case !add && member:
			p.Run(sys.Exec, "gpasswd", "-d", u, "--", name)
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

// Dedupe drops repeated names, keeping the first of each.
func Dedupe(names []string) []string {
	var out []string
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
