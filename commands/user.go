package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// expiredDay is the expiry usermod -e 1970-01-02 sets (days since 1970):
// PAM refuses an expired account for every SSH method, keys included.
const (
	expiredDay  = 1
	expiredDate = "1970-01-02"
)

// cryptRE accepts the crypt(3) hash formats of glibc and libxcrypt:
// $id$[params$]salt$hash, nothing that could break /etc/shadow.
var cryptRE = regexp.MustCompile(`^\$(1|5|6|y|gy|7|2[abxy])\$[./0-9A-Za-z$=,]{8,}$`)

func (t *hostTree) userCmd() *cobra.Command {
	c := group(&cobra.Command{
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
	if changed("uid") && o.uid < defaultLoginDefs.UIDMin {
		return usageErr("refusing --uid %d: sera only manages regular accounts (uid %d and up)", o.uid, defaultLoginDefs.UIDMin)
	}
	if changed("gid") && o.gid < defaultLoginDefs.GIDMin {
		return usageErr("refusing --gid %d: sera only manages regular groups (gid %d and up)", o.gid, defaultLoginDefs.GIDMin)
	}
	if changed("groups") && changed("set-groups") {
		return usageErr("--groups adds groups and --set-groups replaces them: give one")
	}
	for _, g := range append(splitAll(o.groups), splitAll(o.setGroups)...) {
		if err := checkAccountName("group", g); err != nil {
			return err
		}
	}
	if changed("shell") {
		if !filepath.IsAbs(o.shell) || filepath.Clean(o.shell) != o.shell || strings.ContainsAny(o.shell, ": \t\n\r\x00") {
			return usageErr("invalid --shell %q: give the absolute path of a login shell", o.shell)
		}
	}
	if strings.ContainsAny(o.comment, ":\n\r\x00") || len(o.comment) > 255 {
		return usageErr("invalid --comment: no ':' or line breaks, at most 255 bytes")
	}
	if changed("password-hash") && !cryptRE.MatchString(o.passwordHash) {
		return usageErr("invalid --password-hash: not a crypt(3) hash ($6$…, $y$…); make one with 'mkpasswd -m yescrypt'")
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
		Args:    usageArgs(cobra.ExactArgs(1)),
	}
	c.PreRunE = o.validate
	f := c.Flags()
	f.IntVar(&o.uid, "uid", -1, "user id")
	f.IntVar(&o.gid, "gid", -1, "primary group id (default: a new group named like the user)")
	f.StringSliceVar(&o.groups, "groups", nil, "add the user to these groups")
	f.StringSliceVar(&o.setGroups, "set-groups", nil, "make these the user's groups (replaces the others sera manages)")
	f.StringVar(&o.shell, "shell", "", "login shell (default: useradd's)")
	f.StringVar(&o.comment, "comment", "", "the GECOS comment, e.g. a full name")
	f.StringArrayVar(&o.keys, "key", nil, "an SSH public key line (repeatable)")
	f.StringVar(&o.options, "options", "", "authorized_keys options for the --key keys")
	f.StringVar(&o.passwordHash, "password-hash", "", "a crypt(3) password hash (default: no password, keys only)")
	_ = f.SetAnnotation("password-hash", annSecret, []string{"true"})
	f.BoolVar(&o.update, "update", false, "change an existing user's attributes to these")
	addDryRun(c, &o.dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		unlock, err := h.lockAccounts()
		if err != nil {
			return err
		}
		defer unlock()
		if err := h.guardUserAdd(t.caller, c, o, args[0]); err != nil {
			return err
		}
		p, noChange, err := h.planUserAdd(c, o, args[0])
		if err != nil {
			return err
		}
		return p.Execute(ctx, out, o.dryRun, noChange)
	})
}

func (h *Host) planUserAdd(c *cobra.Command, o *userAddOptions, name string) (plan.Plan, string, error) {
	changed := c.Flags().Changed
	db, err := h.loadAccounts()
	if err != nil {
		return plan.Plan{}, "", err
	}
	if changed("uid") && !db.managedUID(o.uid) {
		return plan.Plan{}, "", fmt.Errorf("refusing --uid %d: outside this host's regular range %d..%d; nothing was changed", o.uid, db.defs.UIDMin, db.defs.UIDMax)
	}
	var primary *groupEntry
	if changed("gid") {
		if !db.managedGID(o.gid) {
			return plan.Plan{}, "", fmt.Errorf("refusing --gid %d: outside this host's regular range %d..%d; nothing was changed", o.gid, db.defs.GIDMin, db.defs.GIDMax)
		}
		if primary = db.groupByGID(o.gid); primary == nil {
			return plan.Plan{}, "", fmt.Errorf("no group with gid %d on this host (create it with 'sera group add'); nothing was changed", o.gid)
		}
	}
	groups := splitAll(o.groups)
	if changed("set-groups") {
		groups = splitAll(o.setGroups)
	}
	for _, g := range groups {
		if _, err := db.manageableGroup(g); err != nil {
			return plan.Plan{}, "", fmt.Errorf("%w; nothing was changed", err)
		}
	}
	if changed("shell") {
		if err := h.checkShell(o.shell); err != nil {
			return plan.Plan{}, "", err
		}
	}
	var keys []*authKey
	for _, k := range o.keys {
		ak, _ := parseKeyArg(k, o.options)
		keys = append(keys, ak)
	}

	u := db.user(name)
	if u == nil {
		return h.planNewUser(db, o, name, changed, groups, keys)
	}
	if !db.managedUID(u.UID) {
		return plan.Plan{}, "", fmt.Errorf("refusing user %s: uid %d is a system account; nothing was changed", name, u.UID)
	}

	// An existing user: what differs?
	var diffs, argv []string
	if changed("uid") && u.UID != o.uid {
		if other := db.userByUID(o.uid); other != nil {
			return plan.Plan{}, "", fmt.Errorf("uid %d is already used by %s; nothing was changed", o.uid, other.Name)
		}
		diffs = append(diffs, fmt.Sprintf("uid %d (want %d)", u.UID, o.uid))
		argv = append(argv, "--uid", strconv.Itoa(o.uid))
	}
	if changed("gid") && u.GID != o.gid {
		diffs = append(diffs, fmt.Sprintf("primary gid %d (want %d)", u.GID, o.gid))
		argv = append(argv, "--gid", strconv.Itoa(o.gid))
	}
	if changed("shell") && u.Shell != o.shell {
		diffs = append(diffs, fmt.Sprintf("shell %s (want %s)", u.Shell, o.shell))
		argv = append(argv, "--shell", o.shell)
	}
	if changed("comment") && u.Comment != o.comment {
		diffs = append(diffs, fmt.Sprintf("comment %q (want %q)", u.Comment, o.comment))
		argv = append(argv, "--comment", o.comment)
	}
	setHash := changed("password-hash") && strings.TrimPrefix(db.shadow[name].Hash, "!") != o.passwordHash
	if setHash {
		diffs = append(diffs, "password hash")
	}
	member := db.groupsOf(name)
	var kept []string
	switch {
	case changed("groups"):
		var missing []string
		for _, g := range groups {
			if !slices.Contains(member, g) {
				missing = append(missing, g)
			}
		}
		if len(missing) > 0 {
			diffs = append(diffs, "not in groups "+strings.Join(missing, ","))
			argv = append(argv, "--append", "--groups", strings.Join(missing, ","))
		}
	case changed("set-groups"):
		var managed []string
		for _, g := range member {
			if ge := db.group(g); ge != nil && db.managedGID(ge.GID) {
				managed = append(managed, g)
			} else {
				kept = append(kept, g)
			}
		}
		if !sameSet(managed, groups) {
			diffs = append(diffs, fmt.Sprintf("groups %s (want %s)", orNone(managed), orNone(groups)))
			argv = append(argv, "--groups", strings.Join(append(append([]string{}, groups...), kept...), ","))
		}
	}
	before, err := h.loadKeys(u)
	if err != nil {
		return plan.Plan{}, "", fmt.Errorf("%w; nothing was changed", err)
	}
	after := clone(before)
	var newKeys []string
	for _, k := range keys {
		if findKey(after.managed, k) == nil && findKey(after.ownKeys(), k) == nil {
			after.managed = append(after.managed, k)
			newKeys = append(newKeys, "add "+k.describe())
		}
	}
	if len(newKeys) > 0 {
		diffs = append(diffs, fmt.Sprintf("%d key(s) missing", len(newKeys)))
	}
	if len(diffs) == 0 {
		return plan.Plan{}, "user " + name + " already present", nil
	}
	if !o.update {
		return plan.Plan{}, "", fmt.Errorf("user %s exists with other attributes: %s; pass --update to change them (nothing was changed)", name, strings.Join(diffs, ", "))
	}
	var p plan.Plan
	if len(argv) > 0 {
		full := append(append([]string{"usermod"}, argv...), "--", name)
		desc := plan.Quote(full)
		p.Add(strings.Join(desc, " "), func(ctx context.Context) error {
			_, err := h.Sys.Exec.Run(ctx, full...)
			return err
		})
		if len(kept) > 0 {
			p.Note("%s", "kept system groups "+strings.Join(kept, ",")+" (not managed by sera)")
		}
	}
	if setHash {
		p.Add("chpasswd --encrypted (the hash of "+name+" on its standard input)", func(ctx context.Context) error {
			return h.setPasswordHash(ctx, name, o.passwordHash)
		})
	}
	if h.lockedBySera(db, u) && disableNewKeys(before, after) {
		p.Note("%s", name+" is locked: the new keys are added disabled; 'sera user unlock "+name+"' enables them")
	}
	h.planKeys(&p, u, before, after, strings.Join(newKeys, "; "))
	return p, "", nil
}

// guardUserAdd refuses a user add that reaches sudo: a change of any kind
// to an account that can sudo, or one that leaves an account able to
// (by --gid, --groups, --set-groups, or a name or uid sudoers names).
func (h *Host) guardUserAdd(who *sera.KnownClient, c *cobra.Command, o *userAddOptions, name string) error {
	if who == nil {
		return nil
	}
	changed := c.Flags().Changed
	db, err := h.loadAccounts()
	if err != nil {
		return err
	}
	groups := splitAll(o.groups)
	if changed("set-groups") {
		groups = splitAll(o.setGroups)
	}
	u := db.user(name)
	if u == nil {
		a := account{name: name, uid: -1, gid: -1, groups: groups}
		if changed("uid") {
			a.uid = o.uid
		}
		if changed("gid") {
			a.gid = o.gid
		} else {
			a.groups = append(a.groups, name) // useradd's group named like the user
		}
		return h.guardAccount(who, db, "create user "+name, a)
	}
	cur := db.current(u)
	after := cur
	after.groups = slices.Clone(cur.groups)
	if changed("uid") {
		after.uid = o.uid
	}
	if changed("gid") {
		after.gid = o.gid
	}
	if changed("set-groups") {
		after.groups = slices.DeleteFunc(after.groups, func(g string) bool {
			ge := db.group(g)
			return ge != nil && db.managedGID(ge.GID)
		})
	}
	after.groups = append(after.groups, groups...)
	return h.guardAccount(who, db, "update user "+name, cur, after)
}

func (h *Host) planNewUser(db *accountDB, o *userAddOptions, name string, changed func(string) bool, groups []string, keys []*authKey) (plan.Plan, string, error) {
	if changed("uid") {
		if other := db.userByUID(o.uid); other != nil {
			return plan.Plan{}, "", fmt.Errorf("uid %d is already used by %s; nothing was changed", o.uid, other.Name)
		}
	}
	if !changed("gid") && db.group(name) != nil {
		return plan.Plan{}, "", fmt.Errorf("a group called %s already exists; pass --gid to make it the user's primary group (nothing was changed)", name)
	}
	argv := []string{"useradd", "--create-home"}
	if changed("uid") {
		argv = append(argv, "--uid", strconv.Itoa(o.uid))
	}
	if changed("gid") {
		argv = append(argv, "--gid", strconv.Itoa(o.gid))
	}
	if len(groups) > 0 {
		argv = append(argv, "--groups", strings.Join(groups, ","))
	}
	if changed("shell") {
		argv = append(argv, "--shell", o.shell)
	}
	if changed("comment") {
		argv = append(argv, "--comment", o.comment)
	}
	argv = append(argv, "--", name)
	var p plan.Plan
	p.Add(strings.Join(plan.Quote(argv), " "), func(ctx context.Context) error {
		_, err := h.Sys.Exec.Run(ctx, argv...)
		return err
	})
	if changed("password-hash") {
		p.Add("chpasswd --encrypted (the hash of "+name+" on its standard input)", func(ctx context.Context) error {
			return h.setPasswordHash(ctx, name, o.passwordHash)
		})
	}
	if len(keys) > 0 {
		var what []string
		ak := &authorizedKeys{}
		for _, k := range keys {
			if findKey(ak.managed, k) == nil {
				ak.managed = append(ak.managed, k)
				what = append(what, "add "+k.describe())
			}
		}
		// The user exists only once useradd ran: look it up then.
		p.Add(fmt.Sprintf("write ~%s/.ssh/authorized_keys (0600 %s): %s", name, name, strings.Join(what, "; ")), func(ctx context.Context) error {
			db, err := h.loadAccounts()
			if err != nil {
				return err
			}
			u := db.user(name)
			if u == nil {
				return fmt.Errorf("user %s missing after useradd", name)
			}
			before, err := h.loadKeys(u)
			if err != nil {
				return err
			}
			after := clone(before)
			after.managed = ak.managed
			var wp plan.Plan
			h.planKeys(&wp, u, before, after, "")
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

// checkShell requires a shell that exists and, if the host has
// /etc/shells, is listed there.
func (h *Host) checkShell(shell string) error {
	if fi, err := h.Sys.FS.Stat(shell); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("invalid --shell %s: no such program on this host; nothing was changed", shell)
	}
	b, err := h.readFile("/etc/shells")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == shell {
			return nil
		}
	}
	return fmt.Errorf("invalid --shell %s: not listed in /etc/shells; nothing was changed", shell)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}

// lockRecord remembers what "user lock" changed, so that "user unlock"
// reverses exactly that and nothing else.
type lockRecord struct {
	// PasswordLocked is true if sera locked the password (it was not
	// locked before).
	PasswordLocked bool `json:"password_locked"`
	// ExpiresBefore is the account's expiry before the lock (days since
	// 1970, -1 for never).
	ExpiresBefore int `json:"expires_before"`
}

func (h *Host) lockRecordPath(name string) string {
	state := h.Sys.State
	if state == "" {
		state = h.Sys.Path("/var/lib/sera")
	}
	return filepath.Join(state, "locks", name+".json")
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
		Args:    usageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	if !lock {
		c.Use, c.Short, c.Long = "unlock NAME", "Reverse 'user lock'", "Reverse exactly what 'user lock' did: password, expiry and keys as they were."
	}
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		unlock, err := h.lockAccounts()
		if err != nil {
			return err
		}
		defer unlock()
		db, err := h.loadAccounts()
		if err != nil {
			return err
		}
		u, err := db.manageableUser(args[0])
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		if !lock {
			// Unlocking lets someone log in again: as an account that
			// can sudo, that is a way to root.
			if err := h.guardAccount(t.caller, db, "unlock user "+u.Name, db.current(u)); err != nil {
				return err
			}
		}
		var p plan.Plan
		var noChange string
		if lock {
			p, err = h.planLock(ctx, db, u)
			noChange = "user " + u.Name + " already locked"
		} else {
			p, err = h.planUnlock(db, u)
			noChange = "user " + u.Name + " is not locked"
		}
		if err != nil {
			return err
		}
		return p.Execute(ctx, out, dryRun, noChange)
	})
}

func (h *Host) planLock(ctx context.Context, db *accountDB, u *passwdEntry) (plan.Plan, error) {
	sh := db.shadow[u.Name]
	// The user can make ~/.ssh unreadable to sera (a planted link); that
	// must not stop the rest of the lock. The password, the expiry and the
	// sessions are done, then the step for the keys fails and says so.
	before, keysErr := h.loadKeys(u)
	var p plan.Plan
	recPath := h.lockRecordPath(u.Name)
	if _, err := os.Lstat(recPath); errors.Is(err, fs.ErrNotExist) && (!sh.Locked() || sh.Expires != expiredDay) {
		rec := lockRecord{PasswordLocked: !sh.Locked(), ExpiresBefore: sh.Expires}
		p.Add("record the state to restore on unlock in "+recPath, func(context.Context) error {
			b, _ := json.Marshal(rec)
			if err := safefile.MkdirPrivate(filepath.Dir(recPath)); err != nil {
				return err
			}
			return safefile.WriteAtomic(recPath, b, 0o600)
		})
	}
	if !sh.Locked() {
		p.Run(h.Sys.Exec, "usermod", "--lock", "--", u.Name)
	}
	if sh.Expires != expiredDay {
		p.Run(h.Sys.Exec, "usermod", "--expiredate", expiredDate, "--", u.Name)
	}
	if keysErr == nil {
		after := clone(before)
		var what []string
		for _, k := range after.managed {
			if !k.disabled {
				k.disabled = true
				what = append(what, "disable "+k.describe())
			}
		}
		h.planKeys(&p, u, before, after, strings.Join(what, "; "))
	}
	if n := h.countProcesses(u.UID); n > 0 {
		p.Add(fmt.Sprintf("end the %d running process(es) of %s: pkill --signal KILL --uid %d", n, u.Name, u.UID), func(ctx context.Context) error {
			return h.killUser(ctx, u.UID)
		})
	}
	if keysErr != nil {
		p.Add(fmt.Sprintf("disable the keys sera manages for %s (cannot: %v)", u.Name, keysErr), func(context.Context) error {
			return errors.New("the keys were not disabled")
		})
	}
	return p, nil
}

func (h *Host) planUnlock(db *accountDB, u *passwdEntry) (plan.Plan, error) {
	sh := db.shadow[u.Name]
	recPath := h.lockRecordPath(u.Name)
	// Without a record (lost, or locked by hand), a locked password is
	// taken for sera's only on an account expired as lock expires it: a
	// password locked on an account sera did not lock stays locked.
	rec := lockRecord{PasswordLocked: sh.Locked() && len(sh.Hash) > 2 && sh.Expires == expiredDay, ExpiresBefore: -1}
	b, err := safefile.ReadNoFollow(recPath)
	hasRec := err == nil
	if hasRec {
		if err := json.Unmarshal(b, &rec); err != nil {
			return plan.Plan{}, fmt.Errorf("failed to read %s: %w; nothing was changed", recPath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return plan.Plan{}, fmt.Errorf("%w; nothing was changed", err)
	}
	before, err := h.loadKeys(u)
	if err != nil {
		return plan.Plan{}, fmt.Errorf("%w; nothing was changed", err)
	}
	var p plan.Plan
	if rec.PasswordLocked && sh.Locked() {
		p.Run(h.Sys.Exec, "usermod", "--unlock", "--", u.Name)
	}
	if sh.Expires == expiredDay && rec.ExpiresBefore != expiredDay {
		date := ""
		if rec.ExpiresBefore >= 0 {
			date = time.Unix(int64(rec.ExpiresBefore)*86400, 0).UTC().Format("2006-01-02")
		}
		p.Run(h.Sys.Exec, "usermod", "--expiredate", date, "--", u.Name)
	}
	after := clone(before)
	var what []string
	for _, k := range after.managed {
		if k.disabled {
			k.disabled = false
			what = append(what, "enable "+k.describe())
		}
	}
	h.planKeys(&p, u, before, after, strings.Join(what, "; "))
	if hasRec {
		p.Add("remove "+recPath, func(context.Context) error { return os.Remove(recPath) })
	}
	return p, nil
}

// lockedBySera reports whether u is locked by 'user lock' (expired the
// way lock expires, with lock's record): keys added meanwhile must not
// open the account.
func (h *Host) lockedBySera(db *accountDB, u *passwdEntry) bool {
	if db.shadow[u.Name].Expires != expiredDay {
		return false
	}
	_, err := os.Lstat(h.lockRecordPath(u.Name))
	return err == nil
}

// disableNewKeys disables the managed keys of after that before did not
// have, and reports whether there were any.
func disableNewKeys(before, after *authorizedKeys) bool {
	n := 0
	for _, k := range after.managed {
		if findKey(before.managed, k) == nil && !k.disabled {
			k.disabled = true
			n++
		}
	}
	return n > 0
}

// countProcesses counts the processes running as uid.
func (h *Host) countProcesses(uid int) int {
	ents, err := h.Sys.FS.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.Sys.Path("/proc"), e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
				if f[1] == strconv.Itoa(uid) {
					n++
				}
				break
			}
		}
	}
	return n
}

