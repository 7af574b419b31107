package commands

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/firewall"
	"github.com/sera-dev/sera/settings"
)

// Host is what a host command runs against: the watcher's own host when it
// runs in the watcher, this machine with --local.
type Host struct {
	Name        string
	Groups      []string
	Version     string
	Fingerprint string
	// Started is when the watcher started; zero with --local.
	Started time.Time
	// KnownClients is the path of the host's known_clients file.
	KnownClients string
	// Sys is the host itself: programs, files, clock, network and
	// SERA_STATE. Unit tests give one rooted in a directory.
	Sys *host.System
	// Config is the host's settings (SERA_ALLOW_MAX, …); nil means the
	// defaults.
	Config *settings.Config
	// AuditLog is the watcher's audit log, which 'sera audit' reads; ""
	// is audit.log in Sys.State.
	AuditLog string
}

// auditLog is the path of h's audit log.
func (h *Host) auditLog() string {
	if h.AuditLog != "" {
		return h.AuditLog
	}
	return filepath.Join(h.Sys.State, "audit.log")
}

// hostRun is the body of a host command.
type hostRun func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error

// hostTree builds the host commands in one of two modes: for the client
// CLI (opts set) or inside the watcher (host set).
type hostTree struct {
	opts *cli.Options
	host *Host
	// caller is the client of the request the tree runs, nil on the
	// client side and with --local (root on the host already). Commands
	// that turn one permission into another ask it (callerMay).
	caller *sera.KnownClient

	target cli.Targets
	fan    fanoutFlags
	local  bool
	// yes is --yes: a destructive command may go to many hosts unasked.
	yes bool
}

// commands builds the host command called only, or every one when only
// is "".
func (t *hostTree) commands(only string) []*cobra.Command {
	var cmds []*cobra.Command
	for _, h := range hostCommands() {
		if only == "" || h.name == only {
			cmds = append(cmds, h.build(t))
		}
	}
	if t.host == nil {
		for _, c := range cmds {
			t.addClientFlags(c)
		}
	}
	return cmds
}

// hostCommands are the host commands, in the order help lists them: one
// list for the names (what a command line or a request may name) and how
// to build each. A function, not a variable: the commands' builders reach
// this list again (through the grants a client may delegate).
func hostCommands() []hostCommand {
	return []hostCommand{
		{"ping", (*hostTree).pingCmd}, {"clients", (*hostTree).clientsCmd}, {"user", (*hostTree).userCmd},
		{"key", (*hostTree).keyCmd}, {"group", (*hostTree).groupCmd}, {"sudo", (*hostTree).sudoCmd},
		{"hostkey", (*hostTree).hostkeyCmd}, {"allow", (*hostTree).allowCmd}, {"disallow", (*hostTree).disallowCmd},
		{"audit", (*hostTree).auditCmd},
	}
}

type hostCommand struct {
	name  string
	build func(*hostTree) *cobra.Command
}

// isHostCommand reports whether name is a host command's.
func isHostCommand(name string) bool {
	return slices.ContainsFunc(hostCommands(), func(h hostCommand) bool { return h.name == name })
}

