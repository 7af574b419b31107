// Package commands is sera's cobra command tree. Host commands (ping,
// clients, …) are defined once and serve both sides: on a laptop they parse
// and validate, then run remotely (--to) or in-process (--local); inside the
// watcher the same definitions are the allowlist and the executor.
package commands

import (
	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/admin"
	"github.com/sera-dev/sera/commands/cli"
)

// NewRoot builds the command tree: the whole one, or, for a command line
// (o.Args) that starts with a host command, that command's alone.
func NewRoot(o *cli.Options) *cobra.Command {
	root := &cobra.Command{
		Use:   "sera",
		Short: "Manage Linux hosts over a message queue, with no inbound port",
		Long: `sera sends signed, end-to-end encrypted commands to a watcher daemon on
each host, over AWS SQS or a local spool directory, and collects the replies.

` + cli.ExitCodesHelp,
		Version:       o.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	if o.OpenTransport == nil {
		o.OpenTransport = OpenTransport
	}
	cli.Group(root)
	root.SetOut(o.Stdout)
	root.SetErr(o.Stderr)
	root.SetIn(o.Stdin)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return cli.FlagError(c, o.Args, err)
	})
	// The same words for the flag and the command.
	root.SetVersionTemplate("sera {{.Version}}\n")
	root.PersistentFlags().BoolVar(&o.System, "system", false, "use the system configuration (/etc/sera) whatever the user")
	_ = root.PersistentFlags().SetAnnotation("system", cli.AnnClientOnly, []string{"true"})
	root.CompletionOptions.HiddenDefaultCmd = true

	t := &hostTree{opts: o}
	// A command every admin types often: the tree of that command alone,
	// a millisecond or more quicker to build than all of them. Any other
	// line (help, completion, a flag first, a typo) gets the whole tree,
	// and with it cobra's help and suggestions.
	if len(o.Args) > 0 && isHostCommand(o.Args[0]) {
		root.AddCommand(t.commands(o.Args[0])...)
		return root
	}
	root.AddCommand(
		newWatchCmd(o),
	)
	root.AddCommand(admin.Commands(o)...)
	root.AddCommand(t.commands("")...)
	return root
}
