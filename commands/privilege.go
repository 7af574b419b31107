package commands

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sera-dev/sera"
)

// An account that can sudo is root. Whoever may log in as it, change its
// keys, password or groups, or put any account into a group that carries
// sudo, may become root; so each of those needs the sudo grant too
// (callerMay "sudo grant"). Who can sudo is read from sudoers the way sudo
// reads it, and over-approximated where sera cannot be sure: a rule it
// cannot resolve (ALL, netgroups, non-Unix groups, %h includes) makes
// every account privileged.

var commaSpaceRE = regexp.MustCompile(`\s*,\s*`)

// rootGroups are system groups whose members are root, or can become it,
// without sudo (raw disks, shadow, container and VM daemons).
// (staff may write /usr/local, ahead of /usr on root's PATH.)
var rootGroups = []string{"root", "sudo", "wheel", "admin", "disk", "shadow", "kmem", "staff", "docker", "lxd", "incus-admin", "libvirt"}

// sudoView is who sudoers grants anything to: a grant of /usr/bin/true
// counts as much as ALL, as sera cannot tell what a command reaches.
type sudoView struct {
	// everyone is set when a rule names ALL users or something sera
	// cannot resolve: every account is privileged.
	everyone string
	users    map[string]string // user name → the file that names it
	uids     map[int]string
	groups   map[string]string
	gids     map[int]string
	readDirs map[string]bool
}

// maxSudoersDepth bounds include nesting as sudo does (it allows 128; a
// loop is the usual cause of more).
const maxSudoersDepth = 8

// readSudoView reads /etc/sudoers and what it includes.
func (h *Host) readSudoView() (*sudoView, error) {
	v := &sudoView{users: map[string]string{}, uids: map[int]string{}, groups: map[string]string{}, gids: map[int]string{}}
	// Where sudo takes its policy from: sudo.conf may name another
	// sudoers file or another policy plugin, nsswitch.conf other sources
	// (LDAP, SSSD). What sera cannot read makes everyone privileged.
	file := "/etc/sudoers"
	if b, err := h.readFile("/etc/sudo.conf"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(stripComment(strings.TrimSpace(line)))
			if len(f) < 3 || f[0] != "Plugin" {
				continue
			}
			if f[2] != "sudoers.so" && !strings.HasSuffix(f[2], "/sudoers.so") {
				if f[1] == "sudoers_policy" || strings.Contains(f[1], "policy") {
					v.everyone = "/etc/sudo.conf (a policy plugin sera cannot read: " + f[2] + ")"
				}
				continue
			}
			for _, opt := range f[3:] {
				if p, ok := strings.CutPrefix(opt, "sudoers_file="); ok {
					file = p
				}
			}
		}
	}
	if b, err := h.readFile("/etc/nsswitch.conf"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			db, srcs, ok := strings.Cut(stripComment(strings.TrimSpace(line)), ":")
			if !ok || strings.TrimSpace(db) != "sudoers" {
				continue
			}
			for _, src := range strings.Fields(srcs) {
				if src != "files" && !strings.HasPrefix(src, "[") {
					v.everyone = "/etc/nsswitch.conf (sudoers also from " + src + ")"
				}
			}
		}
	}
	if err := v.readFile(h, file, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("failed to read sudoers: %w", err)
	}
	// sera writes its drop-ins there: they count even where sudoers does
	// not include the directory (yet).
	if !v.readDirs["/etc/sudoers.d"] {
		v.readDir(h, "/etc/sudoers.d", 0)
	}
	return v, nil
}

func (v *sudoView) readFile(h *Host, name string, depth int) error {
	if depth > maxSudoersDepth {
		v.everyone = name + " (includes nested too deep)"
		return nil
	}
	b, err := h.readFile(name)
	if err != nil {
		return err
	}
	v.parse(h, name, string(b), depth)
	return nil
}

func (v *sudoView) readDir(h *Host, dir string, depth int) {
	if v.readDirs == nil {
		v.readDirs = map[string]bool{}
	}
	v.readDirs[filepath.Clean(dir)] = true
	entries, err := h.Sys.FS.ReadDir(dir)
	if err != nil {
		return // sudo skips a missing or unreadable includedir
	}
	for _, e := range entries {
		// sudo skips names with a '.' or ending in '~'.
		if n := e.Name(); strings.Contains(n, ".") || strings.HasSuffix(n, "~") || e.IsDir() {
			continue
		}
		_ = v.readFile(h, filepath.Join(dir, e.Name()), depth+1)
	}
}

