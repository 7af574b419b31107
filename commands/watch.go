package commands

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/install"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
)

func newWatchCmd(o *cli.Options) *cobra.Command {
	var verbose bool
	c := &cobra.Command{
		Use:   "watch",
		Short: "Run the watcher: serve requests from this host's queue",
		Long: `Run the watcher daemon. It long-polls this host's queue (PREFIX-w-NAME),
accepts only requests sealed and signed by a client in known_clients and
addressed to this host, runs the command if that client may run it, and
replies on the client's queue. A command runs at most the request's
--exec-timeout, and never longer than SERA_EXEC_TIMEOUT (10m): then it is
killed with every process it started and answered with status 124.

Every request, accepted or rejected, is written to the audit log
($SERA_STATE/audit.log; see 'sera audit') and, where journald runs, to the
journal with SERA_* fields.

Under systemd (sera.service, see 'sera install service') it reports
READY=1 once it has reached its queue, feeds the watchdog from its poll
loop and shows its last poll and request counts in 'systemctl status sera'.

SIGTERM or SIGINT stops it: a running command is finished and answered,
no new request is taken.`,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			return runWatch(c.Context(), o, verbose)
		},
	}
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "log debug detail")
	return c
}

func runWatch(ctx context.Context, o *cli.Options, verbose bool) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	state := cfg.Get(settings.KeyState)
	// StrictModes, as sshd's: whoever can write these decides what this
	// watcher runs as root.
	strict := []string{cfg.Home, cfg.KeyFile(), cfg.EnvFile, cfg.KnownClientsFile(), state,
		filepath.Join(state, "replay"), filepath.Join(state, "audit.log")}
	if spoolDir := cfg.Get(settings.KeySpool); strings.HasPrefix(spoolDir, filepath.Clean(state)+"/") {
		strict = append(strict, spoolDir)
	}
	if err := safefile.CheckStrictModes(strict...); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	id, err := cli.LoadIdentity(cfg)
	if err != nil {
		return err
	}
	name := cfg.Get(settings.KeyName)
	if err := sera.CheckName(name); err != nil {
		return fmt.Errorf("invalid %s (set it with 'sera config set %s=…'): %w", settings.KeyName, settings.KeyName, err)
	}
	if err := safefile.MkdirPrivate(state); err != nil {
		return err
	}
	replay, err := sera.OpenReplayCache(filepath.Join(state, "replay"))
	if err != nil {
		return err
	}
	tr, err := o.Transport(ctx, cfg)
	if err != nil {
		return err
	}
	defer tr.Close()
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(o.Stderr, &slog.HandlerOptions{Level: level}))
	host := &Host{
		Name: name, Groups: cfg.Groups(), Version: o.Version, Fingerprint: id.Public().Fingerprint(),
		Started: o.Time(), KnownClients: cfg.KnownClientsFile(), Sys: o.HostSystem(cfg), Config: cfg,
		AuditLog: filepath.Join(state, "audit.log"),
	}
	w := &sera.Watcher{
		Identity: id, Name: name, Groups: cfg.Groups(), Prefix: cfg.Get(settings.KeyPrefix),
		Transport: tr, Clients: &sera.ClientFile{Path: cfg.KnownClientsFile()},
		Handler: &Handler{Host: host}, Replay: replay,
		// A command running longer is killed and answered with 124.
		ExecTimeout: cfg.Duration(settings.KeyExecTimeout),
		// A JSON line in audit.log ('sera audit'), and journald fields.
		Audit: install.NewAudit(host.AuditLog,
			int64(cfg.Int(settings.KeyAuditMaxMB))<<20, cfg.Int(settings.KeyAuditKeep)),
		Log: log, Now: o.Now, Rand: o.Rand,
		// Expired firewall openings close within HousekeepingEvery plus
		// one ufw run; at start, those that expired while it was stopped.
		Housekeeping: Housekeeper(host, log), HousekeepingEvery: 10 * time.Second,
		// A heartbeat to each client allowed ping ('sera status').
		HeartbeatEvery: cfg.Duration(settings.KeyHeartbeat),
		HeartbeatTo: func() ([]*sera.KnownClient, error) {
			kc, err := sera.ReadKnownClients(cfg.KnownClientsFile())
			if err != nil {
				return nil, err
			}
			return kc.Clients, nil
		},
		HeartbeatInfo: func(context.Context) (string, *int) {
			st, err := firewallOf(host).Load()
			if err != nil {
				return o.Version, nil
			}
			n := len(st.Openings)
			return o.Version, &n
		},
	}
	// "watching" only once the queue has answered: until then the
	// watcher is not serving anything, and says why in its retries.
	log.Info("starting", "queue", w.Queue(), "transport", cfg.Get(settings.KeyTransport),
		"fingerprint", id.Public().Fingerprint(), "version", o.Version)
	ready := false
	w.OnPoll = func(s sera.WatcherStatus) {
		if s.PollOK && !ready {
			ready = true
			at := ""
			if l, ok := tr.(transport.Locator); ok {
				at = l.Locate(w.Queue())
			}
			log.Info("watching", "queue", w.Queue(), "at", at, "transport", cfg.Get(settings.KeyTransport))
		}
	}
	// READY=1, WATCHDOG=1, STATUS= and STOPPING=1 for systemd.
	notify, err := install.NewNotifier()
	if err != nil {
		return err
	}
	notify.OnError = func(err error) { log.Warn("systemd notification failed", "err", err) }
	defer notify.Attach(ctx, w)()
	err = w.Run(ctx)
	log.Info("stopped")
	return err
}
