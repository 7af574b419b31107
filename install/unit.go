// Package install makes the sera watcher a systemd service: the unit file,
// the /etc/sera layout, installing and removing the service on a host,
// sd_notify readiness and watchdog, and the journald audit sink. The Debian
// package (packaging/) ships the same unit and env file, generated from
// this package.
package install

import (
	"fmt"
	"strings"
	"time"
)

// Paths of the service on a host.
const (
	// UnitName is the systemd unit of the watcher.
	UnitName = "sera.service"
	// PackageUnitPath is where the Debian package puts the unit.
	PackageUnitPath = "/lib/systemd/system/" + UnitName
	// LocalUnitPath is where 'sera install service' writes it; it
	// overrides the package's unit.
	LocalUnitPath = "/etc/systemd/system/" + UnitName
	// ConfigDir is the watcher's SERA_HOME: key, known_clients, env.
	ConfigDir = "/etc/sera"
	// EnvPath is the settings file, read by sera and by systemd's
	// EnvironmentFile=.
	EnvPath = ConfigDir + "/env"
	// KeyPath is the watcher's private key; the unit does not start
	// without it (ConditionPathExists=).
	KeyPath = ConfigDir + "/key"
	// StateDir is SERA_STATE, systemd's StateDirectory=sera.
	StateDir = "/var/lib/sera"
	// PackageBinary is where the Debian package puts sera.
	PackageBinary = "/usr/bin/sera"
)

// WatchdogSec is the unit's WatchdogSec=. The watcher reports from its
// poll loop at least every WatchdogSec/3 (it shortens its long poll and
// its retry backoff to fit) and, while a command runs, every 10 s (or
// that poll wait, if shorter), so only a loop that is stuck for a whole
// WatchdogSec gets the service killed and restarted. A command may run
// longer than WatchdogSec, up to its execution timeout (SERA_EXEC_TIMEOUT,
// sera.DefaultExecTimeout 10 min), when it is killed; one that has still
// not returned sera.ExecGrace later counts as stuck: the reports stop, and
// systemd restarts the watcher within WatchdogSec.
const WatchdogSec = 90 * time.Second

// TimeoutStopSec is the unit's TimeoutStopSec=: how long systemd waits
// after SIGTERM before it kills the watcher. The watcher finishes the
// command that runs, so the wait covers the longest one by default
// (sera.DefaultExecTimeout) plus its grace and the reply. A watcher with
// a longer SERA_EXEC_TIMEOUT needs a drop-in that raises it.
const TimeoutStopSec = 11 * time.Minute

// Hardening is the sandboxing the unit applies to the watcher and to
// every command it runs, each with why it does not get in the way of
// account, key, group, sudoers and ufw work. Options that would are left
// out on purpose: ProtectSystem= (useradd writes /etc), ProtectHome=
// (authorized_keys live in /home), PrivateDevices= and ProtectClock=
// (device access lists), CapabilityBoundingSet= (useradd, chown, kill
// and iptables need most of root's capabilities), MemoryDenyWriteExecute=
// (ufw is Python), PrivateNetwork= and IPAddressDeny= (the queue is on the
// network).
var Hardening = []struct{ Option, Why string }{
	{"NoNewPrivileges=yes", "the watcher runs as root already; nothing it runs needs a setuid transition"},
	{"PrivateTmp=yes", "no command uses /tmp; users' /tmp files stay out of reach"},
	{"ProtectKernelTunables=yes", "no command writes /proc/sys or /sys (ufw ignores a failed sysctl, its boot service applies them)"},
	{"ProtectKernelModules=yes", "netfilter modules are still loaded on demand by the kernel"},
	{"ProtectKernelLogs=yes", "nothing reads the kernel log"},
	{"ProtectControlGroups=yes", "ending a user's processes uses signals, not cgroups"},
	{"RestrictSUIDSGID=yes", "sera never creates setuid or setgid files"},
	{"RestrictRealtime=yes", "nothing needs realtime scheduling"},
	{"RestrictNamespaces=yes", "nothing creates namespaces"},
	{"LockPersonality=yes", "nothing changes its execution domain"},
	{"SystemCallArchitectures=native", "sera and the tools it runs are native binaries"},
	{"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "the queue (IP), journald and nscd (unix), iptables and ip (netlink)"},
}

// Unit returns the systemd unit that runs "exe watch". exe must be an
// absolute path.
func Unit(exe string) (string, error) {
	q, err := execPath(exe)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# The sera watcher: serves this host's queue and runs the allowlisted
# account, key, group, sudo and firewall commands that known clients send.
# Settings: %[1]s (sera config list). Logs and audit: journalctl -u sera.
# Change it with a drop-in (systemctl edit sera), not here.
[Unit]
Description=sera watcher: host administration over a message queue
Documentation=man:sera-watch(1)
After=network-online.target
Wants=network-online.target
# No key yet (sera keygen): skipped, not failed and restarted.
ConditionPathExists=%[2]s

[Service]
Type=notify
NotifyAccess=main
ExecStart=%[3]s watch
# sera reads %[1]s itself; systemd passes it on too (for AWS_* variables).
EnvironmentFile=-%[1]s
StateDirectory=sera
StateDirectoryMode=0700
UMask=0077
Restart=on-failure
RestartSec=5s
WatchdogSec=%[4]ds
# SIGTERM to sera only: a command that is running is finished and answered,
# for as long as it may run (SERA_EXEC_TIMEOUT, 10 min by default).
KillMode=mixed
TimeoutStopSec=%[5]ds

`, EnvPath, KeyPath, q, int(WatchdogSec/time.Second), int(TimeoutStopSec/time.Second))
	for _, h := range Hardening {
		fmt.Fprintf(&b, "%s\n", h.Option)
	}
	b.WriteString(`
[Install]
WantedBy=multi-user.target
`)
	return b.String(), nil
}

// execPath writes exe for ExecStart=: absolute, quoted when it has
// spaces, with systemd's specifier character escaped.
func execPath(exe string) (string, error) {
	if !strings.HasPrefix(exe, "/") {
		return "", fmt.Errorf("sera's path %q is not absolute", exe)
	}
	if strings.ContainsAny(exe, "\"'\\\n\r\t$") {
		return "", fmt.Errorf("sera's path %q has characters a unit file cannot hold plainly; move sera to /usr/local/bin", exe)
	}
	exe = strings.ReplaceAll(exe, "%", "%%")
	if strings.Contains(exe, " ") {
		exe = `"` + exe + `"`
	}
	return exe, nil
}

// EnvTemplate is the env file a fresh host starts with: every line a
// comment, so the defaults apply until 'sera config set' changes one.
const EnvTemplate = `# sera settings: KEY=VALUE lines, read by sera and by systemd
# (EnvironmentFile= in sera.service). A variable of the same name in the
# environment wins. 'sera config list' shows every setting and where its
# value comes from; 'sera config set KEY=VALUE' changes one.
#
#SERA_NAME=web1
#SERA_GROUPS=web,eu
#SERA_TRANSPORT=sqs
#SERA_REGION=eu-west-1
#
# The AWS SDK reads its own variables from here too when systemd runs sera,
# e.g. AWS_ENDPOINT_URL=https://sqs.eu-west-1.amazonaws.com
`
