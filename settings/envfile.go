package settings

import (
	"fmt"
	"github.com/sera-dev/sera/safefile"
	"strings"
)

// EnvFile is a settings file of KEY=VALUE lines that systemd's
// EnvironmentFile= reads too. Comments, blank lines and the order of keys
// are kept when it is rewritten.
type EnvFile struct {
	lines []string
}

// ReadEnvFile reads path. A missing file gives an empty EnvFile and an
// error wrapping os.ErrNotExist.
func ReadEnvFile(path string) (*EnvFile, error) {
	b, err := safefile.ReadNoFollow(path)
	if err != nil {
		return &EnvFile{}, err
	}
	return ParseEnvFile(b), nil
}

// ParseEnvFile parses the contents of an env file.
func ParseEnvFile(b []byte) *EnvFile {
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return &EnvFile{}
	}
	return &EnvFile{lines: strings.Split(s, "\n")}
}

func parseEnvLine(line string) (key, value string, ok bool) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' || line[0] == ';' {
		return "", "", false
	}
	line = strings.TrimPrefix(line, "export ")
	key, value, ok = strings.Cut(line, "=")
	if !ok {
		return "", "", false
	}
	return strings.TrimSpace(key), unquote(strings.TrimSpace(value)), true
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1]
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(v)-1; i++ {
			if v[i] == '\\' && i+1 < len(v)-1 {
				i++
			}
			b.WriteByte(v[i])
		}
		return b.String()
	}
	return v
}

// quote writes v so that both ParseEnvFile and systemd read it back as v.
func quote(v string) string {
	// Quoted too: leading or trailing white space of any kind, which
	// parseEnvLine trims from an unquoted value ("\v", U+00A0).
	if v != "" && !strings.ContainsAny(v, " \t\"'\\#;$`") && strings.TrimSpace(v) == v {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(v) + `"`
}

// Get returns the last value set for key, as systemd would use it.
func (f *EnvFile) Get(key string) (string, bool) {
	val, found := "", false
	for _, l := range f.lines {
		if k, v, ok := parseEnvLine(l); ok && k == key {
			val, found = v, true
		}
	}
	return val, found
}

// Set replaces key's line (or appends one) and reports whether the file
// changed.
func (f *EnvFile) Set(key, value string) bool {
	if strings.ContainsAny(value, "\n\r\x00") {
		// Check callers never pass these; a line break would
		// smuggle a second setting into the file.
		panic("sera: env value contains a line break")
	}
	newLine := key + "=" + quote(value)
	idx := -1
	for i, l := range f.lines {
		if k, _, ok := parseEnvLine(l); ok && k == key {
			idx = i
		}
	}
	if idx < 0 {
		f.lines = append(f.lines, newLine)
		return true
	}
	if cur, _ := f.Get(key); cur == value && !f.hasDuplicate(key) {
		return false
	}
	// Drop earlier duplicates so the file says one thing.
	var out []string
	for i, l := range f.lines {
		if k, _, ok := parseEnvLine(l); ok && k == key && i != idx {
			continue
		}
		if i == idx {
			l = newLine
		}
		out = append(out, l)
	}
	f.lines = out
	return true
}

// Unset removes key and reports whether it was there.
func (f *EnvFile) Unset(key string) bool {
	var out []string
	for _, l := range f.lines {
		if k, _, ok := parseEnvLine(l); ok && k == key {
			continue
		}
		out = append(out, l)
	}
	changed := len(out) != len(f.lines)
	f.lines = out
	return changed
}

func (f *EnvFile) hasDuplicate(key string) bool {
	n := 0
	for _, l := range f.lines {
		if k, _, ok := parseEnvLine(l); ok && k == key {
			n++
		}
	}
	return n > 1
}

// Bytes returns the file's contents.
func (f *EnvFile) Bytes() []byte {
	if len(f.lines) == 0 {
		return nil
	}
	return []byte(strings.Join(f.lines, "\n") + "\n")
}

// Write stores the file at path atomically, mode 0600 (it may hold an AWS
// secret key).
func (f *EnvFile) Write(path string) error {
	if err := safefile.WriteAtomic(path, f.Bytes(), 0o600); err != nil {
		return fmt.Errorf("failed to save settings: %w", err)
	}
	return nil
}
