// Package cli is what every sera command shares, on the laptop and on a
// host: the Options that carry streams, environment and side effects
// (injectable for tests), exit statuses and usage errors, the flag
// helpers, and the client of remote calls. Packages commands (the host
// commands, defined once for both sides) and admin (the laptop's admin
// commands) build on it; neither imports the other's internals.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
)

// Exit statuses. main maps errors to them in one place (ExitCode).
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
	// ExitNotSent: the request was not sent (this process could not
	// receive its replies), so nothing ran anywhere; sysexits'
	// EX_TEMPFAIL, "try again later".
	ExitNotSent = 75
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

type usageError struct {
	msg string
	err error
}

func (e *usageError) Error() string        { return e.msg }
func (e *usageError) Is(target error) bool { return target == ErrUsage }
func (e *usageError) Unwrap() error        { return e.err }

// UsageErr is an error in flags or arguments: exit status 2, and on a
// host a refusal before anything ran.
func UsageErr(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// AsUsage marks err, a domain's refusal of the caller's input (a bad key,
// name or entry), as a usage error, its message and chain unchanged. nil
// stays nil.
func AsUsage(err error) error {
	if err == nil || errors.Is(err, ErrUsage) {
		return err
	}
	return &usageError{msg: err.Error(), err: err}
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
	case errors.Is(err, sera.ErrNotSent):
		return ExitNotSent, true
	default:
		return ExitFailure, true
	}
}

// ExitCodesHelp is the exit statuses, for the root command's --help.
const ExitCodesHelp = `Exit status:
  0    success (on every targeted host)
  1    failure; a host failed, did not answer in time, could not be sent
       the request, or was skipped after --max-errors
  2    usage error: bad flags or arguments, nothing was sent or changed
  75   nothing was sent: this process cannot receive replies (its reply
       queue is missing or the queue server unreachable); nothing ran, the
       command may be tried again as it is. A failure after the request
       was sent is 1, and says the command may have run
  N    with one host named exactly (--to web1), the remote command's own
       exit status (126: the watcher refused the request; 124: the command
       ran past its execution timeout and was killed; 123: the watcher
       could not record or audit it, did not run it, and will run it once
       it can, while the request is valid)`

// Flag annotations the host command tree reads: a client-only flag is
// never sent to the host; a secret one is redacted in the audit log.
const (
	AnnClientOnly = "sera-client-only"
	AnnSecret     = "sera-secret"
)

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
	// OpenTransport opens the configured transport; the root command
	// sets the real factory when it is nil.
	OpenTransport func(ctx context.Context, cfg *settings.Config) (transport.Transport, error)
	// Host is this machine, for --local, the watcher and the public
	// address 'sera allow' looks up; nil is the real one, with SERA_STATE
	// as its state directory and Now as its clock.
	Host *host.System
	// Exe is the sera binary 'sera install service' makes the unit run;
	// "" is this process's own executable.
	Exe string
	// Confirm asks the user question and reports the answer; nil asks on
	// the terminal (standard input and error), and fails without one.
	Confirm func(question string) (bool, error)
	// System is --system: use /etc/sera whatever the user.
	System bool
	// Args, if set, are the command line the root command will run
	// (without the program's name): a line that starts with a host
	// command's name gets a tree of that command alone, which is
	// quicker to build (see commands.NewRoot).
	Args []string
}

// Time is the time now, by Now if set.
func (o *Options) Time() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// HostSystem is this machine as host commands see it.
func (o *Options) HostSystem(cfg *settings.Config) *host.System {
	if o.Host != nil {
		return o.Host
	}
	s := host.Real(cfg.Get(settings.KeyState))
	if o.Now != nil {
		s.Clock = host.ClockFunc(o.Now)
	}
	return s
}

// Config loads the settings of this user (or the system's, --system).
func (o *Options) Config() (*settings.Config, error) {
	return settings.Load(o.Env, o.System)
}

