package cli

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/transport"
	"github.com/spf13/pflag"
)

// Targets are the selectors of the watchers a command goes to:
// --to names and globs, --group, --all.
type Targets struct {
	To     []string
	Groups []string
	All    bool
}

// Add defines --to, --group and --all on fs, for commands that verb
// the watchers, and returns their names.
func (tf *Targets) Add(fs *pflag.FlagSet, verb string) []string {
	fs.StringSliceVar(&tf.To, "to", nil, verb+" these watchers: names or globs, comma-separated or repeated")
	fs.StringArrayVar(&tf.Groups, "group", nil, verb+" the watchers of this group (repeatable)")
	fs.BoolVar(&tf.All, "all", false, verb+" every known watcher")
	return []string{"to", "group", "all"}
}

// Set reports whether any selector was given.
func (tf *Targets) Set() bool { return len(tf.To) > 0 || len(tf.Groups) > 0 || tf.All }

// Single reports whether the selectors name exactly one watcher by its
// name, no glob: the form whose output is the remote command's own, with
// its exit status. Every other form may select several watchers, so its
// output is per host whatever number it matched, and scripts see one
// shape.
func (tf *Targets) Single() bool {
	return len(tf.To) == 1 && len(tf.Groups) == 0 && !tf.All && !strings.ContainsAny(tf.To[0], `*?[\`)
}

// Resolve selects the known watchers the selectors name, sorted by name
// (the order they are sent a paced request in), and the signed target.
// An exact name that is not known, a glob that matches nothing or a group
// with no known member is an error naming them all.
func (tf *Targets) Resolve(kw *sera.KnownWatchers) ([]*sera.KnownWatcher, sera.Target, error) {
	var target sera.Target
	if tf.All && (len(tf.To) > 0 || len(tf.Groups) > 0) {
		return nil, target, UsageErr("--all excludes --to and --group")
	}
	selected := map[string]*sera.KnownWatcher{}
	var unknown []string
	for _, sel := range tf.To {
		if _, err := path.Match(sel, ""); err != nil || sel == "" {
			return nil, target, UsageErr("invalid --to %q: not a name or glob", sel)
		}
		if !slices.Contains(target.Names, sel) {
			target.Names = append(target.Names, sel)
		}
		matched := false
		for _, w := range kw.Watchers {
			if ok, _ := path.Match(sel, w.Name); ok {
				matched = true
				selected[w.Name] = w
			}
		}
		if !matched {
			unknown = append(unknown, sel)
		}
	}
	var noMembers []string
	for _, g := range tf.Groups {
		if err := sera.CheckName(g); err != nil {
			return nil, target, UsageErr("invalid --group %q: %v", g, err)
		}
		if !slices.Contains(target.Groups, g) {
			target.Groups = append(target.Groups, g)
		}
		matched := false
		for _, w := range kw.Watchers {
			if slices.Contains(w.Groups, g) {
				matched = true
				selected[w.Name] = w
			}
		}
		if !matched {
			noMembers = append(noMembers, g)
		}
	}
	if tf.All {
		target.All = true
		for _, w := range kw.Watchers {
			selected[w.Name] = w
		}
	}
	var problems []string
	if len(unknown) > 0 {
		problems = append(problems, "unknown watcher "+strings.Join(unknown, ", ")+": not in known_watchers (add it with 'sera watchers add NAME PUBKEY')")
	}
	if len(noMembers) > 0 {
		problems = append(problems, "no known watcher in group "+strings.Join(noMembers, ", ")+" (see 'sera watchers list')")
	}
	if len(problems) > 0 {
		return nil, target, UsageErr("%s", strings.Join(problems, "; "))
	}
	if len(selected) == 0 {
		return nil, target, UsageErr("no watchers known: add them with 'sera watchers add NAME PUBKEY'")
	}
	out := make([]*sera.KnownWatcher, 0, len(selected))
	for _, w := range selected {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *sera.KnownWatcher) int { return strings.Compare(a.Name, b.Name) })
	return out, target, nil
}

// Topic is the SNS topic whose subscribers are exactly the selected
// watchers, when the selectors are one group or --all; "" otherwise.
func (tf *Targets) Topic(prefix string) string {
	switch {
	case len(tf.To) > 0:
		return ""
	case tf.All:
		return transport.AllTopic(prefix)
	case len(tf.Groups) == 1:
		return transport.GroupTopic(prefix, tf.Groups[0])
	}
	return ""
}

// PrefixLines writes each line of b to w as "NAME: line".
func PrefixLines(w io.Writer, name string, b []byte) {
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s: %s", name, line)
		if line[len(line)-1] != '\n' {
			fmt.Fprintln(w)
		}
	}
}
