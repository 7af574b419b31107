package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sshkeys"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
)

// ExpiredDay is the expiry usermod -e 1970-01-02 sets (days since 1970)
// on a locked account: PAM refuses an expired account for every SSH
// method, keys included.
const (
	ExpiredDay  = 1
	expiredDate = "1970-01-02"
)

// lockRecord remembers what "user lock" changed, so that "user unlock"
// reverses exactly that and nothing else.
type lockRecord struct {
	// PasswordLocked is true if sera locked the password (it was not
	// locked before).
	PasswordLocked bool `json:"password_locked"`
	// ExpiresBefore is the account's expiry before the lock (days since
	// 1970, -1 for never).
	ExpiresBefore int `json:"expires_before"`
}

// LockRecordPath is where 'user lock' records what it changed, for
// 'user unlock' to reverse exactly that.
func LockRecordPath(sys *host.System, name string) string {
	state := sys.State
	if state == "" {
		state = sys.Path("/var/lib/sera")
	}
	return filepath.Join(state, "locks", name+".json")
}

// PlanLock plans 'sera user lock': the password locked, the account
// expired, every key sera manages disabled, the user's processes ended,
// and a record of what was so before, which PlanUnlock restores.
func PlanLock(sys *host.System, db *DB, u *User) plan.Plan {
	sh := db.Shadow[u.Name]
	// The user can make ~/.ssh unreadable to sera (a planted link); that
	// must not stop the rest of the lock. The password, the expiry and the
	// sessions are done, then the step for the keys fails and says so.
	before, keysErr := sshkeys.Load(sys, u.Owner())
	var p plan.Plan
	recPath := LockRecordPath(sys, u.Name)
	if _, err := os.Lstat(recPath); errors.Is(err, fs.ErrNotExist) && (!sh.Locked() || sh.Expires != ExpiredDay) {
		rec := lockRecord{PasswordLocked: !sh.Locked(), ExpiresBefore: sh.Expires}
		p.Add("record the state to restore on unlock in "+recPath, func(context.Context) error {
			b, _ := json.Marshal(rec)
			if err := safefile.MkdirPrivate(filepath.Dir(recPath)); err != nil {
				return err
			}
			return safefile.WriteAtomic(recPath, b, 0o600)
		})
	}
	if !sh.Locked() {
		p.Run(sys.Exec, "usermod", "--lock", "--", u.Name)
	}
	if sh.Expires != ExpiredDay {
		p.Run(sys.Exec, "usermod", "--expiredate", expiredDate, "--", u.Name)
	}
	if keysErr == nil {
		after := before.Clone()
		what := sshkeys.SetDisabled(after, true)
		sshkeys.PlanWrite(&p, sys, u.Owner(), before, after, strings.Join(what, "; "))
	}
	planKill(&p, sys, u)
	if keysErr != nil {
		p.Add(fmt.Sprintf("disable the keys sera manages for %s (cannot: %v)", u.Name, keysErr), func(context.Context) error {
			return errors.New("the keys were not disabled")
		})
	}
	return p
}

// planKill adds the end of u's running processes, if it has any.
func planKill(p *plan.Plan, sys *host.System, u *User) {
	if n := CountProcesses(sys, u.UID); n > 0 {
		uid := u.UID
		p.Add(fmt.Sprintf("end the %d running process(es) of %s: pkill --signal KILL --uid %d", n, u.Name, uid), func(ctx context.Context) error {
			return killUser(ctx, sys, uid)
		})
	}
}

// PlanUnlock plans 'sera user unlock': exactly what PlanLock changed, as
// its record says, reversed.
func PlanUnlock(sys *host.System, db *DB, u *User) (plan.Plan, error) {
	sh := db.Shadow[u.Name]
	recPath := LockRecordPath(sys, u.Name)
	// Without a record (lost, or locked by hand), a locked password is
	// taken for sera's only on an account expired as lock expires it: a
	// password locked on an account sera did not lock stays locked.
	rec := lockRecord{PasswordLocked: sh.Locked() && len(sh.Hash) > 2 && sh.Expires == ExpiredDay, ExpiresBefore: -1}
	b, err := safefile.ReadNoFollow(recPath)
	hasRec := err == nil
	if hasRec {
		if err := json.Unmarshal(b, &rec); err != nil {
			return plan.Plan{}, fmt.Errorf("failed to read %s: %w", recPath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return plan.Plan{}, err
	}
	before, err := sshkeys.Load(sys, u.Owner())
	if err != nil {
		return plan.Plan{}, err
	}
	var p plan.Plan
	if rec.PasswordLocked && sh.Locked() {
		p.Run(sys.Exec, "usermod", "--unlock", "--", u.Name)
	}
	if sh.Expires == ExpiredDay && rec.ExpiresBefore != ExpiredDay {
		date := ""
		if rec.ExpiresBefore >= 0 {
			date = time.Unix(int64(rec.ExpiresBefore)*86400, 0).UTC().Format("2006-01-02")
		}
		p.Run(sys.Exec, "usermod", "--expiredate", date, "--", u.Name)
	}
	after := before.Clone()
	what := sshkeys.SetDisabled(after, false)
	sshkeys.PlanWrite(&p, sys, u.Owner(), before, after, strings.Join(what, "; "))
	if hasRec {
		p.Add("remove "+recPath, func(context.Context) error { return os.Remove(recPath) })
	}
	return p, nil
}

// LockedBySera reports whether u is locked by 'user lock' (expired the
// way lock expires, with lock's record): keys added meanwhile must not
// open the account.
func LockedBySera(sys *host.System, db *DB, u *User) bool {
	if db.Shadow[u.Name].Expires != ExpiredDay {
		return false
	}
	_, err := os.Lstat(LockRecordPath(sys, u.Name))
	return err == nil
}