// parse reads one sudoers file's rules.
func (v *sudoView) parse(h *Host, name, text string, depth int) {
	aliases := map[string][]string{}
	text = strings.ReplaceAll(text, "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if inc, arg, ok := includeLine(line); ok {
			if strings.Contains(arg, "%") {
				v.everyone = name + " (an include sera cannot resolve)"
				continue
			}
			if !filepath.IsAbs(arg) {
				arg = filepath.Join(filepath.Dir(name), arg)
			}
			if inc == "dir" {
				v.readDir(h, arg, depth)
			} else {
				_ = v.readFile(h, arg, depth+1)
			}
			continue
		}
		line = stripComment(line)
		if line == "" {
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		switch word {
		case "Defaults", "Host_Alias", "Runas_Alias", "Cmnd_Alias", "Cmd_Alias":
			continue
		case "User_Alias":
			for _, def := range strings.Split(rest, ":") {
				an, members, ok := strings.Cut(def, "=")
				if ok {
					aliases[strings.TrimSpace(an)] = splitSudoList(members)
				}
			}
			continue
		}
		if strings.HasPrefix(word, "Defaults") {
			continue // Defaults:user, Defaults>runas, …
		}
		// A user spec: "USER[, USER…] HOST[, HOST…] = …". The user list
		// is the first field once the blanks around commas are gone.
		who, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		who = commaSpaceRE.ReplaceAllString(strings.TrimSpace(who), ",")
		users, _, _ := strings.Cut(strings.ReplaceAll(who, "\t", " "), " ")
		for _, tok := range strings.Split(users, ",") {
			v.add(name, tok, aliases, 0)
		}
	}
}

func (v *sudoView) add(file, tok string, aliases map[string][]string, depth int) {
	tok = strings.TrimLeft(tok, "!")
	switch {
	case tok == "":
	case tok == "ALL":
		v.everyone = file + " (ALL)"
	case strings.HasPrefix(tok, "%#"):
		if n, err := strconv.Atoi(tok[2:]); err == nil {
			v.gids[n] = file
		} else {
			v.everyone = file + " (" + tok + ")"
		}
	case strings.HasPrefix(tok, "%:"), strings.HasPrefix(tok, "+"):
		v.everyone = file + " (" + tok + ")"
	case strings.HasPrefix(tok, "%"):
		v.groups[strings.Trim(tok[1:], `"`)] = file
	case strings.HasPrefix(tok, "#"):
		if n, err := strconv.Atoi(tok[1:]); err == nil {
			v.uids[n] = file
		}
	default:
		if members, ok := aliases[tok]; ok && depth < maxSudoersDepth {
			for _, m := range members {
				v.add(file, m, aliases, depth+1)
			}
			return
		}
		v.users[strings.Trim(tok, `"`)] = file
	}
}

// includeLine recognizes @include, @includedir and their '#' spellings.
func includeLine(line string) (kind, arg string, ok bool) {
	for _, p := range []string{"@includedir", "#includedir", "@include", "#include"} {
		if rest, found := strings.CutPrefix(line, p); found && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			kind = "file"
			if strings.HasSuffix(p, "dir") {
				kind = "dir"
			}
			return kind, strings.Trim(strings.TrimSpace(rest), `"`), true
		}
	}
	return "", "", false
}

// stripComment drops a '#' comment; "#1000" (a uid) and "%#1000" (a gid)
// are not comments.
func stripComment(line string) string {
	for i := 0; i < len(line); i++ {
		if line[i] != '#' {
			continue
		}
		if i > 0 && line[i-1] == '%' || i+1 < len(line) && line[i+1] >= '0' && line[i+1] <= '9' {
			continue
		}
		return strings.TrimSpace(line[:i])
	}
	return line
}

func splitSudoList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

// account is an account as it is or would be after a change: enough to
// say whether it can sudo.
type account struct {
	name   string
	uid    int // -1: not known yet (useradd picks it)
	gid    int // -1: not known yet
	groups []string
}

