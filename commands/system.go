package commands

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/safefile"
)

// setPasswordHash sets user's password hash with chpasswd -e, the hash
// on its standard input, never on argv.
func (h *Host) setPasswordHash(ctx context.Context, user, hash string) error {
	_, err := h.Sys.RunInput(ctx, []byte(user+":"+hash+"\n"), "chpasswd", "--encrypted")
	if errors.Is(err, host.ErrNoStdin) {
		return fmt.Errorf("failed to set the password: %w", err)
	}
	return err
}

// lockAccounts serializes account changes on the host, so two requests
// (or a request and a --local command) for one user cannot interleave.
func (h *Host) lockAccounts() (unlock func(), err error) {
	dir := h.Sys.State
	if err := safefile.MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return safefile.Lock(filepath.Join(dir, "accounts.lock"))
}

// addDryRun gives a changing command its --dry-run flag.
func addDryRun(c *cobra.Command, dryRun *bool) {
	c.Flags().BoolVar(dryRun, "dry-run", false, "print the exact changes and make none")
}