// killUser ends every process of uid. pkill's status 1 means none was
// left, which is the goal.
func (h *Host) killUser(ctx context.Context, uid int) error {
	_, err := h.Sys.Exec.Run(ctx, "pkill", "--signal", "KILL", "--uid", strconv.Itoa(uid))
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil
	}
	return err
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
		Args:    usageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	c.Flags().BoolVar(&keepHome, "keep-home", false, "leave the home directory in place")
	addDryRun(c, &dryRun)
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		unlock, err := h.lockAccounts()
		if err != nil {
			return err
		}
		defer unlock()
		db, err := h.loadAccounts()
		if err != nil {
			return err
		}
		name := args[0]
		if db.user(name) == nil {
			return (&plan.Plan{}).Execute(ctx, out, dryRun, "user "+name+" already absent")
		}
		u, err := db.manageableUser(name)
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		var p plan.Plan
		if n := h.countProcesses(u.UID); n > 0 {
			p.Add(fmt.Sprintf("end the %d running process(es) of %s: pkill --signal KILL --uid %d", n, u.Name, u.UID), func(ctx context.Context) error {
				return h.killUser(ctx, u.UID)
			})
		}
		argv := []string{"userdel", "--", name}
		if !keepHome {
			argv = []string{"userdel", "--remove", "--", name}
			fi, err := h.Sys.FS.Lstat(u.Home)
			switch {
			case err == nil && fi.IsDir():
				h.planArchive(&p, u)
			case err == nil:
				// userdel --remove would delete what a link points
				// to, and it would not be archived.
				return fmt.Errorf("refusing to delete the home %s of %s: it is not a directory (%s), so it cannot be archived; nothing was changed (--keep-home deletes only the account)",
					u.Home, name, fi.Mode().Type())
			case !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("failed to check the home %s: %w; nothing was changed", u.Home, err)
			}
		}
		p.Run(h.Sys.Exec, argv...)
		// A later account of the same name must not be unlocked from this
		// one's record.
		rec := h.lockRecordPath(name)
		if _, err := os.Lstat(rec); err == nil {
			p.Add("remove "+rec+", the lock record of the deleted user", func(context.Context) error { return os.Remove(rec) })
		}
		return p.Execute(ctx, out, dryRun, "")
	})
}

