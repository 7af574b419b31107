package sera

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
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
	// MinBackoff and MaxBackoff bound the wait after a transport error.
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

	status WatcherStatus
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
	minB, maxB := orDefault(w.MinBackoff, time.Second), orDefault(w.MaxBackoff, time.Minute)
	backoff := minB
	lastPurge := time.Time{}
	var lastHousekeeping time.Time
	every := orDefault(w.HousekeepingEvery, 30*time.Second)
	// A poll never outlasts the housekeeping period, so housekeeping is
	// never late by more than one period.
	wait = min(wait, every)
	for ctx.Err() == nil {
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
		msgs, err := w.Transport.Receive(ctx, w.Queue(), 1, wait, orDefault(w.Visibility, 30*time.Second))
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

func (w *Watcher) notify() {
	if w.OnPoll != nil {
		w.OnPoll(w.status)
	}
}

// decision is the outcome of checking one message.
type decision struct {
	rec AuditRecord
	// keep leaves the message on the queue for a later retry.
	keep bool
}

// Handle processes one received message: checks, runs, replies, audits
// and deletes it. It is exported for tests that drive the watcher one
// message at a time.
func (w *Watcher) Handle(ctx context.Context, m *transport.Message) {
	d := w.handle(ctx, m)
	switch d.rec.Decision {
	case DecisionRejected:
		w.status.Rejected++
	case DecisionAccepted:
		w.status.Accepted++
	}
	if err := w.Audit.Audit(d.rec); err != nil {
		w.log().Error("audit failed", "err", err)
	}
	attrs := []any{"decision", d.rec.Decision}
	if d.rec.ClaimedSender != "" {
		attrs = append(attrs, "claimed_sender", d.rec.ClaimedSender)
	} else {
		attrs = append(attrs, "client", d.rec.Client)
	}
	if d.rec.RequestID != "" {
		attrs = append(attrs, "id", d.rec.RequestID)
	}
	if d.rec.Reason != "" {
		attrs = append(attrs, "rule", d.rec.Rule, "reason", d.rec.Reason)
	}
	if d.rec.Exit != nil {
		attrs = append(attrs, "exit", *d.rec.Exit)
	}
	w.log().Info("request", attrs...)
	if d.keep {
		return
	}
	if err := w.Transport.Delete(ctx, w.Queue(), m); err != nil {
		w.log().Warn("delete failed; the request may be delivered again (it will not run again)", "err", err)
	}
}

func (w *Watcher) handle(ctx context.Context, m *transport.Message) decision {
	now := w.now()
	d := decision{rec: AuditRecord{Time: now, Decision: DecisionRejected}}
	reject := func(rule int, format string, args ...any) decision {
		d.rec.Rule, d.rec.Reason = rule, fmt.Sprintf(format, args...)
		return d
	}

	// Rule 1: the envelope parses and is within size limits.
	env, err := crypto.ParseEnvelope(m.Body)
	if err != nil {
		return reject(1, "%v", err)
	}
	// Until rule 4 the sender is only claimed: anyone can write any key
	// into an envelope, so it is recorded as claimed, with no name.
	d.rec.ClaimedSender = env.Sender.Fingerprint()

	// Rule 2: the sender is a known client.
	client, err := w.Clients.Lookup(env.Sender)
	if err != nil {
		return reject(2, "known clients unreadable, refusing every request: %v", err)
	}
	if client == nil {
		return reject(2, "unknown client")
	}

	// Rules 3 and 4: our recipient entry opens, then the payload, and the
	// signature verifies.
	payload, err := env.Open(w.Identity)
	switch {
	case errors.Is(err, crypto.ErrNotRecipient), errors.Is(err, crypto.ErrBoxOpen):
		return reject(3, "%v", err)
	case err != nil:
		return reject(4, "%v", err)
	}
	req, err := ParseRequest(payload)
	if err != nil {
		return reject(4, "%v", err)
	}
	d.rec.RequestID = req.ID
	if want := transport.ClientQueue(w.Prefix, client.Key.Fingerprint()); req.ReplyTo != want {
		return reject(4, "reply queue %q is not the sender's (%s)", req.ReplyTo, want)
	}
	d.rec.ClaimedSender, d.rec.Client, d.rec.ClientName = "", client.Key.Fingerprint(), client.Name

	// From here the sender is authenticated, and every outcome is final:
	// the id is recorded until it expires whatever the decision, so a
	// request refused now (for its target, its time, its signer's trust)
	// can never run later, and a redelivery gets the same answer.
	prior, err := w.Replay.Begin(client.Key.Fingerprint(), req.ID, req.ExpiresAt)
	if err != nil {
		return w.deferred(ctx, d, client, req, "the watcher cannot record requests (its state disk may be full)", err, now)
	}
	if prior != nil {
		return w.duplicate(ctx, d, client, req, prior, now)
	}
	refuse := func(rule int, format string, args ...any) decision {
		d = reject(rule, format, args...)
		d.keep = !w.finish(ctx, client, req, Result{Status: StatusRejected, Stderr: []byte(d.rec.Reason + "\n")}, d.rec.Reason, now)
		return d
	}

	// Signed before this key was trusted (or given its grants): the
	// request was never the act of a client the watcher knew.
	if !client.Added.IsZero() && req.IssuedAt.Before(client.Added) {
		return refuse(2, "signed at %s, before client %s was trusted with its grants (%s); if it was not, check the clocks",
			req.IssuedAt.UTC().Format(time.RFC3339), client.Name, client.Added.Format(time.RFC3339))
	}

	// Rule 5: the signed target selects this watcher.
	if !req.Target.Selects(w.Name, w.Groups) {
		return refuse(5, "target %q does not select watcher %s", req.Target.String(), w.Name)
	}
	// Rule 6: within its lifetime, allowing for clock skew.
	if req.IssuedAt.After(now.Add(MaxClockSkew)) {
		return refuse(6, "issued %s in the future, beyond the allowed clock skew of %s", req.IssuedAt.Sub(now).Round(time.Second), MaxClockSkew)
	}
	if now.After(req.ExpiresAt) {
		return refuse(6, "expired %s ago", now.Sub(req.ExpiresAt).Round(time.Second))
	}

	// Rule 7 (never run an id twice) was settled above, before rule 5,
	// so that the refusals of rules 5 and 6 are final too.

	// Rule 8: a command on the allowlist, permitted to this client, with
	// arguments its own validation accepts.
	command, err := w.Handler.Resolve(req.Argv)
	// Permission first: a client learns nothing from the validation of
	// a command it may not run (it may look at the host's state).
	if (err == nil || command != "") && !client.Allows(command) {
		d.rec.Rule, d.rec.Reason = 8, fmt.Sprintf("client %s may not run %q", client.Name, command)
		d.keep = !w.finish(ctx, client, req, Result{Status: StatusRejected, Stderr: []byte(d.rec.Reason + "\n")}, d.rec.Reason, now)
		return d
	}
	// The scope of the grant, also before validation: a client with keys
	// of alice only learns nothing of bob's account from an error.
	if a, ok := w.Handler.(Authorizer); ok && command != "" {
		var perm *PermissionError
		if aerr := a.Authorize(client, req.Argv); errors.As(aerr, &perm) || aerr != nil && err == nil {
			d.rec.Rule, d.rec.Reason = 8, "not permitted"
			if perm != nil {
				d.rec.Reason = perm.Reason
			}
			msg := d.rec.Reason
			if perm == nil {
				msg = aerr.Error() // not audited: it may quote an argument
			}
			d.keep = !w.finish(ctx, client, req, Result{Status: StatusRejected, Stderr: []byte(msg + "\n")}, d.rec.Reason, now)
			return d
		}
	}
	if err != nil {
		d.rec.Rule, d.rec.Reason = 8, "invalid command line"
		if command != "" {
			d.rec.Reason += " for " + command
		}
		// The client sees the validation error; the audit log does not,
		// as it may quote a secret argument.
		d.keep = !w.finish(ctx, client, req, Result{Status: StatusRejected, Stderr: []byte(err.Error() + "\n")}, d.rec.Reason, now)
		return d
	}

	d.rec.Decision = DecisionAccepted
	d.rec.Argv = w.Handler.Redact(req.Argv)
	// Nothing runs unaudited: the record that it is about to run is on
	// disk before it does.
	start := d.rec
	start.Decision = DecisionRunning
	if err := w.Audit.Audit(start); err != nil {
		w.log().Error("audit log unwritable; not running the request", "id", req.ID, "err", err)
		if ferr := w.Replay.Forget(client.Key.Fingerprint(), req.ID); ferr != nil {
			w.log().Error("failed to forget the request in the replay cache; it will not run", "id", req.ID, "err", ferr)
		}
		d.rec.Decision, d.rec.Argv = DecisionRejected, nil
		return w.deferred(ctx, d, client, req, "the watcher cannot write its audit log", err, now)
	}
	limit, asked := w.execLimit(req)
	stop := w.keepHidden(ctx, m, command, limit)
	res, timedOut := w.runLimited(ctx, &Call{Argv: req.Argv, Command: command, Client: client, RequestID: req.ID}, limit)
	stop()
	if timedOut {
		// Whatever it printed before stays; the last line says why it
		// ended.
		why := shortDuration(limit)
		if asked > limit {
			why += fmt.Sprintf(", this watcher's limit (the request asked for %s),", shortDuration(asked))
		}
		res.Status = StatusTimedOut
		res.Stderr = append(res.Stderr[:len(res.Stderr):len(res.Stderr)], endLine(res.Stderr)+"sera: the command ran longer than "+why+" and was killed\n"...)
		d.rec.Reason = "timed out after " + shortDuration(limit)
	}
	d.rec.Exit = &res.Status
	if !w.finish(ctx, client, req, res, "", now) {
		// The reply is stored; a redelivery will resend it.
		d.keep = true
	}
	return d
}

// execLimit is how long the command of req may run: the request's own
// limit, if it names one, capped at the watcher's. asked is the request's.
func (w *Watcher) execLimit(req *Request) (limit, asked time.Duration) {
	limit = orDefault(w.ExecTimeout, DefaultExecTimeout)
	if asked = req.ExecTimeout(); asked > 0 {
		limit = min(limit, asked)
	}
	return limit, asked
}

// runLimited runs call with a context that ends after limit. ctx is the
// one Handle was given: Run's serve context without its cancel, so SIGTERM
// lets the command finish and only the limit ends it. timedOut reports
// whether the command returned after its limit (its result is then that of
// a killed command, whatever status it gave).
func (w *Watcher) runLimited(ctx context.Context, call *Call, limit time.Duration) (res Result, timedOut bool) {
	runCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	res = w.runSafely(runCtx, call)
	return res, errors.Is(runCtx.Err(), context.DeadlineExceeded)
}

// endLine is what b needs before a new line is appended to it.
func endLine(b []byte) string {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return "\n"
	}
	return ""
}