// KnownWatchers loads the settings and the known_watchers file they name:
// what every command that addresses watchers starts with.
func (o *Options) KnownWatchers() (*settings.Config, *sera.KnownWatchers, error) {
	cfg, err := o.Config()
	if err != nil {
		return nil, nil, err
	}
	kw, err := sera.ReadKnownWatchers(cfg.KnownWatchersFile())
	if err != nil {
		return nil, nil, err
	}
	return cfg, kw, nil
}

// Transport opens the configured transport.
func (o *Options) Transport(ctx context.Context, cfg *settings.Config) (transport.Transport, error) {
	if o.OpenTransport == nil {
		return nil, errors.New("no transport factory set")
	}
	return o.OpenTransport(ctx, cfg)
}

// NewClient opens the transport and builds the client of remote calls;
// closeClient releases the transport. A timeout of 0 is SERA_TIMEOUT. kw
// are the known watchers: replies sealed by any other key are deleted.
func (o *Options) NewClient(ctx context.Context, cfg *settings.Config, kw *sera.KnownWatchers, timeout time.Duration) (client *sera.Client, wait time.Duration, closeClient func(), err error) {
	id, err := LoadIdentity(cfg)
	if err != nil {
		return nil, 0, nil, err
	}
	tr, err := o.Transport(ctx, cfg)
	if err != nil {
		return nil, 0, nil, err
	}
	if timeout <= 0 {
		timeout = cfg.Duration(settings.KeyTimeout)
	}
	warn := func(msg string) {
		if o.Stderr != nil {
			fmt.Fprintf(o.Stderr, "sera: warning: %s\n", msg)
		}
	}
	queue, release := takeReplyQueue(cfg, id.Public().Fingerprint(), warn)
	client = &sera.Client{
		Identity: id, Transport: tr, Prefix: cfg.Get(settings.KeyPrefix), ReplyQueue: queue,
		TTL: cfg.Duration(settings.KeyRequestTTL), Now: o.Now, Rand: o.Rand, Known: kw, Warn: warn,
	}
	return client, timeout, func() { tr.Close(); release() }, nil
}

// Group makes c a command that only holds subcommands: run bare or with an
// unknown subcommand it fails with a usage error instead of exiting 0.
func Group(c *cobra.Command) *cobra.Command {
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return UnknownCommand(c, args[0])
		}
		return UsageErr("%s needs a subcommand (see '%s --help')", c.CommandPath(), c.CommandPath())
	}
	return c
}

// UnknownCommand is the usage error for word, which names none of group's
// subcommands, with the subcommands it may have meant: cobra's
// suggestions (a typo, a prefix), and a same-named subcommand of the
// group's sibling with or without a final "s" ("client add" is "clients
// add"), since sera has both and they are easily confused.
func UnknownCommand(group *cobra.Command, word string) error {
	var hints []string
	if group.SuggestionsMinimumDistance <= 0 {
		group.SuggestionsMinimumDistance = 2 // cobra's own default
	}
	for _, s := range group.SuggestionsFor(word) {
		hints = append(hints, group.CommandPath()+" "+s)
	}
	if p := group.Parent(); p != nil {
		for _, sib := range p.Commands() {
			n := sib.Name()
			if n == group.Name() || (n != group.Name()+"s" && n+"s" != group.Name()) {
				continue
			}
			if sub, _, err := sib.Find([]string{word}); err == nil && sub != sib {
				hints = append(hints, sub.CommandPath())
			}
		}
	}
	msg := fmt.Sprintf("unknown command %q for %q", word, group.CommandPath())
	if len(hints) > 0 {
		for i, h := range hints {
			hints[i] = strconv.Quote(h)
		}
		last := len(hints) - 1
		alts := hints[last]
		if last > 0 {
			alts = strings.Join(hints[:last], ", ") + " or " + hints[last]
		}
		msg += "; did you mean " + alts + "?"
	}
	return UsageErr("%s (see '%s --help')", msg, group.CommandPath())
}

