package sera

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

// Remote exit statuses the watcher itself produces. They follow the shell's
// convention for "could not run".
const (
	// StatusRejected: the request was refused (acceptance rules 5 to 8).
	StatusRejected = 126
	// StatusInterrupted: the watcher stopped while the request ran and
	// will not run it again.
	StatusInterrupted = 125
	// StatusTimedOut: the command ran past its execution timeout and was
	// killed, as timeout(1) reports it.
	StatusTimedOut = 124
	// StatusDeferred: the watcher could not record or audit the request
	// (its state disk is full, its audit log unwritable), so it did not
	// run it; it leaves the request queued and runs it once it can, while
	// the request is valid.
	StatusDeferred = 123
)

// Execution timeouts. A command runs at most its request's exec_timeout_ms,
// capped at the watcher's ExecTimeout (SERA_EXEC_TIMEOUT), which is also the
// limit of a request that names none.
//
// How they fit systemd's watchdog (install.WatchdogSec, 90 s): while a
// command runs, the watcher keeps calling OnPoll at least every 10 s, so
// a command may run far longer than WatchdogSec without the watchdog
// killing a healthy watcher. At its limit the command's context ends (its
// programs are killed); a command that still has not returned ExecGrace
// later — a program stuck in the kernel, Go code that ignores its context
// — is past saving: the watcher stops calling OnPoll, so the watchdog
// restarts it at most WatchdogSec after that, at most limit + ExecGrace +
// WatchdogSec after the command started.
const (
	// DefaultExecTimeout is the watcher's limit when ExecTimeout is 0: far
	// longer than any host command takes (ufw, archiving a large home),
	// short enough that a hung one frees the watcher soon.
	DefaultExecTimeout = 10 * time.Minute
	// ExecGrace is how long a command may take to return after its
	// limit before the watcher stops reporting itself healthy. It covers
	// the kill, the wait for a killed program's output (5 s) and the
	// command's own clean-up.
	ExecGrace = 30 * time.Second
	// busyReportEvery is the longest the watcher goes without calling
	// OnPoll while a command runs (shorter if PollWait is).
	busyReportEvery = 10 * time.Second
)

// Handler runs the host commands a watcher offers. The core knows commands
// only through it: argv in, result out.
type Handler interface {
	// Resolve validates argv as the command would, without running it,
	// and returns the command's path ("ping", "user add").
	Resolve(argv []string) (command string, err error)
	// Redact returns argv with secret values masked, for the audit log.
	Redact(argv []string) []string
	// Run runs a resolved command line.
	Run(ctx context.Context, call *Call) Result
}

// HostFailure is a Resolve error that is the host's, not the command
// line's: a program or directory the command needs is missing, a file
// cannot be read. The request is not refused (status 126, rule 8) but
// answered as failed (status 1) with the cause, and audited as accepted
// with exit 1 and the cause: the client may run it and the command line is
// valid; the host could not. Nothing runs.
type HostFailure struct{ Err error }

func (e *HostFailure) Error() string { return e.Err.Error() }
func (e *HostFailure) Unwrap() error { return e.Err }

// Authorizer is implemented by a Handler whose grants can be narrowed by
// a command's arguments (scoped grants): Authorize, the end of rule 8,
// runs after Resolve accepted argv and reports whether client may run it
// on the subjects argv names. Nothing has run when it refuses.
type Authorizer interface {
	Authorize(client *KnownClient, argv []string) error
}

// PermissionError is an Authorizer's refusal for want of a grant (rule 8).
// Its Reason names the client, the command and the subject, never an
// argument's value that could be secret, so it is audited as it is.
type PermissionError struct{ Reason string }

func (e *PermissionError) Error() string { return e.Reason }

// Call is one accepted request handed to the Handler.
type Call struct {
	Argv      []string
	Command   string
	Client    *KnownClient
	RequestID string
}

// Result is what a command produced.
type Result struct {
	Status int
	Stdout []byte
	Stderr []byte
	// Changed says the command changed the host (a step of its plan was
	// done), even if it failed after; a refusal or a no-op is false.
	Changed bool
}

// ClientStore looks up the clients a watcher trusts. ClientFile is the
// production implementation.
type ClientStore interface {
	Lookup(*crypto.PublicKey) (*KnownClient, error)
}

// WatcherStatus is what the serve loop reports after each poll, and
// while a command runs (for systemd's STATUS= and the watchdog).
type WatcherStatus struct {
	LastPoll time.Time
	// PollOK is false when the last poll failed.
	PollOK                       bool
	Received, Accepted, Rejected int
	// Running is the command that runs ("user add"), "" between
	// requests; RunningSince is when it started.
	Running      string
	RunningSince time.Time
}

// DefaultMaxBackoff is the longest a watcher waits before it polls again
// after a failed poll: a queue created, or a server back, is served within
// it (plus one poll).
const DefaultMaxBackoff = 10 * time.Second

