package cli

import (
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/settings"
)

// CompleteWatchers completes watcher names from known_watchers, for --to
// and the arguments that name a watcher. A comma-separated value
// completes its last name.
func (o *Options) CompleteWatchers(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return o.completeKnown(toComplete, func(w *sera.KnownWatcher) []string { return []string{w.Name} })
}

// CompleteGroups completes the groups known_watchers puts watchers in.
func (o *Options) CompleteGroups(c *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return o.completeKnown(toComplete, func(w *sera.KnownWatcher) []string { return w.Groups })
}

func (o *Options) completeKnown(toComplete string, names func(*sera.KnownWatcher) []string) ([]string, cobra.ShellCompDirective) {
	none := cobra.ShellCompDirectiveNoFileComp
	_, kw, err := o.KnownWatchers()
	if err != nil {
		return nil, none
	}
	done, last := "", toComplete
	if i := strings.LastIndexByte(toComplete, ','); i >= 0 {
		done, last = toComplete[:i+1], toComplete[i+1:]
	}
	typed := strings.Split(done, ",")
	var out []string
	for _, w := range kw.Watchers {
		for _, n := range names(w) {
			if strings.HasPrefix(n, last) && !slices.Contains(typed, n) && !slices.Contains(out, done+n) {
				out = append(out, done+n)
			}
		}
	}
	slices.Sort(out)
	return out, none
}

// CompleteSettingKeys completes the names of settings, from the settings
// table; with assign, as "KEY=" for 'config set', with no space after.
func CompleteSettingKeys(assign bool) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if assign && strings.Contains(toComplete, "=") {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, d := range settings.All {
			if !strings.HasPrefix(d.Key, toComplete) {
				continue
			}
			if assign {
				out = append(out, cobra.CompletionWithDesc(d.Key+"=", d.Help))
			} else {
				out = append(out, cobra.CompletionWithDesc(d.Key, d.Help))
			}
		}
		dir := cobra.ShellCompDirectiveNoFileComp
		if assign {
			dir |= cobra.ShellCompDirectiveNoSpace
		}
		return out, dir
	}
}
