package commands

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
)

// What a grant's scope narrows, per host command: the one place that says
// which argument is a command's subject. A test walks every leaf of the
// host tree and fails for a leaf missing here, so no command can be added
// that a scoped grant reaches without a decision.
type subjectKind int

const (
	// subjectNone: the command has no one subject (lists, pings, trust
	// files); only an unscoped grant covers it.
	subjectNone subjectKind = iota
	// subjectUser: the first argument is a user account.
	subjectUser
	// subjectGroup: the first argument is a group.
	subjectGroup
	// subjectPort: the --port the command opens or closes.
	subjectPort
)

var commandSubjects = map[string]subjectKind{
	"ping":                 subjectNone,
	"clients add":          subjectNone,
	"clients remove":       subjectNone,
	"clients list":         subjectNone,
	"user add":             subjectUser,
	"user lock":            subjectUser,
	"user unlock":          subjectUser,
	"user del":             subjectUser,
	"user show":            subjectUser,
	"user list":            subjectNone,
	"key add":              subjectUser,
	"key remove":           subjectUser,
	"key sync":             subjectUser,
	"key list":             subjectUser,
	"group add":            subjectGroup,
	"group del":            subjectGroup,
	"group members add":    subjectGroup,
	"group members remove": subjectGroup,
	"group list":           subjectNone,
	"sudo grant":           subjectGroup,
	"sudo revoke":          subjectGroup,
	"sudo list":            subjectNone,
	"hostkey list":         subjectNone,
	"hostkey trust":        subjectNone,
	"hostkey untrust":      subjectNone,
	"hostkey set":          subjectNone,
	"allow":                subjectPort,
	"disallow":             subjectPort,
	"audit":                subjectNone,
}

// hostLeaves lists the runnable host commands ("user add", "allow").
func hostLeaves() []string {
	all := HostCommands()
	var out []string
	for _, p := range all {
		if !slices.ContainsFunc(all, func(q string) bool { return strings.HasPrefix(q, p+" ") }) {
			out = append(out, p)
		}
	}
	return out
}

// subjectOf is the subject of a parsed host command, "" when it has none
// or acts on every subject (disallow without --port, allow --list).
func subjectOf(c *cobra.Command) (subjectKind, string) {
	kind := commandSubjects[commandPath(c)]
	args := c.Flags().Args()
	switch kind {
	case subjectUser, subjectGroup:
		if len(args) > 0 {
			return kind, args[0]
		}
	case subjectPort:
		if list, _ := c.Flags().GetBool("list"); list {
			return kind, ""
		}
		if f := c.Flags().Lookup("port"); f != nil && (f.Changed || commandPath(c) == "allow") {
			return kind, f.Value.String()
		}
	}
	return kind, ""
}

// Authorize implements sera.Authorizer, the second half of rule 8: the
// client holds a grant on this command whose scope covers its subject.
// (Allows, checked first by the watcher, only says it holds some grant on
// the command.) Everything a scoped grant reaches is decided here.
func (h *Handler) Authorize(client *sera.KnownClient, argv []string) error {
	c, err := h.find(argv)
	if err != nil {
		return err
	}
	return authorize(client, c)
}

func authorize(client *sera.KnownClient, c *cobra.Command) error {
	if err := scopeAllows(client, c); err != nil {
		return &sera.PermissionError{Reason: err.Error()}
	}
	return nil
}

func scopeAllows(client *sera.KnownClient, c *cobra.Command) error {
	command := commandPath(c)
	if client.AllowsAll(command) {
		return nil
	}
	kind, subject := subjectOf(c)
	if kind == subjectNone {
		return fmt.Errorf("client %s holds only scoped grants on %q, which acts on no one account, group or port", client.Name, command)
	}
	if subject == "" {
		return fmt.Errorf("client %s may run %q only within the scope of its grant, and this one acts on every %s", client.Name, command, kindWord(kind))
	}
	if !client.AllowsOn(command, subject) {
		return fmt.Errorf("client %s may not run %q on %s %s", client.Name, command, kindWord(kind), subject)
	}
	if command == "user add" {
		// A grant on some accounts is not one on groups: the groups
		// the account is put in must be within a group grant too.
		if c.Flags().Changed("gid") {
			return fmt.Errorf("client %s may run \"user add\" only on some accounts; --gid needs an unscoped user.add grant", client.Name)
		}
		for _, flag := range []string{"groups", "set-groups"} {
			gs, _ := c.Flags().GetStringSlice(flag)
			for _, g := range cli.SplitAll(gs) {
				if !client.AllowsOn("group members add", g) {
					return fmt.Errorf("client %s may not put accounts into group %s (--%s needs \"group.members.add\" on it)", client.Name, g, flag)
				}
			}
		}
	}
	return nil
}

