// Package host is the one seam between sera's host commands and the host
// they change: programs run with argv, files under a root, the clock, the
// host's names and addresses, HTTP, and sera's state directory. The
// domain packages below it (accounts, sshkeys, sudo, firewall, hostkeys)
// reach the host only through a *System, so a unit test gives them a
// System of its own (a temporary root, a recording runner, a fixed
// clock) and no test swaps a global.
package host

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"time"
)

// Runner runs programs on the host. It execs argv directly: no shell ever
// sees an argument.
type Runner interface {
	Run(ctx context.Context, argv ...string) (stdout []byte, err error)
}

// InputRunner is a Runner that can feed a program's standard input: the
// way secrets (password hashes) reach a program, as argv is readable by
// every user in /proc/PID/cmdline while it runs.
type InputRunner interface {
	RunInput(ctx context.Context, stdin []byte, argv ...string) (stdout []byte, err error)
}

// Clock tells the time.
type Clock interface {
	Now() time.Time
}

// Net is what the host is known by on the network. It reads process-wide
// state (the UTS and network namespaces sera runs in).
type Net interface {
	Hostname() (string, error)
	Addrs() ([]netip.Addr, error)
}

// System is the host a command runs against.
type System struct {
	// Exec runs programs.
	Exec Runner
	// FS is the host's file system under its root.
	FS FS
	// Clock is the host's clock.
	Clock Clock
	// Net gives the host's names and addresses.
	Net Net
	// HTTP fetches what a command needs from the web (the admin's public
	// address for 'sera allow').
	HTTP *http.Client
	// State is SERA_STATE (archives of deleted homes, lock files, the
	// openings 'sera allow' made), a path on the host outside FS's root
	// translation: it is sera's own.
	State string
}

// Real is this machine: programs exec'd with ExecRunner, files under /,
// the real clock, network and HTTP. state is SERA_STATE; "" is
// /var/lib/sera.
func Real(state string) *System {
	if state == "" {
		state = DefaultState
	}
	return &System{
		Exec:  ExecRunner{},
		FS:    FS{},
		Clock: realClock{},
		Net:   realNet{},
		HTTP:  &http.Client{Timeout: 10 * time.Second},
		State: state,
	}
}

// DefaultState is SERA_STATE of root.
const DefaultState = "/var/lib/sera"

// ForTest is a System for unit tests: files under root, programs run by
// r, time from clock; no network. state "" is root/var/lib/sera.
func ForTest(root string, r Runner, clock Clock) *System {
	s := &System{Exec: r, FS: FS{Root: root}, Clock: clock, Net: NoNet{}, HTTP: &http.Client{Transport: noHTTP{}}}
	s.State = filepath.Join(root, DefaultState)
	return s
}

// Now is the host's time.
func (s *System) Now() time.Time { return s.Clock.Now() }

// Run runs argv.
func (s *System) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return s.Exec.Run(ctx, argv...)
}

// ErrNoStdin is returned by RunInput when the System's runner cannot feed
// a program's standard input.
var ErrNoStdin = errors.New("this host's runner cannot pass standard input")

// RunInput runs argv with stdin, which never appears on argv.
func (s *System) RunInput(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	r, ok := s.Exec.(InputRunner)
	if !ok {
		return nil, ErrNoStdin
	}
	return r.RunInput(ctx, stdin, argv...)
}

// Path maps an absolute host path into the System's root.
func (s *System) Path(p string) string { return s.FS.Path(p) }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// ClockFunc is a Clock that calls itself.
type ClockFunc func() time.Time

// Now implements Clock.
func (f ClockFunc) Now() time.Time { return f() }

// FixedClock is a Clock that always says T, for tests.
type FixedClock struct{ T time.Time }

// Now implements Clock.
func (c FixedClock) Now() time.Time { return c.T }

// NoNet is a Net with no name and no address.
type NoNet struct{}

// Hostname implements Net.
func (NoNet) Hostname() (string, error) { return "", errors.New("no network in this test") }

// Addrs implements Net.
func (NoNet) Addrs() ([]netip.Addr, error) { return nil, nil }

// StaticNet is a Net with a fixed name and addresses, for tests.
type StaticNet struct {
	Host string
	IPs  []netip.Addr
	// Err, if set, is what Hostname and Addrs return.
	Err error
}

// Hostname implements Net.
func (n StaticNet) Hostname() (string, error) { return n.Host, n.Err }

// Addrs implements Net.
func (n StaticNet) Addrs() ([]netip.Addr, error) { return n.IPs, n.Err }

type noHTTP struct{}

func (noHTTP) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no network in this test")
}

// ErrMissing marks an error for something a command needs that this host
// lacks: a program not installed, a directory that is not there. It is a
// failure of the host, not of the command line: the watcher answers it as
// failed (status 1) with its cause, never as a refusal.
var ErrMissing = errors.New("missing on this host")

type missingError struct{ msg string }

func (e *missingError) Error() string        { return e.msg }
func (e *missingError) Is(target error) bool { return target == ErrMissing }

// Missing is an error, formatted as fmt.Sprintf does, that is ErrMissing.
func Missing(format string, args ...any) error {
	return &missingError{msg: fmt.Sprintf(format, args...)}
}
