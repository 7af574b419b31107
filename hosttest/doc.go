// Package hosttest runs real Debian hosts on this machine for tests: each
// host is a set of Linux namespaces (network, mount, UTS, IPC, PID) over an
// overlay of a cached Debian bookworm root, running the real OpenSSH server.
// Tests run real useradd, ufw and ssh logins inside a host while this
// machine's own /etc, /home and firewall stay untouched.
//
//	n := hosttest.NewNet(t)
//	h := n.Start(t, "web1")
//	h.MustExec(t, "useradd", "-m", "alice")
//	out, err := h.SSH(t, "alice", keyFile, "id", "-un")
//
// # Requirements
//
// Root, Linux with overlayfs, and in the machine's own namespace: nsenter,
// ip, tar, zstd, plus debootstrap and network access to the Debian mirror
// the first time (cold cache); .ci/install-host-deps installs them. Without
// root or a tool the tests skip — unless CI=true, where they fail.
//
// # What the machine itself gets
//
// Per [Net]: one bridge "serabr<N>" with address 10.200.N.1/24 (and hence
// the connected route 10.200.N.0/24) and one veth per host attached to it,
// all deleted at cleanup; a lock file /run/lock/sera-hosttest/net-<N>.lock.
// Nothing else: no NAT, no ip_forward, no sysctl, no firewall rule. Hosts
// have no default route, so their traffic never leaves the bridge.
// The Debian root is cached under $SERA_TEST_CACHE (default
// /var/cache/sera-test); see [Root].
//
// # Inside a host
//
// PID 1 is this package's own init (the test binary re-executed, see
// below); it starts "sshd -D -e" and reaps orphans. There is no systemd:
// systemctl is not even installed (exit 127), so code under test must not
// depend on it there; reload sshd with a signal (pkill -HUP -x sshd), which
// restarts it in place. /proc/sys is read-only except /proc/sys/net (which is per
// network namespace), so a sysctl written in a host cannot change this
// machine's kernel; /sys is a fresh read-only sysfs; /dev is this machine's
// /dev bound in; /run and /tmp are private tmpfs. Each host gets its own SSH
// host keys. sshd's log goes to a file that is printed when a test fails.
//
// # The init hook
//
// Importing this package registers an init function: a process started with
// the environment variable SERA_HOSTTEST_INIT set, as PID 1 of a new PID
// namespace, becomes a host's init (or the sandbox that builds the root)
// and never returns to main. Any other process is unaffected.
package hosttest