func kindWord(k subjectKind) string {
	switch k {
	case subjectUser:
		return "account"
	case subjectGroup:
		return "group"
	case subjectPort:
		return "port"
	}
	return "thing"
}

// checkGrantScopes validates a parsed grant against the commands it
// covers: a scope only on commands with a subject, names for accounts and
// groups, ports for ports.
func checkGrantScopes(g sera.Grant) error {
	if len(g.Scope) == 0 {
		return nil
	}
	var kind subjectKind
	for _, l := range hostLeaves() {
		if !g.CoversPath(l) {
			continue
		}
		if k := commandSubjects[l]; k != subjectNone {
			kind = k
		}
	}
	if kind == subjectNone {
		return cli.UsageErr("invalid --allow: %s takes no scope (it acts on no one account, group or port)", sera.FormatAllow([]string{g.Path}))
	}
	for _, v := range g.Scope {
		isPort := v[0] >= '0' && v[0] <= '9'
		if isPort != (kind == subjectPort) {
			return cli.UsageErr("invalid --allow: %s is scoped by %ss, not %q", sera.FormatAllow([]string{g.Path}), kindWord(kind), v)
		}
	}
	return nil
}

// mayDelegate refuses grants the caller could not exercise itself: a
// remote "clients" request may hand out (or remove, or change) only
// subsets of the caller's own rights, and '*' only a '*' client. Checked
// command by command, subject by subject, so a parent path ("user")
// needs the caller to hold every one of its commands.
func mayDelegate(caller *sera.KnownClient, allow []string, account string) error {
	if caller == nil {
		return nil // --local: root on the host already
	}
	callerAll := slices.ContainsFunc(caller.Grants(), func(g sera.Grant) bool { return g.Path == sera.AllowAll })
	if callerAll {
		return nil
	}
	target := &sera.KnownClient{Allow: allow, Account: account}
	for _, g := range target.Grants() {
		if g.Path == sera.AllowAll {
			return fmt.Errorf("client %s may not grant '*': only a client allowed '*' may", caller.Name)
		}
		for _, l := range hostLeaves() {
			if !g.CoversPath(l) {
				continue
			}
			if len(g.Scope) == 0 {
				if !caller.AllowsAll(l) {
					return fmt.Errorf("client %s may not grant %q: it may not run it on every subject itself", caller.Name, l)
				}
				continue
			}
			for _, v := range g.Scope {
				if !callerCovers(caller, l, v) {
					return fmt.Errorf("client %s may not grant %q on %s: it may not run it there itself", caller.Name, l, v)
				}
			}
		}
	}
	if slices.Contains(allow, sera.SelfGrant) && account == "" {
		return cli.UsageErr("--allow self needs --account USER: the account the client may manage its own keys of")
	}
	return nil
}

// callerCovers reports whether caller may run command on every subject
// the scope value v stands for: v itself, or a glob caller holds as is.
func callerCovers(caller *sera.KnownClient, command, v string) bool {
	glob := strings.ContainsAny(v, "*?[")
	for _, g := range caller.Grants() {
		if !g.CoversPath(command) {
			continue
		}
		if len(g.Scope) == 0 || slices.Contains(g.Scope, v) || !glob && g.ScopeMatches(v) {
			return true
		}
	}
	return false
}

// rootEquivalent reports whether a grant gives root on the host, by
// itself: '*', and any grant on "sudo grant" (it makes a group's members
// root). Named so in --help, "clients list" and when granted.
func rootEquivalent(grant string) bool {
	g, err := sera.ParseGrant(strings.ReplaceAll(grant, " ", "."))
	return err == nil && (g.Path == sera.AllowAll || g.CoversPath("sudo grant"))
}

// callerMay reports whether whoever runs the command may also run command
// on every subject: the remote client per an unscoped grant; anyone with
// --local (who, nil), who is root on the host already. Commands use it
// where one permission could be turned into another (group membership
// that carries sudo).
func callerMay(who *sera.KnownClient, command string) error {
	if who == nil || who.AllowsAll(command) {
		return nil
	}
	return fmt.Errorf("client %s may not run %q", who.Name, command)
}
