package accounts

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sshkeys"
	"github.com/sera-dev/sera/plan"
)

// UserSpec is what 'sera user add' asks for. A nil field is not asked
// for: useradd's default for a new user, left as it is on an existing one.
type UserSpec struct {
	Name     string
	UID, GID *int
	// Groups are added to the user's groups, or with SetGroups become the
	// only groups sera manages for it (system groups are kept).
	Groups    []string
	SetGroups bool
	Shell     *string
	Comment   *string
	// PasswordHash is a crypt(3) hash; it reaches chpasswd on standard
	// input, never argv.
	PasswordHash *string
	Keys         []*sshkeys.Key
	// Update changes an existing user that differs; without it a
	// difference is an error.
	Update bool
}

// PlanAdd plans 'sera user add': a new user with useradd, or for an
// existing one the usermod, chpasswd and key writes that make it as asked
// (only with Update; otherwise a difference is an error). The second
// result is what to say when nothing changes.
func PlanAdd(sys *host.System, o *UserSpec) (plan.Plan, string, error) {
	name := o.Name
	db, err := Load(sys)
	if err != nil {
		return plan.Plan{}, "", err
	}
	if o.UID != nil && !db.ManagedUID(*o.UID) {
		return plan.Plan{}, "", fmt.Errorf("refusing --uid %d: outside this host's regular range %d..%d", *o.UID, db.Defs.UIDMin, db.Defs.UIDMax)
	}
	if o.GID != nil {
		if !db.ManagedGID(*o.GID) {
			return plan.Plan{}, "", fmt.Errorf("refusing --gid %d: outside this host's regular range %d..%d", *o.GID, db.Defs.GIDMin, db.Defs.GIDMax)
		}
		if db.GroupByGID(*o.GID) == nil {
			return plan.Plan{}, "", fmt.Errorf("no group with gid %d on this host (create it with 'sera group add')", *o.GID)
		}
	}
	for _, g := range o.Groups {
		if _, err := db.ManageableGroup(g); err != nil {
			return plan.Plan{}, "", err
		}
	}
	if o.Shell != nil {
		if err := CheckShell(sys, *o.Shell); err != nil {
			return plan.Plan{}, "", err
		}
	}

	u := db.User(name)
	if u == nil {
		return planNewUser(sys, db, o)
	}
	if !db.ManagedUID(u.UID) {
		return plan.Plan{}, "", fmt.Errorf("refusing user %s: uid %d is a system account", name, u.UID)
	}

	// An existing user: what differs?
	var diffs, argv []string
	if o.UID != nil && u.UID != *o.UID {
		if other := db.UserByUID(*o.UID); other != nil {
			return plan.Plan{}, "", fmt.Errorf("uid %d is already used by %s", *o.UID, other.Name)
		}
		diffs = append(diffs, fmt.Sprintf("uid %d (want %d)", u.UID, *o.UID))
		argv = append(argv, "--uid", strconv.Itoa(*o.UID))
	}
	if o.GID != nil && u.GID != *o.GID {
		diffs = append(diffs, fmt.Sprintf("primary gid %d (want %d)", u.GID, *o.GID))
		argv = append(argv, "--gid", strconv.Itoa(*o.GID))
	}
	if o.Shell != nil && u.Shell != *o.Shell {
		diffs = append(diffs, fmt.Sprintf("shell %s (want %s)", u.Shell, *o.Shell))
		argv = append(argv, "--shell", *o.Shell)
	}
	if o.Comment != nil && u.Comment != *o.Comment {
		diffs = append(diffs, fmt.Sprintf("comment %q (want %q)", u.Comment, *o.Comment))
		argv = append(argv, "--comment", *o.Comment)
	}
	setHash := o.PasswordHash != nil && strings.TrimPrefix(db.Shadow[name].Hash, "!") != *o.PasswordHash
	if setHash {
		diffs = append(diffs, "password hash")
	}
	member := db.GroupsOf(name)
	var kept []string
	switch {
	case !o.SetGroups && len(o.Groups) > 0:
		var missing []string
		for _, g := range o.Groups {
			if !slices.Contains(member, g) {
				missing = append(missing, g)
			}
		}
		if len(missing) > 0 {
			diffs = append(diffs, "not in groups "+strings.Join(missing, ","))
			argv = append(argv, "--append", "--groups", strings.Join(missing, ","))
		}
	case o.SetGroups:
		var managed []string
		for _, g := range member {
			if ge := db.Group(g); ge != nil && db.ManagedGID(ge.GID) {
				managed = append(managed, g)
			} else {
				kept = append(kept, g)
			}
		}
		if !sameSet(managed, o.Groups) {
			diffs = append(diffs, fmt.Sprintf("groups %s (want %s)", OrNone(managed), OrNone(o.Groups)))
			argv = append(argv, "--groups", strings.Join(append(append([]string{}, o.Groups...), kept...), ","))
		}
	}
	before, err := sshkeys.Load(sys, u.Owner())
	if err != nil {
		return plan.Plan{}, "", err
	}
	after := before.Clone()
	var newKeys []string
	for _, k := range o.Keys {
		if sshkeys.Find(after.Managed, k) == nil && sshkeys.Find(after.OwnKeys(), k) == nil {
			after.Managed = append(after.Managed, k)
			newKeys = append(newKeys, "add "+k.Describe())
		}
	}
	if len(newKeys) > 0 {
		diffs = append(diffs, fmt.Sprintf("%d key(s) missing", len(newKeys)))
	}
	if len(diffs) == 0 {
		return plan.Plan{}, "user " + name + " already present", nil
	}
	if !o.Update {
		return plan.Plan{}, "", fmt.Errorf("user %s exists with other attributes: %s; pass --update to change them", name, strings.Join(diffs, ", "))
	}
	var p plan.Plan
	if len(argv) > 0 {
		p.Run(sys.Exec, append(append([]string{"usermod"}, argv...), "--", name)...)
		if len(kept) > 0 {
			p.Note("%s", "kept system groups "+strings.Join(kept, ",")+" (not managed by sera)")
		}
	}
	if setHash {
		hash := *o.PasswordHash
		p.Add("chpasswd --encrypted (the hash of "+name+" on its standard input)", func(ctx context.Context) error {
			return setPasswordHash(ctx, sys, name, hash)
		})
	}
	if LockedBySera(sys, db, u) && sshkeys.DisableNew(before, after) {
		p.Note("%s", name+" is locked: the new keys are added disabled; 'sera user unlock "+name+"' enables them")
	}
	sshkeys.PlanWrite(&p, sys, u.Owner(), before, after, strings.Join(newKeys, "; "))
	return p, "", nil
}

