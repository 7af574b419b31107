package commands

import (
	"testing"

	"github.com/sera-dev/sera/commands/cli"
)

// A command line that starts with a host command gets a tree of that
// command alone; any other the whole tree. The watcher's trees are built
// the same way, per request.
func TestRootForCommandLine(t *testing.T) {
	names := func(o *cli.Options) []string {
		var out []string
		for _, c := range NewRoot(o).Commands() {
			out = append(out, c.Name())
		}
		return out
	}
	if got := names(&cli.Options{Args: []string{"ping", "--to", "web1"}}); len(got) != 1 || got[0] != "ping" {
		t.Errorf("tree for 'ping --to web1': %v, want ping alone", got)
	}
	for _, args := range [][]string{nil, {"pnig"}, {"--system", "ping"}, {"help", "ping"}, {"__complete", "pi"}, {"watch"}} {
		if got := names(&cli.Options{Args: args}); len(got) < len(hostCommands())+5 {
			t.Errorf("tree for %q: %v, want every command", args, got)
		}
	}
	h := &Handler{Host: &Host{}}
	if n := len(h.treeFor(nil, []string{"user", "add", "alice"}).Commands()); n != 1 {
		t.Errorf("the watcher's tree for 'user add alice' has %d commands, want user alone", n)
	}
	if n := len(h.treeFor(nil, []string{"nope"}).Commands()); n != len(hostCommands()) {
		t.Errorf("the watcher's tree for 'nope' has %d commands, want all %d", n, len(hostCommands()))
	}
}
