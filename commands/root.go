// Package commands is sera's cobra command tree. Host commands (ping,
// clients, …) are defined once and serve both sides: on a laptop they parse
// and validate, then run remotely (--to) or in-process (--local); inside the
// watcher the same definitions are the allowlist and the executor.
package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
)

// Exit statuses. main maps errors to them in one place (ExitCode).
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// ExitError carries a specific exit status, e.g. a remote command's. Err
// may be nil when the reason was already shown.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ErrUsage marks errors in flags or arguments (exit status 2).
var ErrUsage = errors.New("usage error")

type usageError struct{ msg string }

func (e *usageError) Error() string        { return e.msg }
func (e *usageError) Is(target error) bool { return target == ErrUsage }

func usageErr(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// ExitCode maps an error from the command tree to the process exit status
// and reports whether the error still needs to be printed.
func ExitCode(err error) (code int, print bool) {
	var ee *ExitError
	switch {
	case err == nil:
		return ExitOK, false
	case errors.As(err, &ee):
		return ee.Code, ee.Err != nil
	case errors.Is(err, ErrUsage):
		return ExitUsage, true
	default:
		return ExitFailure, true
	}
}

// Options holds what every command shares: its streams, the environment
// and the side effects it may have, all injectable for tests.
type Options struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Env            settings.Env
	Version        string
	// Now and Rand default to the real clock and crypto/rand.
	Now  func() time.Time
	Rand io.Reader
	// OpenTransport opens the configured transport; defaults to
	// OpenTransport.
	OpenTransport func(ctx context.Context, cfg *settings.Config) (transport.Transport, error)
	// Host is this machine, for --local, the watcher and the public
	// address 'sera allow' looks up; nil is the real one, with SERA_STATE
	// as its state directory and Now as its clock.
	Host *host.System
	// Exe is the sera binary 'sera install service' makes the unit run;
	// "" is this process's own executable.
	Exe string

	// system is --system: use /etc/sera whatever the user.
	system bool
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// hostSystem is this machine as host commands see it.
func (o *Options) hostSystem(cfg *settings.Config) *host.System {
	if o.Host != nil {
		return o.Host
	}
	s := host.Real(cfg.Get(settings.KeyState))
	if o.Now != nil {
		s.Clock = host.ClockFunc(o.Now)
	}
	return s
}

func (o *Options) config() (*settings.Config, error) {
	return settings.Load(o.Env, o.system)
}

func (o *Options) openTransport(ctx context.Context, cfg *settings.Config) (transport.Transport, error) {
	if o.OpenTransport != nil {
		return o.OpenTransport(ctx, cfg)
	}
	return OpenTransport(ctx, cfg)
}

const exitCodesHelp = `Exit status:
  0    success (on every targeted host)
  1    failure; a host failed, did not answer in time, could not be sent
       the request, or was skipped after --max-errors
  2    usage error: bad flags or arguments, nothing was sent or changed
  N    with one host named exactly (--to web1), the remote command's own
       exit status (126: the watcher refused the request; 124: the command
       ran past its execution timeout and was killed; 123: the watcher
       could not record or audit it, did not run it, and will run it once
       it can, while the request is valid)`

// NewRoot builds the whole command tree.
func NewRoot(o *Options) *cobra.Command {
	root := &cobra.Command{
		Use:   "sera",
		Short: "Manage Linux hosts over a message queue, with no inbound port",
		Long: `sera sends signed, end-to-end encrypted commands to a watcher daemon on
each host, over AWS SQS or a local spool directory, and collects the replies.

` + exitCodesHelp,
		Version:       o.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	group(root)
	root.SetOut(o.Stdout)
	root.SetErr(o.Stderr)
	root.SetIn(o.Stdin)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErr("%v (see '%s --help')", err, c.CommandPath())
	})
	root.PersistentFlags().BoolVar(&o.system, "system", false, "use the system configuration (/etc/sera) whatever the user")
	_ = root.PersistentFlags().SetAnnotation("system", annClientOnly, []string{"true"})
	root.CompletionOptions.HiddenDefaultCmd = true

	root.AddCommand(
		newKeygenCmd(o),
		newPubkeyCmd(o),
		newConfigCmd(o),
		newExportCmd(o),
		newWatchersCmd(o),
		newWatchCmd(o),
		newVersionCmd(o),
		newKnownHostsCmd(o),
		newInstallCmd(o),
		newUninstallCmd(o),
		newAuditCmd(o),
		newProvisionCmd(o),
		newWatcherCmd(o),
		newClientCmd(o),
		newPolicyCmd(o),
	)
	t := &hostTree{opts: o}
	root.AddCommand(t.commands()...)
	return root
}

// group makes c a command that only holds subcommands: run bare or with an
// unknown subcommand it fails with a usage error instead of exiting 0.
func group(c *cobra.Command) *cobra.Command {
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageErr("unknown command %q for %q (see '%s --help')", args[0], c.CommandPath(), c.CommandPath())
		}
		return usageErr("%s needs a subcommand (see '%s --help')", c.CommandPath(), c.CommandPath())
	}
	return c
}

// usageArgs wraps a positional-argument check so its error is a usage
// error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageErr("%v (see '%s --help')", err, c.CommandPath())
		}
		return nil
	}
}

// flagValues lists a flag's values as the command line would give them.
func flagValues(f *pflag.Flag) []string {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.GetSlice()
	}
	return []string{f.Value.String()}
}
