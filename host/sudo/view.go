// Package sudo is sudo's side of a host: the drop-ins sera writes in
// /etc/sudoers.d (one per group, checked with visudo before it is live)
// and a View of who sudoers grants anything to, read the way sudo reads
// it and over-approximated where sera cannot be sure.
package sudo

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/sera-dev/sera/host"
)

var commaSpaceRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`\s*,\s*`) })

// View is who sudoers grants anything to: a grant of /usr/bin/true
// counts as much as ALL, as sera cannot tell what a command reaches. Each
// map gives the file that names the user, uid, group or gid.
type View struct {
	// Everyone is set when a rule names ALL users or something sera
	// cannot resolve: every account is privileged.
	Everyone string
	Users    map[string]string
	UIDs     map[int]string
	Groups   map[string]string
	GIDs     map[int]string
	readDirs map[string]bool
}

// NewView is an empty view: nobody is granted anything.
func NewView() *View {
	return &View{Users: map[string]string{}, UIDs: map[int]string{}, Groups: map[string]string{}, GIDs: map[int]string{}}
}

// MaxDepth bounds include nesting as sudo does (it allows 128; a loop is
// the usual cause of more).
const MaxDepth = 8

// ReadView reads /etc/sudoers and what it includes, as sudo would, and
// where sudo takes its policy from (sudo.conf, nsswitch.conf).
func ReadView(sys *host.System) (*View, error) {
	v := NewView()
	// Where sudo takes its policy from: sudo.conf may name another
	// sudoers file or another policy plugin, nsswitch.conf other sources
	// (LDAP, SSSD). What sera cannot read makes everyone privileged.
	file := "/etc/sudoers"
	if b, err := sys.FS.ReadFile("/etc/sudo.conf"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(stripComment(strings.TrimSpace(line)))
			if len(f) < 3 || f[0] != "Plugin" {
				continue
			}
			if f[2] != "sudoers.so" && !strings.HasSuffix(f[2], "/sudoers.so") {
				if f[1] == "sudoers_policy" || strings.Contains(f[1], "policy") {
					v.Everyone = "/etc/sudo.conf (a policy plugin sera cannot read: " + f[2] + ")"
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
	if b, err := sys.FS.ReadFile("/etc/nsswitch.conf"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			db, srcs, ok := strings.Cut(stripComment(strings.TrimSpace(line)), ":")
			if !ok || strings.TrimSpace(db) != "sudoers" {
				continue
			}
			for _, src := range strings.Fields(srcs) {
				if src != "files" && !strings.HasPrefix(src, "[") {
					v.Everyone = "/etc/nsswitch.conf (sudoers also from " + src + ")"
				}
			}
		}
	}
	if err := v.readFile(sys, file, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("failed to read sudoers: %w", err)
	}
	// sera writes its drop-ins there: they count even where sudoers does
	// not include the directory (yet).
	if !v.readDirs["/etc/sudoers.d"] {
		v.readDir(sys, "/etc/sudoers.d", 0)
	}
	return v, nil
}

func (v *View) readFile(sys *host.System, name string, depth int) error {
	if depth > MaxDepth {
		v.Everyone = name + " (includes nested too deep)"
		return nil
	}
	b, err := sys.FS.ReadFile(name)
	if err != nil {
		return err
	}
	v.Parse(sys, name, string(b), depth)
	return nil
}

func (v *View) readDir(sys *host.System, dir string, depth int) {
	if v.readDirs == nil {
		v.readDirs = map[string]bool{}
	}
	v.readDirs[filepath.Clean(dir)] = true
	entries, err := sys.FS.ReadDir(dir)
	if err != nil {
		return // sudo skips a missing or unreadable includedir
	}
	for _, e := range entries {
		// sudo skips names with a '.' or ending in '~'.
		if n := e.Name(); strings.Contains(n, ".") || strings.HasSuffix(n, "~") || e.IsDir() {
			continue
		}
		_ = v.readFile(sys, filepath.Join(dir, e.Name()), depth+1)
	}
}

// Parse reads the rules of one sudoers file, name, following its
// includes on sys.
func (v *View) Parse(sys *host.System, name, text string, depth int) {
	aliases := map[string][]string{}
	text = strings.ReplaceAll(text, "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if inc, arg, ok := includeLine(line); ok {
			if strings.Contains(arg, "%") {
				v.Everyone = name + " (an include sera cannot resolve)"
				continue
			}
			if !filepath.IsAbs(arg) {
				arg = filepath.Join(filepath.Dir(name), arg)
			}
			if inc == "dir" {
				v.readDir(sys, arg, depth)
			} else {
				_ = v.readFile(sys, arg, depth+1)
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
		who = commaSpaceRE().ReplaceAllString(strings.TrimSpace(who), ",")
		users, _, _ := strings.Cut(strings.ReplaceAll(who, "\t", " "), " ")
		for _, tok := range strings.Split(users, ",") {
			v.add(name, tok, aliases, 0)
		}
	}
}

func (v *View) add(file, tok string, aliases map[string][]string, depth int) {
	tok = strings.TrimLeft(tok, "!")
	switch {
	case tok == "":
	case tok == "ALL":
		v.Everyone = file + " (ALL)"
	case strings.HasPrefix(tok, "%#"):
		if n, err := strconv.Atoi(tok[2:]); err == nil {
			v.GIDs[n] = file
		} else {
			v.Everyone = file + " (" + tok + ")"
		}
	case strings.HasPrefix(tok, "%:"), strings.HasPrefix(tok, "+"):
		v.Everyone = file + " (" + tok + ")"
	case strings.HasPrefix(tok, "%"):
		v.Groups[strings.Trim(tok[1:], `"`)] = file
	case strings.HasPrefix(tok, "#"):
		if n, err := strconv.Atoi(tok[1:]); err == nil {
			v.UIDs[n] = file
		}
	default:
		if members, ok := aliases[tok]; ok && depth < MaxDepth {
			for _, m := range members {
				v.add(file, m, aliases, depth+1)
			}
			return
		}
		v.Users[strings.Trim(tok, `"`)] = file
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
