package commands

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
)

// The account database is read from the files; it is only ever changed
// through shadow-utils (useradd, usermod, groupadd, …), never by hand.

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	Name    string
	UID     int
	GID     int
	Comment string
	Home    string
	Shell   string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	Name    string
	GID     int
	Members []string
}

// shadowEntry is what sera reads of /etc/shadow: whether the password is
// locked and when the account expires (days since 1970; -1 never).
type shadowEntry struct {
	Hash    string
	Expires int
}

// Locked reports a locked password: usermod -L prefixes the hash with '!'.
func (s shadowEntry) Locked() bool { return strings.HasPrefix(s.Hash, "!") }

// accountDB is a snapshot of a host's users and groups.
type accountDB struct {
	users  []passwdEntry
	groups []groupEntry
	shadow map[string]shadowEntry
	defs   loginDefs
}

// loginDefs are the id ranges of /etc/login.defs sera enforces.
type loginDefs struct {
	UIDMin, UIDMax, GIDMin, GIDMax int
}

// Debian's defaults, used where login.defs does not say.
var defaultLoginDefs = loginDefs{UIDMin: 1000, UIDMax: 60000, GIDMin: 1000, GIDMax: 60000}

func (h *Host) readFile(p string) ([]byte, error) { return h.Sys.FS.ReadFile(p) }

// loadAccounts reads the account database of h.
func (h *Host) loadAccounts() (*accountDB, error) {
	db := &accountDB{shadow: map[string]shadowEntry{}, defs: defaultLoginDefs}
	b, err := h.readFile("/etc/passwd")
	if err != nil {
		return nil, fmt.Errorf("failed to read users: %w", err)
	}
	for _, f := range colonLines(b, 7) {
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		db.users = append(db.users, passwdEntry{Name: f[0], UID: uid, GID: gid, Comment: f[4], Home: f[5], Shell: f[6]})
	}
	b, err = h.readFile("/etc/group")
	if err != nil {
		return nil, fmt.Errorf("failed to read groups: %w", err)
	}
	for _, f := range colonLines(b, 4) {
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		db.groups = append(db.groups, groupEntry{Name: f[0], GID: gid, Members: sera.SplitList(f[3])})
	}
	b, err = h.readFile("/etc/shadow")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("failed to read shadow: %w", err)
	}
	for _, f := range colonLines(b, 8) {
		exp := -1
		if f[7] != "" {
			if n, err := strconv.Atoi(f[7]); err == nil {
				exp = n
			}
		}
		db.shadow[f[0]] = shadowEntry{Hash: f[1], Expires: exp}
	}
	if b, err := h.readFile("/etc/login.defs"); err == nil {
		db.defs = parseLoginDefs(b)
	}
	return db, nil
}

// colonLines splits colon-separated lines with at least n fields.
func colonLines(b []byte, n int) [][]string {
	var out [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) >= n {
			out = append(out, f)
		}
	}
	return out
}

func parseLoginDefs(b []byte) loginDefs {
	d := defaultLoginDefs
	set := map[string]*int{"UID_MIN": &d.UIDMin, "UID_MAX": &d.UIDMax, "GID_MIN": &d.GIDMin, "GID_MAX": &d.GIDMax}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if p, ok := set[f[0]]; ok {
			if n, err := strconv.Atoi(f[1]); err == nil && n > 0 {
				*p = n
			}
		}
	}
	return d
}

func (db *accountDB) user(name string) *passwdEntry {
	i := slices.IndexFunc(db.users, func(u passwdEntry) bool { return u.Name == name })
	if i < 0 {
		return nil
	}
	return &db.users[i]
}

func (db *accountDB) userByUID(uid int) *passwdEntry {
	i := slices.IndexFunc(db.users, func(u passwdEntry) bool { return u.UID == uid })
	if i < 0 {
		return nil
	}
	return &db.users[i]
}

func (db *accountDB) group(name string) *groupEntry {
	i := slices.IndexFunc(db.groups, func(g groupEntry) bool { return g.Name == name })
	if i < 0 {
		return nil
	}
	return &db.groups[i]
}

func (db *accountDB) groupByGID(gid int) *groupEntry {
	i := slices.IndexFunc(db.groups, func(g groupEntry) bool { return g.GID == gid })
	if i < 0 {
		return nil
	}
	return &db.groups[i]
}

// groupsOf lists the supplementary groups user is a member of.
func (db *accountDB) groupsOf(user string) []string {
	var out []string
	for _, g := range db.groups {
		if slices.Contains(g.Members, user) {
			out = append(out, g.Name)
		}
	}
	return out
}

// managedUID reports whether uid is in the range sera may manage: regular
// accounts only, never root or a system account.
func (db *accountDB) managedUID(uid int) bool {
	return uid >= db.defs.UIDMin && uid <= db.defs.UIDMax && uid != 0
}

func (db *accountDB) managedGID(gid int) bool {
	return gid >= db.defs.GIDMin && gid <= db.defs.GIDMax && gid != 0
}

// nameRE is Debian's NAME_REGEX for user and group names.
var nameRE = regexp.MustCompile(`^[a-z][-a-z0-9_]*$`)

// maxAccountName is the longest user or group name sera accepts, in bytes.
const maxAccountName = 32

// checkAccountName validates a user or group name before anything reads or
// changes the host.
func checkAccountName(kind, name string) error {
	if name == "root" {
		return usageErr("refusing %s %q: root is never managed by sera", kind, name)
	}
	if len(name) > maxAccountName {
		return usageErr("invalid %s name %q: longer than %d bytes", kind, name, maxAccountName)
	}
	if !nameRE.MatchString(name) {
		return usageErr("invalid %s name %q: use lower-case letters, digits, '-' and '_', starting with a letter (Debian's NAME_REGEX)", kind, name)
	}
	return nil
}

// userArg is the PreRunE of commands whose first argument is a user name.
func userArg(_ *cobra.Command, args []string) error { return checkAccountName("user", args[0]) }

// loadUser loads the account database and the manageable user name.
func (h *Host) loadUser(name string) (*accountDB, *passwdEntry, error) {
	db, err := h.loadAccounts()
	if err != nil {
		return nil, nil, err
	}
	u, err := db.manageableUser(name)
	if err != nil {
		return nil, nil, err
	}
	return db, u, nil
}

// manageableUser returns user name if sera may manage it: it exists and
// is a regular account.
func (db *accountDB) manageableUser(name string) (*passwdEntry, error) {
	u := db.user(name)
	if u == nil {
		return nil, fmt.Errorf("no user %s on this host", name)
	}
	if !db.managedUID(u.UID) {
		return nil, fmt.Errorf("refusing user %s: uid %d is outside the range sera manages (%d..%d); system accounts and root are left alone",
			name, u.UID, db.defs.UIDMin, db.defs.UIDMax)
	}
	return u, nil
}

// manageableGroup is manageableUser for groups.
func (db *accountDB) manageableGroup(name string) (*groupEntry, error) {
	g := db.group(name)
	if g == nil {
		return nil, fmt.Errorf("no group %s on this host", name)
	}
	if !db.managedGID(g.GID) {
		return nil, fmt.Errorf("refusing group %s: gid %d is outside the range sera manages (%d..%d); system groups are left alone",
			name, g.GID, db.defs.GIDMin, db.defs.GIDMax)
	}
	return g, nil
}
