package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/accounts"
	"github.com/sera-dev/sera/plan"
)

// cryptRE accepts the crypt(3) hash formats of glibc and libxcrypt:
// $id$[params$]salt$hash, nothing that could break /etc/shadow.
var cryptRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^\$(1|5|6|y|gy|7|2[abxy])\$[./0-9A-Za-z$=,]{8,}$`) })

func (t *hostTree) userCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "user",
		Short: "Manage regular user accounts (uid in UID_MIN..UID_MAX)",
		Long: `Manage regular user accounts through shadow-utils (useradd, usermod,
userdel); /etc/passwd is never edited by hand. root and system accounts
(uid outside UID_MIN..UID_MAX of /etc/login.defs) are refused.`,
	})
	c.AddCommand(t.userAddCmd(), t.userLockCmd(true), t.userLockCmd(false), t.userDelCmd(), t.userListCmd(), t.userShowCmd())
	return c
}

type userAddOptions struct {
	uid, gid          int
	groups, setGroups []string
	shell, comment    string
	keys              []string
	options           string
	passwordHash      string
	update, dryRun    bool
}

func (o *userAddOptions) validate(c *cobra.Command, args []string) error {
	if err := checkAccountName("user", args[0]); err != nil {
		return err
	}
	changed := c.Flags().Changed
	// The host checks its own UID_MIN..UID_MAX again; this catches root
	// and system ids before anything is sent.
	if changed("uid") && o.uid < accounts.DefaultLoginDefs.UIDMin {
		return cli.UsageErr("refusing --uid %d: sera only manages regular accounts (uid %d and up)", o.uid, accounts.DefaultLoginDefs.UIDMin)
	}
	if changed("gid") && o.gid < accounts.DefaultLoginDefs.GIDMin {
		return cli.UsageErr("refusing --gid %d: sera only manages regular groups (gid %d and up)", o.gid, accounts.DefaultLoginDefs.GIDMin)
	}
	if changed("groups") && changed("set-groups") {
		return cli.UsageErr("--groups adds groups and --set-groups replaces them: give one")
	}
	for _, g := range append(cli.SplitAll(o.groups), cli.SplitAll(o.setGroups)...) {
		if err := checkAccountName("group", g); err != nil {
			return err
		}
	}
	if changed("shell") {
		if !filepath.IsAbs(o.shell) || filepath.Clean(o.shell) != o.shell || strings.ContainsAny(o.shell, ": \t\n\r\x00") {
			return cli.UsageErr("invalid --shell %q: give the absolute path of a login shell", o.shell)
		}
	}
	if strings.ContainsAny(o.comment, ":\n\r\x00") || len(o.comment) > 255 {
		return cli.UsageErr("invalid --comment: no ':' or line breaks, at most 255 bytes")
	}
	if changed("password-hash") && !cryptRE().MatchString(o.passwordHash) {
		return cli.UsageErr("invalid --password-hash: not a crypt(3) hash ($6$…, $y$…); make one with 'mkpasswd -m yescrypt'")
	}
	for _, k := range o.keys {
		if _, err := parseKeyArg(k, o.options); err != nil {
			return err
		}
	}
	return nil
}

func (t *hostTree) userAddCmd() *cobra.Command {
	o := &userAddOptions{}
	c := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a user, or check it is as asked (--update changes it)",
		Long: `Create a user with useradd (home created, owned by the user), with the
given SSH keys in ~/.ssh/authorized_keys. Run again with the same attributes
it says "already present"; with other attributes it fails and changes
nothing, unless --update, which changes them with usermod.