func planNewUser(sys *host.System, db *DB, o *UserSpec) (plan.Plan, string, error) {
	name := o.Name
	if o.UID != nil {
		if other := db.UserByUID(*o.UID); other != nil {
			return plan.Plan{}, "", fmt.Errorf("uid %d is already used by %s", *o.UID, other.Name)
		}
	}
	if o.GID == nil && db.Group(name) != nil {
		return plan.Plan{}, "", fmt.Errorf("a group called %s already exists; pass --gid to make it the user's primary group", name)
	}
	argv := []string{"useradd", "--create-home"}
	if o.UID != nil {
		argv = append(argv, "--uid", strconv.Itoa(*o.UID))
	}
	if o.GID != nil {
		argv = append(argv, "--gid", strconv.Itoa(*o.GID))
	}
	if len(o.Groups) > 0 {
		argv = append(argv, "--groups", strings.Join(o.Groups, ","))
	}
	if o.Shell != nil {
		argv = append(argv, "--shell", *o.Shell)
	}
	if o.Comment != nil {
		argv = append(argv, "--comment", *o.Comment)
	}
	argv = append(argv, "--", name)
	var p plan.Plan
	p.Run(sys.Exec, argv...)
	if o.PasswordHash != nil {
		hash := *o.PasswordHash
		p.Add("chpasswd --encrypted (the hash of "+name+" on its standard input)", func(ctx context.Context) error {
			return setPasswordHash(ctx, sys, name, hash)
		})
	}
	if len(o.Keys) > 0 {
		var what []string
		ak := &sshkeys.File{}
		for _, k := range o.Keys {
			if sshkeys.Find(ak.Managed, k) == nil {
				ak.Managed = append(ak.Managed, k)
				what = append(what, "add "+k.Describe())
			}
		}
		// The user exists only once useradd ran: look it up then.
		p.Add(fmt.Sprintf("write ~%s/.ssh/authorized_keys (0600 %s): %s", name, name, strings.Join(what, "; ")), func(ctx context.Context) error {
			db, err := Load(sys)
			if err != nil {
				return err
			}
			u := db.User(name)
			if u == nil {
				return fmt.Errorf("user %s missing after useradd", name)
			}
			before, err := sshkeys.Load(sys, u.Owner())
			if err != nil {
				return err
			}
			after := before.Clone()
			after.Managed = ak.Managed
			var wp plan.Plan
			sshkeys.PlanWrite(&wp, sys, u.Owner(), before, after, "")
			for _, c := range wp.Steps {
				if err := c.Do(ctx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return p, "", nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// OrNone joins names with commas, or says "none".
func OrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}
