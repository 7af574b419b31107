// Package accounts is a host's Unix users and groups as sera manages
// them: the account database read from /etc/passwd, /etc/group,
// /etc/shadow and /etc/login.defs, and plans that change it only through
// shadow-utils (useradd, usermod, userdel, groupadd, groupdel, gpasswd),
// never by editing the files. Only regular accounts (UID_MIN..UID_MAX,
// GID_MIN..GID_MAX) are ever managed; root and system accounts are
// refused.
package accounts

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
	"sync"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sshkeys"
)

// User is one line of /etc/passwd.
type User struct {
	Name    string
	UID     int
	GID     int
	Comment string
	Home    string
	Shell   string
}

// Owner is u as the owner of its SSH keys.
func (u *User) Owner() sshkeys.Owner {
	return sshkeys.Owner{Name: u.Name, UID: u.UID, GID: u.GID, Home: u.Home}
}

// Group is one line of /etc/group.
type Group struct {
	Name    string
	GID     int
	Members []string
}

// Shadow is what sera reads of /etc/shadow: whether the password is
// locked and when the account expires (days since 1970; -1 never).
type Shadow struct {
	Hash    string
	Expires int
}

// Locked reports a locked password: usermod -L prefixes the hash with '!'.
func (s Shadow) Locked() bool { return strings.HasPrefix(s.Hash, "!") }

// DB is a snapshot of a host's users and groups.
type DB struct {
	Users  []User
	Groups []Group
	Shadow map[string]Shadow
	Defs   LoginDefs
}

// LoginDefs are the id ranges of /etc/login.defs sera enforces.
type LoginDefs struct {
	UIDMin, UIDMax, GIDMin, GIDMax int
}

// DefaultLoginDefs are Debian's, used where login.defs does not say, and
// by the client, which checks ids before it knows the host.
var DefaultLoginDefs = LoginDefs{UIDMin: 1000, UIDMax: 60000, GIDMin: 1000, GIDMax: 60000}

// Load reads the account database of the host.
func Load(sys *host.System) (*DB, error) {
	db := &DB{Shadow: map[string]Shadow{}, Defs: DefaultLoginDefs}
	b, err := sys.FS.ReadFile("/etc/passwd")
	if err != nil {
		return nil, fmt.Errorf("failed to read users: %w", err)
	}
	for _, f := range colonLines(b, 7) {
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		db.Users = append(db.Users, User{Name: f[0], UID: uid, GID: gid, Comment: f[4], Home: f[5], Shell: f[6]})
	}
	b, err = sys.FS.ReadFile("/etc/group")
	if err != nil {
		return nil, fmt.Errorf("failed to read groups: %w", err)
	}
	for _, f := range colonLines(b, 4) {
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		db.Groups = append(db.Groups, Group{Name: f[0], GID: gid, Members: splitList(f[3])})
	}
	b, err = sys.FS.ReadFile("/etc/shadow")
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
		db.Shadow[f[0]] = Shadow{Hash: f[1], Expires: exp}
	}
	if b, err := sys.FS.ReadFile("/etc/login.defs"); err == nil {
		db.Defs = parseLoginDefs(b)
	}
	return db, nil
}

// splitList splits a comma-separated member list, dropping empty names.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
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

