package commands

import (
	"fmt"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host/accounts"
	"github.com/sera-dev/sera/host/sudo"
	"github.com/sera-dev/sera/plan"
)

// An account that can sudo is root (accounts.Privileged says which can):
// whoever may log in as it, change its keys, password or groups, or put
// any account into a group that carries sudo, may become root; so each
// of those needs the sudo grant too (callerMay "sudo grant").

// guardSudo refuses a change that reaches an account that can sudo,
// unless the caller may grant sudo itself. what says what the change does
// ("add keys to alice"); why is privileged's reason.
func guardSudo(who *sera.KnownClient, what, why string) error {
	if why == "" {
		return nil
	}
	if err := callerMay(who, "sudo grant"); err != nil {
		return plan.Unchanged(fmt.Errorf("refusing to %s: %s; that needs the sudo grant (%w)", what, why, err))
	}
	return nil
}

// guardAccount is guardSudo for a change to account a (as it is, or as the
// change leaves it): it loads sudoers itself.
func (h *Host) guardAccount(who *sera.KnownClient, db *accounts.DB, what string, accts ...accounts.Account) error {
	if callerMay(who, "sudo grant") == nil {
		return nil
	}
	v, err := sudo.ReadView(h.Sys)
	if err != nil {
		// Unsure is privileged.
		return guardSudo(who, what, err.Error())
	}
	for _, a := range accts {
		if err := guardSudo(who, what, accounts.Privileged(v, db, a)); err != nil {
			return err
		}
	}
	return nil
}