// Watcher serves one host: it receives requests from its queue, applies the
// acceptance rules of DESIGN.md in order, runs accepted commands through
// its Handler and replies on the client's queue.
type Watcher struct {
	Identity  *crypto.Identity
	Name      string
	Groups    []string
	Prefix    string
	Transport transport.Transport
	Clients   ClientStore
	Handler   Handler
	Replay    *ReplayCache
	Audit     Auditor
	// Optional.
	Log  *slog.Logger
	Now  func() time.Time
	Rand io.Reader
	// PollWait is the long-poll wait (20 s), Visibility how long a
	// received request stays hidden before it is extended (30 s).
	PollWait, Visibility time.Duration
	// MinBackoff and MaxBackoff bound the wait after a transport error
	// (1 s and DefaultMaxBackoff); a poll that succeeds resets it.
	MinBackoff, MaxBackoff time.Duration
	// OnPoll, if set, is called after every poll and, while a command
	// runs, when it starts and then at least every 10 s (every PollWait
	// if that is shorter), with Running set, until the command has
	// outlived its execution timeout by ExecGrace. Each call means the
	// watcher is alive, so it may feed a watchdog. Calls never overlap.
	OnPoll func(WatcherStatus)
	// ExecTimeout is the longest a command may run, and the limit for a
	// request that names none (SERA_EXEC_TIMEOUT); 0 means
	// DefaultExecTimeout. A command still running at its limit has its
	// context cancelled and is answered with StatusTimedOut.
	ExecTimeout time.Duration
	// execGrace replaces ExecGrace in tests.
	execGrace time.Duration
	// Housekeeping, if set, runs when Run starts and then at least every
	// HousekeepingEvery (default 30 s) between polls, e.g. to close
	// firewall openings that expired, also those that expired while the
	// watcher was stopped. It must not block for long.
	Housekeeping      func(ctx context.Context)
	HousekeepingEvery time.Duration
	// HeartbeatEvery, if set, is how often the watcher sends a Heartbeat
	// to each client HeartbeatTo lists (every client may ping); the
	// first after a random part of the interval.
	HeartbeatEvery time.Duration
	HeartbeatTo    func() ([]*KnownClient, error)
	// HeartbeatInfo, if set, tells a heartbeat what the watcher itself
	// does not know: sera's version and the number of ufw openings (nil
	// if it cannot tell).
	HeartbeatInfo func(ctx context.Context) (version string, openings *int)

	status  WatcherStatus
	started time.Time
	beats   heartbeats
}

func (w *Watcher) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *Watcher) rand() io.Reader {
	if w.Rand != nil {
		return w.Rand
	}
	return rand.Reader
}

func (w *Watcher) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Queue is the watcher's command queue.
func (w *Watcher) Queue() string { return transport.WatcherQueue(w.Prefix, w.Name) }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Run serves until ctx is done. A command that is running when ctx ends
// is finished and answered; no new request is taken. Transport errors are
// retried with jittered exponential backoff; Run returns only when ctx is
// done (nil) or on a setup error.
func (w *Watcher) Run(ctx context.Context) error {
	if w.Identity == nil || w.Transport == nil || w.Clients == nil || w.Handler == nil || w.Replay == nil || w.Audit == nil {
		return errors.New("watcher is missing a dependency")
	}
	if err := CheckName(w.Name); err != nil {
		return fmt.Errorf("invalid watcher name: %w", err)
	}
	wait := orDefault(w.PollWait, 20*time.Second)
	minB, maxB := orDefault(w.MinBackoff, time.Second), orDefault(w.MaxBackoff, DefaultMaxBackoff)
	backoff := minB
	lastPurge := time.Time{}
	var lastHousekeeping time.Time
	every := orDefault(w.HousekeepingEvery, 30*time.Second)
	// A poll never outlasts the housekeeping period, so housekeeping is
	// never late by more than one period.
	wait = min(wait, every)
	w.started = w.now()
	for ctx.Err() == nil {
		// Nor does it outlast the time to the next heartbeat.
		pollWait := min(wait, w.heartbeatDue(ctx, w.now()))
		if now := w.now(); w.Housekeeping != nil && now.Sub(lastHousekeeping) >= every {
			w.Housekeeping(ctx)
			lastHousekeeping = now
		}
		if now := w.now(); now.Sub(lastPurge) > time.Minute {
			if n, err := w.Replay.Purge(now); err != nil {
				w.log().Warn("replay cache purge failed", "err", err)
			} else if n > 0 {
				w.log().Debug("replay cache purged", "entries", n)
			}
			lastPurge = now
		}
		msgs, err := w.Transport.Receive(ctx, w.Queue(), 1, pollWait, orDefault(w.Visibility, 30*time.Second))
		w.status.LastPoll = w.now()
		w.status.PollOK = err == nil
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			// Half fixed, half random: watchers of a fleet that lose
			// the queue together do not come back in lockstep.
			sleep := backoff/2 + mrand.N(backoff/2+1)
			w.log().Warn("receive failed; retrying", "queue", w.Queue(), "err", err, "in", sleep.Round(time.Millisecond))
			w.notify()
			select {
			case <-ctx.Done():
			case <-time.After(sleep):
			}
			backoff = min(2*backoff, maxB)
			continue
		}
		backoff = minB
		for _, m := range msgs {
			w.status.Received++
			// Once taken, a request is seen through even if ctx ends.
			w.Handle(context.WithoutCancel(ctx), m)
		}
		w.notify()
	}
	return nil
}
