package accounts

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/safefile"
)

// Lock serializes account changes on the host, so two requests (or a
// request and a --local command) for one user cannot interleave.
func Lock(sys *host.System) (unlock func(), err error) {
	dir := sys.State
	if err := safefile.MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return safefile.Lock(filepath.Join(dir, "accounts.lock"))
}

// setPasswordHash sets user's password hash with chpasswd -e, the hash
// on its standard input, never on argv.
func setPasswordHash(ctx context.Context, sys *host.System, user, hash string) error {
	_, err := sys.RunInput(ctx, []byte(user+":"+hash+"\n"), "chpasswd", "--encrypted")
	if errors.Is(err, host.ErrNoStdin) {
		return fmt.Errorf("failed to set the password: %w", err)
	}
	return err
}

// CountProcesses counts the processes running as uid.
func CountProcesses(sys *host.System, uid int) int {
	ents, err := sys.FS.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sys.Path("/proc"), e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
				if f[1] == strconv.Itoa(uid) {
					n++
				}
				break
			}
		}
	}
	return n
}

// killUser ends every process of uid. pkill's status 1 means none was
// left, which is the goal.
func killUser(ctx context.Context, sys *host.System, uid int) error {
	_, err := sys.Exec.Run(ctx, "pkill", "--signal", "KILL", "--uid", strconv.Itoa(uid))
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil
	}
	return err
}

// CheckShell requires a shell that exists and, if the host has
// /etc/shells, is listed there.
func CheckShell(sys *host.System, shell string) error {
	if fi, err := sys.FS.Stat(shell); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("invalid --shell %s: no such program on this host", shell)
	}
	b, err := sys.FS.ReadFile("/etc/shells")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == shell {
			return nil
		}
	}
	return fmt.Errorf("invalid --shell %s: not listed in /etc/shells", shell)
}
