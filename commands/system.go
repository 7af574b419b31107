package commands

import (
	"github.com/spf13/cobra"
)

// addDryRun gives a changing command its --dry-run flag.
func addDryRun(c *cobra.Command, dryRun *bool) {
	c.Flags().BoolVar(dryRun, "dry-run", false, "print the exact changes and make none")
}