// shortDuration writes d as people do: 10m, 1h30m, 200ms.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// runSafely turns a panic in a command into a failed result: one broken
// command must not take the watcher down.
func (w *Watcher) runSafely(ctx context.Context, call *Call) (res Result) {
	defer func() {
		if p := recover(); p != nil {
			w.log().Error("command panicked", "command", call.Command, "panic", p)
			res = Result{Status: 70, Stderr: []byte("internal error in " + call.Command + "\n")}
		}
	}()
	return w.Handler.Run(ctx, call)
}

// finish stores the reply in the replay cache and sends it. It reports
// whether the reply was sent.
func (w *Watcher) finish(ctx context.Context, client *KnownClient, req *Request, res Result, rejected string, started time.Time) bool {
	sealed, err := w.reply(ctx, client, req, res, rejected, started)
	if sealed != nil {
		if ferr := w.Replay.Finish(client.Key.Fingerprint(), req.ID, req.ExpiresAt, sealed); ferr != nil {
			w.log().Error("failed to store reply in replay cache", "id", req.ID, "err", ferr)
		}
	}
	if err != nil {
		w.log().Warn("reply failed", "id", req.ID, "err", err)
		return false
	}
	return true
}

// deferred answers a request the watcher could not record or audit: it
// did not run, the client is told why (not that it was refused), and the
// message stays queued so that a delivery after the fault is fixed runs
// it, once, while it is valid.
func (w *Watcher) deferred(ctx context.Context, d decision, client *KnownClient, req *Request, what string, err error, now time.Time) decision {
	d.rec.Rule, d.rec.Reason = 7, fmt.Sprintf("%s, not running (will retry): %v", what, err)
	msg := fmt.Sprintf("%s (%v): not run; it stays queued and runs once the watcher can record it, if still before %s\n",
		what, err, req.ExpiresAt.UTC().Format(time.RFC3339))
	if _, rerr := w.reply(ctx, client, req, Result{Status: StatusDeferred, Stderr: []byte(msg)}, "", now); rerr != nil {
		w.log().Warn("reply failed", "id", req.ID, "err", rerr)
	}
	d.keep = true
	return d
}

