package sera

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

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
	if !transport.IsReplyQueue(w.Prefix, client.Key.Fingerprint(), req.ReplyTo) {
		return reject(4, "reply queue %q is not one of the sender's (%s, or it with -1 to -%d)",
			req.ReplyTo, transport.ClientQueue(w.Prefix, client.Key.Fingerprint()), transport.MaxReplyQueues-1)
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
		if len(req.Target.Groups) == 0 {
			return refuse(5, "target %q does not select watcher %s", req.Target.String(), w.Name)
		}
		// The client sent it here because its known_watchers puts this
		// watcher in the group; the watcher's own SERA_GROUPS does not.
		// Groups are set on both sides: say which, and how to agree.
		have := "none"
		if len(w.Groups) > 0 {
			have = strings.Join(w.Groups, ",")
		}
		want := slices.Clone(w.Groups)
		for _, g := range req.Target.Groups {
			if !slices.Contains(want, g) {
				want = append(want, g)
			}
		}
		return refuse(5, "target %q does not select watcher %s: its own groups (SERA_GROUPS on %s) are %s, but the request for %s reached it, "+
			"so the client's known_watchers (or the queue's subscription to the group's topic) puts it there; groups are set on both sides: "+
			"on %s run 'sera config set SERA_GROUPS=%s' and restart the watcher, or change %s's groups in the client's known_watchers ('sera watchers add %s KEY --group …')",
			req.Target.String(), w.Name, w.Name, have, strings.Join(req.Target.Groups, ","), w.Name, strings.Join(want, ","), w.Name, w.Name)
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
	var failure *HostFailure
	if errors.As(err, &failure) {
		// Not a refusal: the host failed before anything ran.
		d.rec.Decision = DecisionAccepted
		d.rec.Argv = w.Handler.Redact(req.Argv)
		d.rec.Reason = "failed on this host before it ran: " + failure.Error()
		exit := 1
		d.rec.Exit = &exit
		d.keep = !w.finish(ctx, client, req, Result{Status: exit, Stderr: []byte(failure.Error() + "\n")}, "", now)
		return d
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
		Started: started, Ended: w.now(), Rejected: rejected, Changed: res.Changed,
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

// A reply that fails to send is tried again for up to replyRetryFor,
// pausing from replyRetryMin, doubling, to replyRetryMax: a queue server
// away for seconds delays the reply by seconds, instead of until the
// request is delivered again (its visibility timeout) and answered from
// the replay cache.
const (
	replyRetryMin = 250 * time.Millisecond
	replyRetryMax = 4 * time.Second
	replyRetryFor = 20 * time.Second
)

func (w *Watcher) send(ctx context.Context, queue string, msgs [][]byte) error {
	for _, b := range msgs {
		pause, waited := replyRetryMin, time.Duration(0)
		for {
			err := w.Transport.Send(ctx, queue, b)
			if err == nil {
				break
			}
			if errors.Is(err, transport.ErrTooLarge) || errors.Is(err, transport.ErrInvalidQueueName) ||
				errors.Is(err, transport.ErrNoQueue) || waited >= replyRetryFor || ctx.Err() != nil {
				return fmt.Errorf("failed to send reply: %w", err)
			}
			w.log().Warn("sending reply failed; retrying", "queue", queue, "err", err, "in", pause)
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("failed to send reply: %w", err)
			case <-t.C:
			}
			waited += pause
			pause = min(2*pause, replyRetryMax)
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
