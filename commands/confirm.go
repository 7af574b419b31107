package commands

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
)

// destructiveCommands are the host commands that remove or take away:
// accounts, keys, groups, memberships, sudo, trust, host keys, openings.
// Sent to more than one host, they ask first (confirmDestructive).
var destructiveCommands = []string{
	"user del", "user lock", "key remove", "key sync", "group del", "group members remove",
	"sudo revoke", "clients remove", "hostkey set", "hostkey untrust", "disallow",
}

// isDestructive reports whether c is one of destructiveCommands.
func isDestructive(c *cobra.Command) bool {
	// The path without the root's name; the host commands' trees are
	// walked before they are added to a root, and after.
	path := strings.TrimPrefix(c.CommandPath(), "sera ")
	for _, d := range destructiveCommands {
		if d == path {
			return true
		}
	}
	return false
}

// errNoTerminal: there is nobody to ask.
var errNoTerminal = errors.New("no terminal to ask on")

// confirmDestructive asks before a destructive command c goes to more
// than one host, unless --yes or --dry-run was given: on a terminal it
// shows how many hosts and asks for "yes"; without one it fails, since a
// script must say --yes. Nothing is sent when it fails.
func (t *hostTree) confirmDestructive(c *cobra.Command, args []string, hosts []*sera.KnownWatcher) error {
	if len(hosts) < 2 || t.yes || flagTrue(c, "dry-run") {
		return nil
	}
	names := make([]string, 0, 4)
	for i, w := range hosts {
		if i == 3 {
			names = append(names, fmt.Sprintf("and %d more", len(hosts)-3))
			break
		}
		names = append(names, w.Name)
	}
	line := strings.Join(append([]string{c.CommandPath()}, args...), " ")
	what := fmt.Sprintf("%s would run on %d hosts (%s)", line, len(hosts), strings.Join(names, ", "))
	ask := t.opts.Confirm
	if ask == nil {
		ask = t.askTerminal
	}
	ok, err := ask(what + "; type yes to go on: ")
	switch {
	case errors.Is(err, errNoTerminal):
		return cli.UsageErr("%s; add --yes to run it (nothing was sent)", what)
	case err != nil:
		return fmt.Errorf("failed to ask for confirmation: %w; nothing was sent", err)
	case !ok:
		return &cli.ExitError{Code: cli.ExitFailure, Err: errors.New("not confirmed; nothing was sent")}
	}
	return nil
}

// askTerminal asks question on the terminal sera runs on: standard error
// and input must both be one, so an answer piped in never confirms.
func (t *hostTree) askTerminal(question string) (bool, error) {
	in, ok := t.opts.Stdin.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) || !isTerminal(t.opts.Stderr) {
		return false, errNoTerminal
	}
	fmt.Fprint(t.opts.Stderr, "sera: "+question)
	answer, err := bufio.NewReader(in).ReadString('\n')
	if err != nil {
		return false, err
	}
	a := strings.ToLower(strings.TrimSpace(answer))
	return a == "yes" || a == "y", nil
}

// flagTrue reports whether c has a boolean flag name set to true.
func flagTrue(c *cobra.Command, name string) bool {
	f := c.Flags().Lookup(name)
	return f != nil && f.Value.String() == "true"
}
