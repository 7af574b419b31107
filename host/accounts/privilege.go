package accounts

import (
	"fmt"
	"slices"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sudo"
	"github.com/sera-dev/sera/plan"
)

// An account that can sudo is root. Whoever may log in as it, change its
// keys, password or groups, or put any account into a group that carries
// sudo, may become root; so each of those needs the sudo grant too. Who
// can sudo is read from sudoers the way sudo reads it (sudo.View), and
// over-approximated where sera cannot be sure: a rule it cannot resolve
// (ALL, netgroups, non-Unix groups, %h includes) makes every account
// privileged.

// RootGroups are system groups whose members are root, or can become it,
// without sudo (raw disks, shadow, container and VM daemons).
// (staff may write /usr/local, ahead of /usr on root's PATH.)
var RootGroups = []string{"root", "sudo", "wheel", "admin", "disk", "shadow", "kmem", "staff", "docker", "lxd", "incus-admin", "libvirt"}

// Privileged says why a can sudo or is otherwise root, or "" if it cannot.
func Privileged(v *sudo.View, db *DB, a Account) string {
	if v.Everyone != "" {
		return "sudoers grants every user something: " + v.Everyone
	}
	if f, ok := v.Users[a.Name]; ok {
		return fmt.Sprintf("%s names user %s", f, a.Name)
	}
	if a.UID < 0 {
		for uid, f := range v.UIDs {
			if db.ManagedUID(uid) && db.UserByUID(uid) == nil {
				return fmt.Sprintf("its uid is not known yet and %s names the free uid %d", f, uid)
			}
		}
	} else if f, ok := v.UIDs[a.UID]; ok {
		return fmt.Sprintf("%s names uid %d", f, a.UID)
	}
	groups := slices.Clone(a.Groups)
	if a.GID >= 0 {
		if f, ok := v.GIDs[a.GID]; ok || a.GID == 0 {
			return fmt.Sprintf("its primary gid %d carries sudo (%s)", a.GID, orStr(f, "root"))
		}
		if g := db.GroupByGID(a.GID); g != nil {
			groups = append(groups, g.Name)
		}
	} else {
		for gid, f := range v.GIDs {
			if db.ManagedGID(gid) && db.GroupByGID(gid) == nil {
				return fmt.Sprintf("its primary gid is not known yet and %s names the free gid %d", f, gid)
			}
		}
	}
	for _, g := range groups {
		if why := groupCarries(v, db, g); why != "" {
			return fmt.Sprintf("it is in group %s, which %s", g, why)
		}
	}
	// A member of another privileged account's primary group can write
	// what that account leaves group-writable (user private groups):
	// a way into it.
	for _, g := range groups {
		ge := db.Group(g)
		if ge == nil {
			continue
		}
		for _, u := range db.Users {
			if u.GID == ge.GID && u.Name != a.Name && privilegedDirect(v, db, db.Current(&u)) {
				return fmt.Sprintf("it is in group %s, the primary group of %s, who can sudo", g, u.Name)
			}
		}
	}
	return ""
}

// privilegedDirect is privileged without the primary-group rule, which
// would otherwise recurse.
func privilegedDirect(v *sudo.View, db *DB, a Account) bool {
	if v.Everyone != "" || v.Users[a.Name] != "" || v.UIDs[a.UID] != "" {
		return true
	}
	groups := slices.Clone(a.Groups)
	if g := db.GroupByGID(a.GID); g != nil {
		groups = append(groups, g.Name)
	}
	if _, ok := v.GIDs[a.GID]; ok || a.GID == 0 {
		return true
	}
	return slices.ContainsFunc(groups, func(g string) bool { return groupCarries(v, db, g) != "" })
}

// groupCarries says why membership of group g makes an account root, or "".
func groupCarries(v *sudo.View, db *DB, g string) string {
	if slices.Contains(RootGroups, g) {
		return "is root-equivalent"
	}
	if f, ok := v.Groups[g]; ok {
		return "sudoers grants (" + f + ")"
	}
	if ge := db.Group(g); ge != nil {
		if f, ok := v.GIDs[ge.GID]; ok || ge.GID == 0 {
			return "sudoers grants by gid (" + orStr(f, "root") + ")"
		}
	}
	return ""
}

func orStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// PlanSudoGrant plans 'sera sudo grant': the drop-in of group name, a
// group sera manages.
func PlanSudoGrant(sys *host.System, db *DB, name string, nopasswd bool) (plan.Plan, string, error) {
	if db.Group(name) == nil {
		return plan.Plan{}, "", fmt.Errorf("no group %s on this host (create it with 'sera group add %s')", name, name)
	}
	if _, err := db.ManageableGroup(name); err != nil {
		return plan.Plan{}, "", err
	}
	return sudo.PlanGrant(sys, name, nopasswd)
}

// PlanSudoRevoke plans 'sera sudo revoke': the removal of the drop-in of
// group name. A group that is gone may still have its drop-in removed; a
// system group never had one from sera.
func PlanSudoRevoke(sys *host.System, db *DB, name string) (plan.Plan, string, error) {
	if g := db.Group(name); g != nil && !db.ManagedGID(g.GID) {
		return plan.Plan{}, "", fmt.Errorf("refusing sudo for %s: it is a system group (gid %d, outside %d..%d) whose sudo sera does not manage",
			name, g.GID, db.Defs.GIDMin, db.Defs.GIDMax)
	}
	var p plan.Plan
	if err := sudo.PlanRevoke(&p, sys, name); err != nil {
		return plan.Plan{}, "", err
	}
	return p, fmt.Sprintf("sudo for group %s already revoked (no %s)", name, sudo.Path(name)), nil
}

// SudoGrants lists the sera drop-ins of the host, marking those whose
// group is gone.
func SudoGrants(sys *host.System) ([]sudo.Info, error) {
	list, err := sudo.List(sys, func(name string) bool { return CheckName("group", name) == nil })
	if err != nil || list == nil {
		return list, err
	}
	db, err := Load(sys)
	if err != nil {
		return nil, err
	}
	for i := range list {
		list[i].NoGroup = db.Group(list[i].Group) == nil
	}
	return list, nil
}