func (t *hostTree) addClientFlags(c *cobra.Command) {
	pf := c.PersistentFlags()
	names := t.target.Add(pf, "run on")
	names = append(names, t.fan.add(pf)...)
	pf.BoolVar(&t.local, "local", false, "run on this machine, in-process, instead of on a watcher")
	names = append(names, "local")
	for _, n := range names {
		_ = pf.SetAnnotation(n, cli.AnnClientOnly, []string{"true"})
	}
	_ = c.RegisterFlagCompletionFunc("to", t.opts.CompleteWatchers)
	_ = c.RegisterFlagCompletionFunc("group", t.opts.CompleteGroups)
	// --json: a command's own (ping, user list, …) is sent to the watcher
	// and also shapes the client's output; the others get one that only
	// shapes the client's output.
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && !c.HasSubCommands() {
			if c.Flags().Lookup("json") == nil {
				c.Flags().BoolVar(&t.fan.json, "json", false, "print one JSON object per host")
				_ = c.Flags().SetAnnotation("json", cli.AnnClientOnly, []string{"true"})
			}
			long := c.Long
			if long == "" {
				long = c.Short + "."
			}
			if isDestructive(c) {
				c.Flags().BoolVar(&t.yes, "yes", false, "do not ask before running on more than one host (needed without a terminal)")
				_ = c.Flags().SetAnnotation("yes", cli.AnnClientOnly, []string{"true"})
				long += "\n\nSent to more than one host, it asks for confirmation on a terminal\nfirst, and needs --yes without one (or --dry-run)."
			}
			c.Long = long + "\n\n" + targetsHelp + "\n\n" + cli.ExitCodesHelp
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(c)
}

// leaf wires a host command's body. localByDefault makes the command run
// on this machine when no --to is given (the commands that manage this
// machine's own sera files); every other host command needs --to or
// --local, so a forgotten --to never changes the admin's own laptop.
func (t *hostTree) leaf(c *cobra.Command, localByDefault bool, run hostRun) *cobra.Command {
	return t.leafPrepared(c, localByDefault, nil, run)
}

// prepareFunc completes a host command's arguments on the client, with
// what only the admin's machine knows (its public address, say), before
// they are sent or run with --local. It returns valid arguments or an
// error. It never runs inside the watcher.
type prepareFunc func(c *cobra.Command, args []string) ([]string, error)

// leafPrepared is leaf with a client-side prepare step (nil for none).
func (t *hostTree) leafPrepared(c *cobra.Command, localByDefault bool, prepare prepareFunc, run hostRun) *cobra.Command {
	c.RunE = func(c *cobra.Command, args []string) error {
		ctx := c.Context()
		if t.host != nil {
			return run(ctx, t.host, c.OutOrStdout(), c.ErrOrStderr(), args)
		}
		if t.local && t.target.Set() {
			return cli.UsageErr("--local excludes --to, --group and --all")
		}
		if !t.target.Set() && !t.local && !localByDefault {
			return cli.UsageErr("no target: give --to HOST, --group GROUP or --all, or --local to run it on this machine")
		}
		if prepare != nil {
			var err error
			if args, err = prepare(c, args); err != nil {
				return err
			}
		}
		if t.target.Set() {
			return t.runRemote(c, args)
		}
		h, err := t.localHost()
		if err != nil {
			return err
		}
		return run(ctx, h, c.OutOrStdout(), c.ErrOrStderr(), args)
	}
	return c
}

func (t *hostTree) localHost() (*Host, error) {
	o := t.opts
	cfg, err := o.Config()
	if err != nil {
		return nil, err
	}
	h := &Host{
		Name: cfg.Get(settings.KeyName), Groups: cfg.Groups(), Version: o.Version,
		KnownClients: cfg.KnownClientsFile(), Sys: o.HostSystem(cfg), Config: cfg,
	}
	if id, err := cli.LoadIdentity(cfg); err == nil {
		h.Fingerprint = id.Public().Fingerprint()
	}
	return h, nil
}

// remoteArgv rebuilds the command line to send: the command path, every
// flag the user set except the client's own, in --name=value form, and
// the positional arguments after "--" so none can pass for a flag.
func remoteArgv(c *cobra.Command, args []string) []string {
	argv := strings.Fields(c.CommandPath())[1:]
	c.Flags().Visit(func(f *pflag.Flag) {
		if _, ok := f.Annotations[cli.AnnClientOnly]; ok {
			return
		}
		for _, v := range cli.FlagValues(f) {
			argv = append(argv, "--"+f.Name+"="+v)
		}
	})
	if len(args) > 0 {
		argv = append(argv, "--")
		argv = append(argv, args...)
	}
	return argv
}

// runRemote sends the command to the selected watchers and shows their
// results as they come.
func (t *hostTree) runRemote(c *cobra.Command, args []string) error {
	o := t.opts
	ctx := c.Context()
	cfg, kw, err := o.KnownWatchers()
	if err != nil {
		return err
	}
	selected, target, err := t.target.Resolve(kw)
	if err != nil {
		return err
	}
	if isDestructive(c) {
		if err := t.confirmDestructive(c, args, selected); err != nil {
			return err
		}
	}
	// The command's own --json, if it has one, is sent; either one asks
	// for JSON here.
	jsonFlag := c.Flags().Lookup("json")
	asJSON := jsonFlag != nil && jsonFlag.Value.String() == "true"
	_, clientJSON := jsonFlag.Annotations[cli.AnnClientOnly]
	job, err := t.fan.job(selected, cfg.Duration(settings.KeyTimeout))
	if err != nil {
		return err
	}
	client, _, closeClient, err := o.NewClient(ctx, cfg, kw, job.Timeout)
	if err != nil {
		return err
	}
	defer closeClient()
	job.Target, job.Argv = target, remoteArgv(c, args)
	useSNS, err := cfg.Fanout()
	if err != nil {
		return err
	}
	if useSNS && !t.fan.direct {
		job.Topic = t.target.Topic(cfg.Get(settings.KeyPrefix))
	}
	stdout, stderr := c.OutOrStdout(), c.ErrOrStderr()
	if t.target.Single() && !asJSON {
		// One host by name: its output as is, its exit status.
		job.OnEvent = func(e sera.Event) {
			if e.Kind == sera.EventReply {
				stdout.Write(e.Reply.Stdout)
				stderr.Write(e.Reply.Stderr)
			}
		}
		out, err := client.Run(ctx, job)
		if err != nil {
			return err
		}
		return singleOutcome(stderr, out, job.Timeout)
	}
	p := newFanoutPrinter(stdout, stderr, len(selected), job.Timeout, o.Time)
	p.asJSON, p.embedJSON = asJSON, asJSON && !clientJSON
	p.progress = isTerminal(stderr)
	job.OnEvent = p.event
	if p.progress {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					p.tick()
				}
			}
		}()
	}
	out, err := client.Run(ctx, job)
	if out != nil && out.Published != "" {
		p.note("request published once to topic " + out.Published)
	}
	p.summary(t.fan.maxErrors)
	if err != nil {
		return err
	}
	if t.target.Single() && len(out.Replies) == 1 && out.Replies[0].Reply.Status != 0 {
		// --json for one host by name: still its exit status.
		return &cli.ExitError{Code: out.Replies[0].Reply.Status}
	}
	if !p.succeeded() {
		return &cli.ExitError{Code: cli.ExitFailure}
	}
	return nil
}