--groups adds the user to these groups; --set-groups makes them the user's
only groups managed by sera (system groups such as sudo are kept, and said so).`,
		Example: `  sera user add alice --key "$(cat alice.pub)" --groups ops --to web1`,
		Args:    cli.UsageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = o.validate
	f := c.Flags()
	f.IntVar(&o.uid, "uid", 0, "user id (default: the next free one in UID_MIN..UID_MAX)")
	f.IntVar(&o.gid, "gid", 0, "primary group id (default: a new group named like the user)")
	f.StringSliceVar(&o.groups, "groups", nil, "add the user to these groups")
	f.StringSliceVar(&o.setGroups, "set-groups", nil, "make these the user's groups (replaces the others sera manages)")
	f.StringVar(&o.shell, "shell", "", "login shell (default: useradd's)")
	f.StringVar(&o.comment, "comment", "", "the GECOS comment, e.g. a full name")
	f.StringArrayVar(&o.keys, "key", nil, "an SSH public key line (repeatable)")
	f.StringVar(&o.options, "options", "", "authorized_keys options for the --key keys")
	f.StringVar(&o.passwordHash, "password-hash", "", "a crypt(3) password hash (default: no password, keys only)")
	_ = f.SetAnnotation("password-hash", cli.AnnSecret, []string{"true"})
	f.BoolVar(&o.update, "update", false, "change an existing user's attributes to these")
	cli.AddDryRun(c, &o.dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return o.run(ctx, h, t.caller, o.spec(c, args[0]), out)
	})
}

// spec is what the flags ask for: a flag not given is nil.
func (o *userAddOptions) spec(c *cobra.Command, name string) *accounts.UserSpec {
	changed := c.Flags().Changed
	s := &accounts.UserSpec{Name: name, Groups: cli.SplitAll(o.groups), Update: o.update}
	if changed("set-groups") {
		s.Groups, s.SetGroups = cli.SplitAll(o.setGroups), true
	}
	if changed("uid") {
		s.UID = &o.uid
	}
	if changed("gid") {
		s.GID = &o.gid
	}
	if changed("shell") {
		s.Shell = &o.shell
	}
	if changed("comment") {
		s.Comment = &o.comment
	}
	if changed("password-hash") {
		s.PasswordHash = &o.passwordHash
	}
	for _, k := range o.keys {
		ak, _ := parseKeyArg(k, o.options) // checked by validate
		s.Keys = append(s.Keys, ak)
	}
	return s
}

// run is 'user add' on the host, under the accounts lock: the sudo guard,
// then the plan.
func (o *userAddOptions) run(ctx context.Context, h *Host, who *sera.KnownClient, s *accounts.UserSpec, out io.Writer) error {
	unlock, err := accounts.Lock(h.Sys)
	if err != nil {
		return err
	}
	defer unlock()
	if err := h.guardUserAdd(who, s); err != nil {
		return err
	}
	return plan.Build(ctx, out, o.dryRun, func() (plan.Plan, string, error) { return accounts.PlanAdd(h.Sys, s) })
}

// guardUserAdd refuses a user add that reaches sudo: a change of any kind
// to an account that can sudo, or one that leaves an account able to
// (by --gid, --groups, --set-groups, or a name or uid sudoers names).
func (h *Host) guardUserAdd(who *sera.KnownClient, s *accounts.UserSpec) error {
	if who == nil {
		return nil
	}
	name, groups := s.Name, s.Groups
	db, err := accounts.Load(h.Sys)
	if err != nil {
		return err
	}
	u := db.User(name)
	if u == nil {
		a := accounts.Account{Name: name, UID: -1, GID: -1, Groups: slices.Clone(groups)}
		if s.UID != nil {
			a.UID = *s.UID
		}
		if s.GID != nil {
			a.GID = *s.GID
		} else {
			a.Groups = append(a.Groups, name) // useradd's group named like the user
		}
		return h.guardAccount(who, db, "create user "+name, a)
	}
	cur := db.Current(u)
	after := cur
	after.Groups = slices.Clone(cur.Groups)
	if s.UID != nil {
		after.UID = *s.UID
	}
	if s.GID != nil {
		after.GID = *s.GID
	}
	if s.SetGroups {
		after.Groups = slices.DeleteFunc(after.Groups, func(g string) bool {
			ge := db.Group(g)
			return ge != nil && db.ManagedGID(ge.GID)
		})
	}
	after.Groups = append(after.Groups, groups...)
	return h.guardAccount(who, db, "update user "+name, cur, after)
}

func (t *hostTree) userLockCmd(lock bool) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "lock NAME",
		Short: "Lock a user completely: password, account expiry, SSH keys, sessions",
		Long: `Lock a user completely: the password is locked, the account expired (which
PAM enforces for every SSH method, keys included), every key sera manages
disabled, and the user's running processes ended. 'user unlock' reverses
exactly what lock did.`,
		Args:    cli.UsageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	if !lock {
		c.Use, c.Short, c.Long = "unlock NAME", "Reverse 'user lock'", "Reverse exactly what 'user lock' did: password, expiry and keys as they were."
	}
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return runUserLock(ctx, h, t.caller, out, lock, dryRun, args[0])
	})
}

// runUserLock is 'user lock' (lock) and 'user unlock' on the host.
func runUserLock(ctx context.Context, h *Host, who *sera.KnownClient, out io.Writer, lock, dryRun bool, name string) error {
	return h.withAccounts(func(db *accounts.DB) error {
		return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
			u, err := db.ManageableUser(name)
			if err != nil {
				return plan.Plan{}, "", err
			}
			if lock {
				return accounts.PlanLock(h.Sys, db, u), "user " + u.Name + " already locked", nil
			}
			// Unlocking lets someone log in again: as an account that
			// can sudo, that is a way to root.
			if err := h.guardAccount(who, db, "unlock user "+u.Name, db.Current(u)); err != nil {
				return plan.Plan{}, "", err
			}
			p, err := accounts.PlanUnlock(h.Sys, db, u)
			return p, "user " + u.Name + " is not locked", err
		})
	})
}

func (t *hostTree) userDelCmd() *cobra.Command {
	var dryRun, keepHome bool
	c := &cobra.Command{
		Use:   "del NAME",
		Short: "Delete a user, archiving the home first",
		Long: `Delete a user: its processes are ended, its home is archived to a
