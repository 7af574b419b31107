package hosttest

import (
	"context"
	"os/exec"
	"testing"
)

// SSHOptions changes how [Host.SSHWith] logs in. The zero value is what
// [Host.SSH] does.
type SSHOptions struct {
	// KnownHosts is a known_hosts file to check the host key against
	// (StrictHostKeyChecking=yes). Empty: any host key is accepted and
	// none is recorded.
	KnownHosts string
	// From runs the client inside that host instead of this machine's
	// namespace; keyFile and KnownHosts are then paths inside it.
	From *Host
}

// SSH runs the real OpenSSH client from this machine's network namespace:
// it logs in to the host as user with the private key in keyFile and runs
// args there, returning the combined output. A refused login is an
// *exec.ExitError (ssh exits 255). The client reads no ssh_config, no agent
// and no default keys (-F /dev/null, IdentitiesOnly), never prompts
// (BatchMode), accepts any host key and gives up connecting after 30 s (a
// guard: a refused login fails at once, a firewalled port only then).
func (h *Host) SSH(t testing.TB, user, keyFile string, args ...string) ([]byte, error) {
	t.Helper()
	return h.SSHWith(t, SSHOptions{}, user, keyFile, args...)
}

// SSHWith is [Host.SSH] with options.
func (h *Host) SSHWith(t testing.TB, o SSHOptions, user, keyFile string, args ...string) ([]byte, error) {
	t.Helper()
	if o.From == nil {
		requireHost(t, "ssh")
	}
	argv := []string{
		"-F", "/dev/null",
		"-i", keyFile,
		"-l", user,
		"-T",
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "BatchMode=yes",
		"-o", "ConnectTimeout=30",
		"-o", "LogLevel=ERROR",
		"-o", "ControlMaster=no",
		"-o", "ControlPath=none",
	}
	if o.KnownHosts == "" {
		argv = append(argv, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")
	} else {
		argv = append(argv, "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+o.KnownHosts,
			"-o", "GlobalKnownHostsFile=/dev/null")
	}
	argv = append(append(argv, "--", h.Addr), args...)

	ctx, cancel := context.WithTimeout(context.Background(), mustTimeout)
	defer cancel()
	var cmd *exec.Cmd
	if o.From != nil {
		cmd = o.From.Command(ctx, append([]string{"ssh"}, argv...)...)
	} else {
		cmd = exec.CommandContext(ctx, "ssh", argv...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C"} // no SSH_AUTH_SOCK
	}
	return cmd.CombinedOutput()
}