func (w *Watcher) duplicate(ctx context.Context, d decision, client *KnownClient, req *Request, prior *ReplayEntry, now time.Time) decision {
	d.rec.Decision = DecisionDuplicate
	d.rec.Rule = 7
	if !prior.Done {
		d.rec.Reason = "interrupted earlier; not run again"
		res := Result{Status: StatusInterrupted, Stderr: []byte("the watcher stopped while this request ran; it was not run again\n")}
		d.keep = !w.finish(ctx, client, req, res, d.rec.Reason, now)
		return d
	}
	d.rec.Reason = "already run; stored reply sent again"
	if err := w.send(ctx, req.ReplyTo, prior.Replies); err != nil {
		w.log().Warn("resending stored reply failed", "id", req.ID, "err", err)
		d.keep = true
	}
	return d
}

// reply seals res for client, split into as many messages as it needs,
// and sends them. It returns the sealed messages even when sending fails,
// so they can be stored and resent.
func (w *Watcher) reply(ctx context.Context, client *KnownClient, req *Request, res Result, rejected string, started time.Time) ([][]byte, error) {
	body, err := json.Marshal(&Reply{
		ID: req.ID, Watcher: w.Name, Status: res.Status, Stdout: res.Stdout, Stderr: res.Stderr,
		Started: started, Ended: w.now(), Rejected: rejected,
	})
	if err != nil {
		return nil, fmt.Errorf("failed to encode reply: %w", err)
	}
	// Sealing adds a header, a MAC and base64: size each part so its
	// message fits the transport.
	size := (w.Transport.MaxMessageSize()-crypto.MaxReplyOverhead)*3/4 - partHeader
	if size < 1 {
		return nil, fmt.Errorf("transport messages of %d bytes cannot carry a reply", w.Transport.MaxMessageSize())
	}
	chunks, err := splitReply(body, size)
	if err != nil {
		return nil, err
	}
	sealed := make([][]byte, len(chunks))
	for i, c := range chunks {
		sealed[i], err = crypto.SealReply(w.rand(), w.Identity, client.Key, encodePart(req.ID, i, len(chunks), c))
		if err != nil {
			return nil, err
		}
	}
	return sealed, w.send(ctx, req.ReplyTo, sealed)
}