func parseLoginDefs(b []byte) LoginDefs {
	d := DefaultLoginDefs
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

// User returns the user called name, or nil.
func (db *DB) User(name string) *User {
	i := slices.IndexFunc(db.Users, func(u User) bool { return u.Name == name })
	if i < 0 {
		return nil
	}
	return &db.Users[i]
}

// UserByUID returns the first user with uid, or nil.
func (db *DB) UserByUID(uid int) *User {
	i := slices.IndexFunc(db.Users, func(u User) bool { return u.UID == uid })
	if i < 0 {
		return nil
	}
	return &db.Users[i]
}

// Group returns the group called name, or nil.
func (db *DB) Group(name string) *Group {
	i := slices.IndexFunc(db.Groups, func(g Group) bool { return g.Name == name })
	if i < 0 {
		return nil
	}
	return &db.Groups[i]
}

// GroupByGID returns the first group with gid, or nil.
func (db *DB) GroupByGID(gid int) *Group {
	i := slices.IndexFunc(db.Groups, func(g Group) bool { return g.GID == gid })
	if i < 0 {
		return nil
	}
	return &db.Groups[i]
}

// GroupsOf lists the supplementary groups user is a member of.
func (db *DB) GroupsOf(user string) []string {
	var out []string
	for _, g := range db.Groups {
		if slices.Contains(g.Members, user) {
			out = append(out, g.Name)
		}
	}
	return out
}

// ManagedUID reports whether uid is in the range sera may manage: regular
// accounts only, never root or a system account.
func (db *DB) ManagedUID(uid int) bool {
	return uid >= db.Defs.UIDMin && uid <= db.Defs.UIDMax && uid != 0
}

// ManagedGID is ManagedUID for groups.
func (db *DB) ManagedGID(gid int) bool {
	return gid >= db.Defs.GIDMin && gid <= db.Defs.GIDMax && gid != 0
}

// NameRE is Debian's NAME_REGEX for user and group names, compiled on
// first use: package initialisation is start-up time for every process.
var NameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][-a-z0-9_]*$`) })

// MaxName is the longest user or group name sera accepts, in bytes.
const MaxName = 32

// ErrInvalidName is wrapped by CheckName's errors: the caller's input is
// wrong, not the host.
var ErrInvalidName = errors.New("invalid account name")

type nameError struct{ msg string }

func (e *nameError) Error() string        { return e.msg }
func (e *nameError) Is(target error) bool { return target == ErrInvalidName }

// CheckName validates a user or group name (kind says which) before
// anything reads or changes the host.
func CheckName(kind, name string) error {
	if name == "root" {
		return &nameError{fmt.Sprintf("refusing %s %q: root is never managed by sera", kind, name)}
	}
	if len(name) > MaxName {
		return &nameError{fmt.Sprintf("invalid %s name %q: longer than %d bytes", kind, name, MaxName)}
	}
	if !NameRE().MatchString(name) {
		return &nameError{fmt.Sprintf("invalid %s name %q: use lower-case letters, digits, '-' and '_', starting with a letter (Debian's NAME_REGEX)", kind, name)}
	}
	return nil
}

// ManageableUser returns user name if sera may manage it: it exists and
// is a regular account.
func (db *DB) ManageableUser(name string) (*User, error) {
	u := db.User(name)
	if u == nil {
		return nil, fmt.Errorf("no user %s on this host", name)
	}
	if !db.ManagedUID(u.UID) {
		return nil, fmt.Errorf("refusing user %s: uid %d is outside the range sera manages (%d..%d); system accounts and root are left alone",
			name, u.UID, db.Defs.UIDMin, db.Defs.UIDMax)
	}
	return u, nil
}

// ManageableGroup is ManageableUser for groups.
func (db *DB) ManageableGroup(name string) (*Group, error) {
	g := db.Group(name)
	if g == nil {
		return nil, fmt.Errorf("no group %s on this host", name)
	}
	if !db.ManagedGID(g.GID) {
		return nil, fmt.Errorf("refusing group %s: gid %d is outside the range sera manages (%d..%d); system groups are left alone",
			name, g.GID, db.Defs.GIDMin, db.Defs.GIDMax)
	}
	return g, nil
}

// Account is an account as it is or would be after a change: enough to
// say whether it can sudo.
type Account struct {
	Name   string
	UID    int // -1: not known yet (useradd picks it)
	GID    int // -1: not known yet
	Groups []string
}

// Current is u as it is now.
func (db *DB) Current(u *User) Account {
	return Account{Name: u.Name, UID: u.UID, GID: u.GID, Groups: db.GroupsOf(u.Name)}
}