// noReply says that a watcher sent the request did not answer, and that it
// may have run the command all the same: the request left, and only its
// reply is missing.
func noReply(timeout time.Duration, receiveErr error) string {
	if receiveErr != nil {
		return fmt.Sprintf("no reply within %s: receiving failed: %v; the request was sent, so the command may have run", timeout, receiveErr)
	}
	return fmt.Sprintf("no reply within %s; the request was sent, so the command may have run", timeout)
}

// singleOutcome is the exit status of a command sent to one host by name:
// the remote command's own, or a failure if it did not answer.
func singleOutcome(stderr io.Writer, out *sera.Outcome, timeout time.Duration) error {
	for name, err := range out.SendErrors {
		fmt.Fprintf(stderr, "sera: %s: failed to send: %v\n", name, err)
		return &cli.ExitError{Code: cli.ExitFailure}
	}
	for _, w := range out.Missing {
		fmt.Fprintf(stderr, "sera: %s: %s\n", w.Name, noReply(timeout, out.ReceiveErr))
		return &cli.ExitError{Code: cli.ExitFailure}
	}
	if s := out.Replies[0].Reply.Status; s != 0 {
		return &cli.ExitError{Code: s}
	}
	return nil
}

// Handler runs host commands inside the watcher. Each request gets a fresh
// command tree, so no flag state leaks from one request to the next.
type Handler struct {
	Host *Host
}

func (h *Handler) tree() *cobra.Command { return h.treeFor(nil, nil) }

// treeFor is the tree that runs a request of caller for argv. A fresh
// tree for every use, so no flag parsed for one request is seen by the
// next; and of the one host command argv names, when it names one: a
// watcher builds a tree four times a request (to resolve, authorize,
// redact and run it), and nine commands' trees cost milliseconds where
// one costs a tenth. A command line that names none gets every command,
// and with it cobra's own errors and suggestions.
func (h *Handler) treeFor(caller *sera.KnownClient, argv []string) *cobra.Command {
	root := &cobra.Command{Use: "sera", SilenceUsage: true, SilenceErrors: true}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return cli.UsageErr("%v", err)
	})
	t := &hostTree{host: h.Host, caller: caller}
	only := ""
	if len(argv) > 0 && isHostCommand(argv[0]) {
		only = argv[0]
	}
	root.AddCommand(t.commands(only)...)
	return root
}