func (w *Watcher) send(ctx context.Context, queue string, msgs [][]byte) error {
	for _, b := range msgs {
		if err := w.Transport.Send(ctx, queue, b); err != nil {
			return fmt.Errorf("failed to send reply: %w", err)
		}
	}
	return nil
}

// keepHidden extends the request's visibility while its command runs, so
// a slow command is not delivered to a second receiver, and reports the
// watcher alive through OnPoll (see ExecGrace) until the command has run
// limit plus ExecGrace.
func (w *Watcher) keepHidden(ctx context.Context, m *transport.Message, command string, limit time.Duration) (stop func()) {
	vis := orDefault(w.Visibility, 30*time.Second)
	every := min(busyReportEvery, orDefault(w.PollWait, 20*time.Second))
	lost := limit + orDefault(w.execGrace, ExecGrace)
	// The serve loop waits in Handle, so this copy is the status until
	// the command returns; the goroutine reads only the copy.
	busy := w.status
	busy.Running, busy.RunningSince = command, w.now()
	started := time.Now()
	if w.OnPoll != nil {
		w.OnPoll(busy)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(vis / 3)
		defer t.Stop()
		alive := time.NewTicker(every)
		defer alive.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := w.Transport.ChangeVisibility(ctx, w.Queue(), m, vis); err != nil {
					w.log().Warn("failed to extend visibility", "err", err)
				}
			case <-alive.C:
				if ran := time.Since(started); ran > lost {
					alive.Stop()
					w.log().Error("command still running long past its execution timeout; no longer reporting the watcher alive, so that systemd's watchdog restarts it",
						"command", command, "running", ran.Round(time.Second), "limit", limit)
					continue
				}
				if w.OnPoll != nil {
					w.OnPoll(busy)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
