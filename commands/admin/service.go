package admin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/install"
)

// service is the service installer of this host: o.Host when a test
// set one (a directory with a recording systemctl), this machine
// otherwise.
func service(o *cli.Options) (*install.Service, error) {
	exe := o.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("failed to find sera's own path: %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return nil, fmt.Errorf("failed to find sera's own path: %w", err)
		}
	}
	sys := o.Host
	if sys == nil {
		sys = host.Real("")
	}
	return &install.Service{Exe: exe, Sys: sys}, nil
}

func newInstallCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "install",
		Short: "Install the watcher on this host",
	})
	c.AddCommand(newInstallServiceCmd(o))
	return c
}

func newUninstallCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "uninstall",
		Short: "Remove what 'sera install' added",
	})
	c.AddCommand(newUninstallServiceCmd(o))
	return c
}

func newInstallServiceCmd(o *cli.Options) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "service",
		Short: "Run the watcher as a systemd service (sera.service)",
		Long: `Install the watcher as the systemd service sera.service, running this sera
binary: writes ` + install.LocalUnitPath + `, creates ` + install.ConfigDir + ` (0700) and
an env file with every setting commented out if they are missing, then runs
systemctl daemon-reload, enable and start (restart if the unit changed). The
service starts only once this host has a key (sera keygen).

The Debian package installs the same service by itself; with it installed,
this command only enables and starts it. Without a running systemd (a
container, a chroot) it writes the files and says what to run later.

Run it as root. A second run changes nothing and says so.`,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			s, err := service(o)
			if err != nil {
				return err
			}
			if !dryRun && !o.Env.IsRoot && o.Host == nil {
				return errors.New("installing the service needs root (try --dry-run to see what it would do)")
			}
			p, err := s.PlanInstall(c.Context())
			if err != nil {
				return err
			}
			return p.Execute(c.Context(), o.Stdout, dryRun, "nothing to do")
		},
	}
	cli.AddDryRun(c, &dryRun)
	return c
}

func newUninstallServiceCmd(o *cli.Options) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "service",
		Short: "Stop and remove the service 'sera install service' added",
		Long: `Stop and disable sera.service and remove ` + install.LocalUnitPath + `.
The key, known clients and settings (` + install.ConfigDir + `) and the state and audit
log (` + install.StateDir + `) are kept. A service installed by the Debian package
is removed with the package (apt remove sera).`,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			s, err := service(o)
			if err != nil {
				return err
			}
			if !dryRun && !o.Env.IsRoot && o.Host == nil {
				return errors.New("removing the service needs root (try --dry-run to see what it would do)")
			}
			p, err := s.PlanUninstall()
			if err != nil {
				return err
			}
			return p.Execute(c.Context(), o.Stdout, dryRun, install.UnitName+" is not installed; nothing to do")
		},
	}
	cli.AddDryRun(c, &dryRun)
	return c
}