// planArchive adds the archive of u's home: a gzipped tar in a 0700
// directory, mode 0600, so it is root's alone from the first byte.
func (h *Host) planArchive(p *plan.Plan, u *passwdEntry) {
	dir := filepath.Join(h.Sys.State, "archive")
	now := h.Sys.Now()
	archive := filepath.Join(dir, fmt.Sprintf("%s-%s.tar.gz", u.Name, now.UTC().Format("20060102T150405Z")))
	argv := []string{"tar", "--create", "--gzip", "--file", archive, "--directory", u.Home, "--", "."}
	p.Add("archive "+u.Home+": "+strings.Join(plan.Quote(argv), " "), func(ctx context.Context) error {
		if err := safefile.MkdirPrivate(dir); err != nil {
			return err
		}
		f, err := os.OpenFile(archive, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("failed to create %s: %w", archive, err)
		}
		f.Close()
		if _, err := h.Sys.Exec.Run(ctx, argv...); err != nil {
			os.Remove(archive)
			return err
		}
		return os.Chmod(archive, 0o600)
	})
}

// userInfo is what user list and user show report.
type userInfo struct {
	Name    string   `json:"name"`
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	Comment string   `json:"comment,omitempty"`
	Home    string   `json:"home"`
	Shell   string   `json:"shell"`
	Groups  []string `json:"groups"`
	Keys    []string `json:"keys"`
	Locked  bool     `json:"password_locked"`
	Expired bool     `json:"expired"`
}