// HostCommands lists the command paths a watcher offers, groups included
// ("clients", "clients add"), for validating allow lists.
func HostCommands() []string {
	root := (&Handler{Host: &Host{}}).tree()
	var out []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			out = append(out, commandPath(s))
			walk(s)
		}
	}
	walk(root)
	return out
}

func commandPath(c *cobra.Command) string {
	return strings.Join(strings.Fields(c.CommandPath())[1:], " ")
}

// find locates the leaf argv names and parses its flags, as Execute would.
func (h *Handler) find(argv []string) (*cobra.Command, error) {
	return findLeaf(h.treeFor(nil, argv), argv)
}

func findLeaf(root *cobra.Command, argv []string) (*cobra.Command, error) {
	c, rest, err := root.Find(argv)
	if err != nil {
		return nil, fmt.Errorf("unknown command: %w", err)
	}
	if c == root || c.HasSubCommands() || !c.Runnable() {
		return nil, fmt.Errorf("%q is not a command this watcher runs", strings.Join(argv[:min(len(argv), 2)], " "))
	}
	if err := c.ParseFlags(rest); err != nil {
		return c, err
	}
	return c, nil
}

// Resolve implements sera.Handler: the command's own validation of flags
// and arguments, nothing run.
func (h *Handler) Resolve(argv []string) (string, error) {
	c, err := h.find(argv)
	if c == nil {
		return "", err
	}
	name := commandPath(c)
	if err != nil {
		return name, err
	}
	if help, _ := c.Flags().GetBool("help"); help {
		return name, errors.New("--help is not run remotely")
	}
	if err := c.ValidateArgs(c.Flags().Args()); err != nil {
		return name, err
	}
	if err := c.ValidateRequiredFlags(); err != nil {
		return name, err
	}
	if err := c.ValidateFlagGroups(); err != nil {
		return name, err
	}
	if c.PreRunE != nil {
		if err := c.PreRunE(c, c.Flags().Args()); err != nil {
			if hostFailed(err) {
				return name, &sera.HostFailure{Err: err}
			}
			return name, err
		}
	}
	return name, nil
}

// hostFailed reports whether a check on the host failed for the host's
// sake, not the command line's: a program that is not installed, a file
// or directory it cannot open or read, a program that failed. Usage
// errors (the caller's input) are never the host's.
func hostFailed(err error) bool {
	if errors.Is(err, cli.ErrUsage) {
		return false
	}
	var (
		pathErr *fs.PathError
		execErr *exec.Error
		exitErr *exec.ExitError
	)
	return errors.Is(err, host.ErrMissing) || errors.Is(err, firewall.ErrUFWInactive) ||
		errors.As(err, &pathErr) || errors.As(err, &execErr) || errors.As(err, &exitErr) ||
		errors.Is(err, exec.ErrNotFound)
}

// Redact implements sera.Handler: the values of secret flags are masked.
func (h *Handler) Redact(argv []string) []string { return redactWith(h.treeFor(nil, argv), argv) }

func redactWith(root *cobra.Command, argv []string) []string {
	out := slices.Clone(argv)
	c, _ := findLeaf(root, argv)
	if c == nil {
		return out
	}
	for i := 0; i < len(out); i++ {
		if out[i] == "--" {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(out[i], "-"), "=")
		f := c.Flags().Lookup(name)
		if f == nil || !strings.HasPrefix(out[i], "--") {
			continue
		}
		if _, secret := f.Annotations[cli.AnnSecret]; !secret {
			continue
		}
		if hasValue {
			out[i] = "--" + name + "=***"
		} else if i+1 < len(out) {
			out[i+1] = "***"
			i++
		}
	}
	return out
}

// Run implements sera.Handler.
func (h *Handler) Run(ctx context.Context, call *sera.Call) sera.Result {
	root := h.treeFor(call.Client, call.Argv)
	var stdout changeBuffer
	var stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs(call.Argv)
	err := root.ExecuteContext(ctx)
	code, show := cli.ExitCode(err)
	if show {
		fmt.Fprintf(&stderr, "sera: %v\n", err)
	}
	return sera.Result{Status: code, Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Changed: stdout.changed}
}

// changeBuffer is a command's standard output that also learns whether
// the command changed the host (plan.ChangeMarker).
type changeBuffer struct {
	bytes.Buffer
	changed bool
}

func (b *changeBuffer) MarkChanged() { b.changed = true }
