package sera

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// SplitList splits a comma-separated list, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`) })

// MaxNameLen keeps "PREFIX-w-NAME" within SQS's 80-character queue names.
const MaxNameLen = 63

// CheckName validates a watcher, client or group name: it becomes part of
// queue and topic names, so it is limited to what SQS and SNS accept.

func CheckName(s string) error {
	if len(s) > MaxNameLen || !nameRE().MatchString(s) {
		return fmt.Errorf("%q is not a valid name: use letters, digits, '-' and '_', starting with a letter or digit, at most %d characters", s, MaxNameLen)
	}
	return nil
}

// CheckGroups validates a comma-separated list of group names.
func CheckGroups(s string) error {
	for _, g := range SplitList(s) {
		if err := CheckName(g); err != nil {
			return err
		}
	}
	return nil
}