// FlagError is the usage error for a flag cobra could not parse on c.
// Where c only holds subcommands and the line names one it lacks (a typo:
// "sera pnig --to web1"), the flag is not the problem and the unknown
// command is what is reported. line is the whole command line, without
// the program's name.
func FlagError(c *cobra.Command, line []string, err error) error {
	if c.HasSubCommands() {
		if word, group := unknownWord(c.Root(), line); group == c && word != "" {
			return UnknownCommand(c, word)
		}
	}
	return UsageErr("%v (see '%s --help')", err, c.CommandPath())
}

// unknownWord walks line's words (not its flags) down from root and
// returns the first that names no subcommand of the command reached, and
// that command; "" once a command without subcommands is reached.
func unknownWord(root *cobra.Command, line []string) (string, *cobra.Command) {
	c := root
	skip := false
	for _, w := range line {
		if w == "--" {
			break
		}
		if skip {
			skip = false
			continue
		}
		if name, ok := strings.CutPrefix(w, "--"); ok {
			// A flag's value is not a command: "--to web1". A flag the
			// command does not know is taken to have one.
			if !strings.Contains(name, "=") {
				f := c.Flag(name)
				skip = f == nil || f.NoOptDefVal == ""
			}
			continue
		}
		if strings.HasPrefix(w, "-") {
			continue
		}
		if !c.HasSubCommands() {
			return "", c
		}
		next, _, err := c.Find([]string{w})
		if err != nil || next == c {
			return w, c
		}
		c = next
	}
	return "", c
}

// UsageArgs wraps a positional-argument check so its error is a usage
// error that says, in words, what the command takes: its arguments are
// named by its Use line ("add NAME", "add USER KEY…").
func UsageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return UsageErr("%s (see '%s --help')", argsProblem(c, args, err), c.CommandPath())
		}
		return nil
	}
}

// argsProblem says what is wrong with args, from the names of c's Use line;
// err, cobra's own words, where the line names none.
func argsProblem(c *cobra.Command, args []string, err error) string {
	var names []string
	required := 0
	for _, w := range strings.Fields(c.Use)[1:] {
		if strings.HasPrefix(w, "[") || strings.HasPrefix(w, "-") || strings.HasPrefix(w, "'") || strings.ToUpper(w) != w {
			break
		}
		names = append(names, w)
		required++
	}
	path := c.CommandPath()
	switch {
	case len(args) < required:
		missing := names[len(args):]
		what := strings.Join(missing, " and ")
		if len(args) == 0 {
			return fmt.Sprintf("%s needs %s", path, what)
		}
		return fmt.Sprintf("%s needs %s after %s", path, what, strings.Join(args, " "))
	case len(names) == 0 && len(args) > 0:
		if c.HasSubCommands() || strings.Contains(c.Use, "[") {
			return err.Error()
		}
		return fmt.Sprintf("%s takes no arguments; unexpected %s", path, quoteAll(args))
	case len(args) > required && !strings.HasSuffix(names[len(names)-1], "…") && !strings.HasSuffix(names[len(names)-1], "..."):
		return fmt.Sprintf("%s takes only %s; unexpected %s", path, strings.Join(names, " "), quoteAll(args[required:]))
	}
	return err.Error()
}

// quoteAll is words, each quoted, separated by spaces.
func quoteAll(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = strconv.Quote(w)
	}
	return strings.Join(q, " ")
}

// FlagValues lists a flag's values as the command line would give them.
func FlagValues(f *pflag.Flag) []string {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.GetSlice()
	}
	return []string{f.Value.String()}
}

// AddDryRun gives a changing command its --dry-run flag.
func AddDryRun(c *cobra.Command, dryRun *bool) {
	c.Flags().BoolVar(dryRun, "dry-run", false, "print the exact changes and make none")
}

// SplitAll splits repeated comma-separated flag values into names.
func SplitAll(vals []string) []string {
	var out []string
	for _, v := range vals {
		out = append(out, sera.SplitList(v)...)
	}
	return out
}

// NonNil is s, or an empty list where s is nil, so JSON says [] not null.
func NonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