root-only tarball under $SERA_STATE/archive/ (/var/lib/sera/archive), then
'userdel --remove' deletes the account and the home. With --keep-home the
home is left in place (and not archived).`,
		Args:    cli.UsageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	c.Flags().BoolVar(&keepHome, "keep-home", false, "leave the home directory in place")
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		return h.withAccounts(func(db *accounts.DB) error {
			return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
				return accounts.PlanDel(h.Sys, db, args[0], keepHome)
			})
		})
	})
}

func (t *hostTree) userListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List regular users with their groups, keys and state",
		Args:  cli.UsageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per user")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		db, err := accounts.Load(h.Sys)
		if err != nil {
			return err
		}
		for i := range db.Users {
			u := &db.Users[i]
			if !db.ManagedUID(u.UID) {
				continue
			}
			info := accounts.Info(h.Sys, db, u)
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			fmt.Fprintf(out, "%-16s %6d  %-16s %-24s %d key(s)\n", info.Name, info.UID, info.State(), accounts.OrNone(info.Groups), len(info.Keys))
		}
		return nil
	})
}

func (t *hostTree) userShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "show NAME",
		Short:   "Show one user",
		Args:    cli.UsageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		db, u, err := h.loadUser(args[0])
		if err != nil {
			return err
		}
		info := accounts.Info(h.Sys, db, u)
		if asJSON {
			return json.NewEncoder(out).Encode(info)
		}
		fmt.Fprintf(out, "name     %s\nuid      %d\ngid      %d\n", info.Name, info.UID, info.GID)
		if info.Comment != "" {
			fmt.Fprintf(out, "comment  %s\n", info.Comment)
		}
		fmt.Fprintf(out, "home     %s\nshell    %s\ngroups   %s\nstate    %s\n", info.Home, info.Shell, accounts.OrNone(info.Groups), info.State())
		for _, k := range info.Keys {
			fmt.Fprintf(out, "key      %s\n", k)
		}
		return nil
	})
}
