package commands

import (
	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/accounts"
)

// checkAccountName validates a user or group name before anything reads or
// changes the host; a bad one is a usage error.
func checkAccountName(kind, name string) error {
	if err := accounts.CheckName(kind, name); err != nil {
		return cli.AsUsage(err)
	}
	return nil
}

// userArg is the PreRunE of commands whose first argument is a user name.
func userArg(_ *cobra.Command, args []string) error { return checkAccountName("user", args[0]) }

// loadUser loads the account database and the manageable user name.
func (h *Host) loadUser(name string) (*accounts.DB, *accounts.User, error) {
	db, err := accounts.Load(h.Sys)
	if err != nil {
		return nil, nil, err
	}
	u, err := db.ManageableUser(name)
	if err != nil {
		return nil, nil, err
	}
	return db, u, nil
}