func (h *Host) userInfo(db *accountDB, u *passwdEntry) userInfo {
	sh := db.shadow[u.Name]
	info := userInfo{Name: u.Name, UID: u.UID, GID: u.GID, Comment: u.Comment, Home: u.Home, Shell: u.Shell,
		Groups: nonNil(db.groupsOf(u.Name)), Keys: []string{}, Locked: sh.Locked(),
		Expired: sh.Expires >= 0 && int64(sh.Expires)*86400 <= h.Sys.Now().Unix()}
	if ak, err := h.loadKeys(u); err == nil {
		for _, k := range append(slices.Clone(ak.managed), ak.ownKeys()...) {
			info.Keys = append(info.Keys, k.fingerprint())
		}
	}
	return info
}

func (i userInfo) state() string {
	var s []string
	if i.Locked {
		s = append(s, "password-locked")
	}
	if i.Expired {
		s = append(s, "expired")
	}
	if len(s) == 0 {
		return "active"
	}
	return strings.Join(s, ",")
}

func (t *hostTree) userListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List regular users with their groups, keys and state",
		Args:  usageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per user")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		db, err := h.loadAccounts()
		if err != nil {
			return err
		}
		for i := range db.users {
			u := &db.users[i]
			if !db.managedUID(u.UID) {
				continue
			}
			info := h.userInfo(db, u)
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			fmt.Fprintf(out, "%-16s %6d  %-16s %-24s %d key(s)\n", info.Name, info.UID, info.state(), orNone(info.Groups), len(info.Keys))
		}
		return nil
	})
}

func (t *hostTree) userShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "show NAME",
		Short:   "Show one user",
		Args:    usageArgs(cobra.ExactArgs(1)),
		PreRunE: userArg,
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		db, u, err := h.loadUser(args[0])
		if err != nil {
			return err
		}
		info := h.userInfo(db, u)
		if asJSON {
			return json.NewEncoder(out).Encode(info)
		}
		fmt.Fprintf(out, "name     %s\nuid      %d\ngid      %d\n", info.Name, info.UID, info.GID)
		if info.Comment != "" {
			fmt.Fprintf(out, "comment  %s\n", info.Comment)
		}
		fmt.Fprintf(out, "home     %s\nshell    %s\ngroups   %s\nstate    %s\n", info.Home, info.Shell, orNone(info.Groups), info.state())
		for _, k := range info.Keys {
			fmt.Fprintf(out, "key      %s\n", k)
		}
		return nil
	})
}
