// Package admin holds the commands an admin runs on a laptop or a host
// that no watcher ever executes: keys and settings, the known watchers,
// AWS provisioning, known-hosts sync, the fleet's health, the service
// installer. They are apart from package commands, whose host
// commands are the watcher's allowlist, so nothing here can be reached by
// a request.
package admin

import (
	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/cli"
)

// Commands are the admin commands, for the root command.
func Commands(o *cli.Options) []*cobra.Command {
	return []*cobra.Command{
		newKeygenCmd(o),
		newPubkeyCmd(o),
		newConfigCmd(o),
		newExportCmd(o),
		newVersionCmd(o),
		newInstallCmd(o),
		newUninstallCmd(o),
		newWatchersCmd(o),
		newStatusCmd(o),
		newKnownHostsCmd(o),
		newProvisionCmd(o),
		newWatcherCmd(o),
		newClientCmd(o),
		newPolicyCmd(o),
	}
}