// privileged says why a can sudo or is otherwise root, or "" if it cannot.
func (v *sudoView) privileged(db *accountDB, a account) string {
	if v.everyone != "" {
		return "sudoers grants every user something: " + v.everyone
	}
	if f, ok := v.users[a.name]; ok {
		return fmt.Sprintf("%s names user %s", f, a.name)
	}
	if a.uid < 0 {
		for uid, f := range v.uids {
			if db.managedUID(uid) && db.userByUID(uid) == nil {
				return fmt.Sprintf("its uid is not known yet and %s names the free uid %d", f, uid)
			}
		}
	} else if f, ok := v.uids[a.uid]; ok {
		return fmt.Sprintf("%s names uid %d", f, a.uid)
	}
	groups := slices.Clone(a.groups)
	if a.gid >= 0 {
		if f, ok := v.gids[a.gid]; ok || a.gid == 0 {
			return fmt.Sprintf("its primary gid %d carries sudo (%s)", a.gid, orStr(f, "root"))
		}
		if g := db.groupByGID(a.gid); g != nil {
			groups = append(groups, g.Name)
		}
	} else {
		for gid, f := range v.gids {
			if db.managedGID(gid) && db.groupByGID(gid) == nil {
				return fmt.Sprintf("its primary gid is not known yet and %s names the free gid %d", f, gid)
			}
		}
	}
	for _, g := range groups {
		if why := v.groupCarries(db, g); why != "" {
			return fmt.Sprintf("it is in group %s, which %s", g, why)
		}
	}
	// A member of another privileged account's primary group can write
	// what that account leaves group-writable (user private groups):
	// a way into it.
	for _, g := range groups {
		ge := db.group(g)
		if ge == nil {
			continue
		}
		for _, u := range db.users {
			if u.GID == ge.GID && u.Name != a.name && v.privilegedDirect(db, db.current(&u)) {
				return fmt.Sprintf("it is in group %s, the primary group of %s, who can sudo", g, u.Name)
			}
		}
	}
	return ""
}

// privilegedDirect is privileged without the primary-group rule, which
// would otherwise recurse.
func (v *sudoView) privilegedDirect(db *accountDB, a account) bool {
	if v.everyone != "" || v.users[a.name] != "" || v.uids[a.uid] != "" {
		return true
	}
	groups := slices.Clone(a.groups)
	if g := db.groupByGID(a.gid); g != nil {
		groups = append(groups, g.Name)
	}
	if _, ok := v.gids[a.gid]; ok || a.gid == 0 {
		return true
	}
	return slices.ContainsFunc(groups, func(g string) bool { return v.groupCarries(db, g) != "" })
}

// groupCarries says why membership of group g makes an account root, or "".
func (v *sudoView) groupCarries(db *accountDB, g string) string {
	if slices.Contains(rootGroups, g) {
		return "is root-equivalent"
	}
	if f, ok := v.groups[g]; ok {
		return "sudoers grants (" + f + ")"
	}
	if ge := db.group(g); ge != nil {
		if f, ok := v.gids[ge.GID]; ok || ge.GID == 0 {
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

// current is u as it is now.
func (db *accountDB) current(u *passwdEntry) account {
	return account{name: u.Name, uid: u.UID, gid: u.GID, groups: db.groupsOf(u.Name)}
}

// guardSudo refuses a change that reaches an account that can sudo,
// unless the caller may grant sudo itself. what says what the change does
// ("add keys to alice"); why is privileged's reason.
func guardSudo(who *sera.KnownClient, what, why string) error {
	if why == "" {
		return nil
	}
	if err := callerMay(who, "sudo grant"); err != nil {
		return fmt.Errorf("refusing to %s: %s; that needs the sudo grant (%w); nothing was changed", what, why, err)
	}
	return nil
}

// guardAccount is guardSudo for a change to account a (as it is, or as the
// change leaves it): it loads sudoers itself.
func (h *Host) guardAccount(who *sera.KnownClient, db *accountDB, what string, accounts ...account) error {
	if callerMay(who, "sudo grant") == nil {
		return nil
	}
	v, err := h.readSudoView()
	if err != nil {
		// Unsure is privileged.
		return guardSudo(who, what, err.Error())
	}
	for _, a := range accounts {
		if err := guardSudo(who, what, v.privileged(db, a)); err != nil {
			return err
		}
	}
	return nil
}
