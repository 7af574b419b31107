package sera

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

// A reply part for a request this process does not wait for may be
// another process's of the same identity, so it is handed back to the
// queue; but anyone who can write to the queue can also send parts nobody
// waits for, and handed back for ever they would crowd out every later
// reply. So a part is handed back only while the queue's own record of it
// (never its body, which its sender chose) is within these bounds, and
// then deleted. A process waiting for a part receives it within a few
// deliveries and seconds; the bounds are far from that.
const (
	// foreignMaxReceives: a part received this often, by any process,
	// is nobody's.
	foreignMaxReceives = 20
	// foreignMaxAge: a part the queue took this long ago is nobody's.
	foreignMaxAge = 10 * time.Minute
	// foreignMaxPause is the longest a process hides a part it has
	// handed back before (see run.release).
	foreignMaxPause = 16 * time.Second
)

// Client sends requests to watchers and collects their replies.
type Client struct {
	Identity  *crypto.Identity
	Transport transport.Transport
	Prefix    string
	// TTL is the request lifetime (SERA_REQUEST_TTL).
	TTL time.Duration
	// Known are the watchers of this identity (its known_watchers). A
	// reply part sealed by any other key is deleted on sight: no process
	// of the identity can be waiting for it. Nil trusts the watchers of
	// the job only, so other processes lose replies from the rest.
	Known *KnownWatchers
	// Optional.
	Now  func() time.Time
	Rand io.Reader
	Log  *slog.Logger
}

// HostReply is one watcher's accepted reply.
type HostReply struct {
	Watcher *KnownWatcher
	Reply   *Reply
}

// Job is one request to one or more watchers.
type Job struct {
	// Watchers are the recipients, in the order they are sent the request.
	Watchers []*KnownWatcher
	// Target is the selector as the admin typed it; it is signed, and
	// each watcher checks that it selects it.
	Target Target
	Argv   []string
	// Timeout is how long to wait for a watcher's reply, counted from
	// when the request was sent to it.
	Timeout time.Duration
	// ExecTimeout, if positive, asks each watcher to kill the command
	// when it runs longer (the watcher's own limit caps it).
	ExecTimeout time.Duration
	// MaxConcurrency, if positive, bounds how many watchers have the
	// request in flight at once: the next is sent when one answers or
	// times out.
	MaxConcurrency int
	// StopAfter, if positive, is the number of failed watchers (a reply
	// with a non-zero status, no reply in time, or a failed send) after
	// which no further watcher is sent the request. Those not sent it
	// are Skipped.
	StopAfter int
	// Topic, if set, is the SNS topic whose subscribers are exactly
	// Watchers (the group's, or the one of every watcher): the request
	// is then published once instead of sent to every queue, provided
	// the transport can publish, MaxConcurrency and StopAfter are unset
	// and the request fits one message. A publish that fails delivered
	// nothing, so the client falls back to direct sends.
	Topic string
	// OnEvent, if set, is called for every event of the job, in order,
	// from the goroutine that called Run.
	OnEvent func(Event)
}

// EventKind says what happened to one watcher of a job.
type EventKind int

// The events of a job. Every watcher gets EventSent or EventSendFailed or
// EventSkipped, and after EventSent exactly one of EventReply or
// EventTimedOut.
const (
	EventSent EventKind = iota
	EventSendFailed
	EventSkipped
	EventReply
	EventTimedOut
)

// Event is one step of a job for one watcher.
type Event struct {
	Kind    EventKind
	Watcher *KnownWatcher
	// Reply is set for EventReply, Err for EventSendFailed.
	Reply *Reply
	Err   error
}

// Outcome is the result of one request to one or more watchers.
type Outcome struct {
	RequestID string
	Replies   []HostReply
	// Missing are the watchers that sent no reply before the timeout.
	Missing []*KnownWatcher
	// SendErrors are the watchers the request could not be sent to.
	SendErrors map[string]error
	// Skipped are the watchers never sent the request because StopAfter
	// failures came first.
	Skipped []*KnownWatcher
	// Published is the topic the request was published to, if it was.
	Published string
}

// Failed counts the watchers that failed: a reply with a non-zero
// status, no reply in time, or a failed send. Skipped ones are not
// counted.
func (o *Outcome) Failed() int {
	n := len(o.Missing) + len(o.SendErrors)
	for _, r := range o.Replies {
		if r.Reply.Status != 0 {
			n++
		}
	}
	return n
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) rand() io.Reader {
	if c.Rand != nil {
		return c.Rand
	}
	return rand.Reader
}

func (c *Client) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Queue is this client's reply queue.
func (c *Client) Queue() string {
	return transport.ClientQueue(c.Prefix, c.Identity.Public().Fingerprint())
}

// Do sends argv to watchers, signed for target, and waits up to timeout for
// their replies, calling onReply (if set) as each arrives. It is Run with
// the rest of the Job left at its defaults.
func (c *Client) Do(ctx context.Context, watchers []*KnownWatcher, target Target, argv []string, timeout time.Duration, onReply func(HostReply)) (*Outcome, error) {
	job := &Job{Watchers: watchers, Target: target, Argv: argv, Timeout: timeout}
	if onReply != nil {
		job.OnEvent = func(e Event) {
			if e.Kind == EventReply {
				onReply(HostReply{Watcher: e.Watcher, Reply: e.Reply})
			}
		}
	}
	return c.Run(ctx, job)
}

// sendWorkers bounds the sends in progress at once: enough to hide the
// round trip of each, few enough not to exhaust the connection pool.
const sendWorkers = 32

// flight is a watcher that was sent the request and has not answered.
type flight struct {
	w        *KnownWatcher
	deadline time.Time
}

// Run sends the job's request and collects the replies: all at once, or
// MaxConcurrency at a time, until every watcher answered, timed out, was
// skipped or could not be sent to. Replies from watchers not in the job,
// or for other requests, are never accepted. The error is for the job as a
// whole (nothing could be sent, the reply queue failed, ctx ended); each
// watcher's own result is in the Outcome.
func (c *Client) Run(ctx context.Context, job *Job) (*Outcome, error) {
	if len(job.Watchers) == 0 {
		return nil, errors.New("no watchers to send to")
	}
	if job.Timeout <= 0 {
		return nil, fmt.Errorf("timeout %s: a watcher must be given time to answer", job.Timeout)
	}
	if job.ExecTimeout < 0 || job.ExecTimeout > MaxRequestLifetime {
		return nil, fmt.Errorf("execution timeout %s outside 0 to %s", job.ExecTimeout, MaxRequestLifetime)
	}
	id, err := NewRequestID(c.rand())
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, w := range job.Watchers {
		fp := w.Key.Fingerprint()
		if seen[fp] {
			return nil, fmt.Errorf("watcher %s is in the job twice", w.Name)
		}
		seen[fp] = true
	}
	trusted := maps.Clone(seen)
	if c.Known != nil {
		for _, w := range c.Known.Watchers {
			trusted[w.Key.Fingerprint()] = true
		}
	}
	r := &run{c: c, job: job, id: id, out: &Outcome{RequestID: id, SendErrors: map[string]error{}},
		inflight: map[string]*flight{}, partial: map[string]*assembly{}, foreign: map[string]int{}, trusted: trusted}
	err = r.loop(ctx)
	r.finishDeletes()
	return r.out, err
}

// run is the state of one Run.
type run struct {
	c   *Client
	job *Job
	id  string
	out *Outcome

	inflight map[string]*flight // by fingerprint
	failed   int
	partial  map[string]*assembly
	// foreign counts how often this run handed back each part for
	// another request, by request id, watcher and part.
	foreign map[string]int
	// trusted are the fingerprints of the watchers replies may come
	// from: the job's and Client.Known's.
	trusted map[string]bool

	deletes  chan *transport.Message
	deleting sync.WaitGroup
}

// deleteWorkers delete replies taken, off the receive path: one
// DeleteMessage at a time made the client, not the watchers, the limit on
// how fast 1,000 replies come in.
const deleteWorkers = 8

// deleteLater deletes a reply that has served its purpose, in the
// background; finishDeletes waits for every one.
func (r *run) deleteLater(ctx context.Context, m *transport.Message) {
	if r.deletes == nil {
		r.deletes = make(chan *transport.Message, 64)
		// A delete outlives an interrupted job: else the reply comes
		// back to haunt the next process of this identity.
		ctx = context.WithoutCancel(ctx)
		for range deleteWorkers {
			r.deleting.Add(1)
			go func() {
				defer r.deleting.Done()
				for m := range r.deletes {
					dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					if err := r.c.Transport.Delete(dctx, r.c.Queue(), m); err != nil {
						r.c.log().Debug("delete failed", "err", err)
					}
					cancel()
				}
			}()
		}
	}
	r.deletes <- m
}

func (r *run) finishDeletes() {
	if r.deletes != nil {
		close(r.deletes)
		r.deleting.Wait()
	}
}

func (r *run) emit(e Event) {
	if r.job.OnEvent != nil {
		r.job.OnEvent(e)
	}
}

func (r *run) loop(ctx context.Context) error {
	queue := slices.Clone(r.job.Watchers)
	sentAny := false
	stopped := func() bool { return r.job.StopAfter > 0 && r.failed >= r.job.StopAfter }
	for {
		// Whether to send more is decided here only, after every reply
		// received so far was counted: once StopAfter failures are in,
		// no further watcher is sent the request.
		if len(queue) > 0 && !stopped() {
			n := len(queue)
			if r.job.MaxConcurrency > 0 {
				n = min(n, r.job.MaxConcurrency-len(r.inflight))
			}
			if n > 0 {
				wave := queue[:n]
				queue = queue[n:]
				ok, err := r.send(ctx, wave)
				if err != nil {
					return err
				}
				sentAny = sentAny || ok
			}
		}
		if len(r.inflight) == 0 {
			if len(queue) == 0 || stopped() {
				break
			}
			continue
		}
		if err := r.receive(ctx); err != nil {
			return err
		}
	}
	if len(queue) > 0 {
		r.out.Skipped = queue
		for _, w := range queue {
			r.emit(Event{Kind: EventSkipped, Watcher: w})
		}
	}
	if !sentAny {
		return fmt.Errorf("failed to send the request to any watcher: %w", firstError(r.out.SendErrors))
	}
	return nil
}

// request is the payload for watchers sent it now: the same id for the
// whole job, the lifetime counted from now, so a watcher sent it late in
// a job paced by MaxConcurrency still gets a full delivery lifetime.
func (r *run) request() ([]byte, time.Time, error) {
	now := r.c.now()
	ttl := r.c.TTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	req := &Request{
		ID: r.id, IssuedAt: now, ExpiresAt: now.Add(ttl),
		Target: r.job.Target, Argv: r.job.Argv, ReplyTo: r.c.Queue(),
		ExecTimeoutMS: r.job.ExecTimeout.Milliseconds(),
	}
	b, err := req.Marshal()
	if err != nil {
		return nil, now, fmt.Errorf("failed to encode request: %w", err)
	}
	return b, now, nil
}

// send seals the request for ws and delivers it: one publish when the job
// has a topic and it can, else one send per watcher queue, several at a
// time. It reports whether any watcher was sent it; an error means none
// can be (the request cannot be sealed).
func (r *run) send(ctx context.Context, ws []*KnownWatcher) (bool, error) {
	payload, now, err := r.request()
	if err != nil {
		return false, err
	}
	keys := make([]*crypto.PublicKey, len(ws))
	for i, w := range ws {
		keys[i] = w.Key
	}
	sealed, err := crypto.Seal(r.c.rand(), r.c.Identity, keys, payload)
	if err != nil {
		return false, err
	}
	if r.publishable(len(ws)) {
		if ok := r.publish(ctx, sealed, ws); ok {
			return true, nil
		}
	}
	// Each queue gets the envelope with its watcher's entry only: every
	// recipient's entry in every queue would make a request to 1,000
	// watchers 100 MB of traffic instead of 0.7.
	type delivery struct {
		w   *KnownWatcher
		env []byte
	}
	jobs := make([]delivery, len(ws))
	for i, w := range ws {
		env, err := sealed.EnvelopeFor(w.Key)
		if err == nil && len(env) > r.c.Transport.MaxMessageSize() {
			err = fmt.Errorf("request is %d bytes, the transport takes at most %d", len(env), r.c.Transport.MaxMessageSize())
		}
		if err != nil {
			return false, fmt.Errorf("failed to seal request: %w", err)
		}
		jobs[i] = delivery{w, env}
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(sendWorkers, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = r.c.Transport.Send(ctx, transport.WatcherQueue(r.c.Prefix, jobs[i].w.Name), jobs[i].env)
			}
		}()
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	sentOne := false
	deadline := now.Add(r.job.Timeout)
	for i, j := range jobs {
		if errs[i] != nil {
			r.out.SendErrors[j.w.Name] = errs[i]
			r.failed++
			r.emit(Event{Kind: EventSendFailed, Watcher: j.w, Err: errs[i]})
			continue
		}
		sentOne = true
		r.inflight[j.w.Key.Fingerprint()] = &flight{w: j.w, deadline: deadline}
		r.emit(Event{Kind: EventSent, Watcher: j.w})
	}
	return sentOne, nil
}

func (r *run) publishable(n int) bool {
	_, ok := r.c.Transport.(transport.Publisher)
	return ok && r.job.Topic != "" && n == len(r.job.Watchers) && r.job.MaxConcurrency <= 0 && r.job.StopAfter <= 0
}

// publish sends the request to the job's topic if it fits one message,
// and reports whether it did.
func (r *run) publish(ctx context.Context, sealed *crypto.Sealed, ws []*KnownWatcher) bool {
	p := r.c.Transport.(transport.Publisher)
	env, err := sealed.Envelope()
	if err != nil || len(env) > p.MaxPublishSize() {
		// Several messages on one topic would reach every subscriber
		// each, with all but one not for it: send to each queue
		// instead.
		r.c.log().Debug("request does not fit one publish; sending to each queue", "topic", r.job.Topic)
		return false
	}
	now := r.c.now()
	if err := p.Publish(ctx, r.job.Topic, env); err != nil {
		r.c.log().Warn("publish failed; sending to each queue", "topic", r.job.Topic, "err", err)
		return false
	}
	r.out.Published = r.job.Topic
	deadline := now.Add(r.job.Timeout)
	for _, w := range ws {
		r.inflight[w.Key.Fingerprint()] = &flight{w: w, deadline: deadline}
		r.emit(Event{Kind: EventSent, Watcher: w})
	}
	return true
}

// receive waits for replies until the earliest deadline of the watchers
// in flight, takes what arrived, and times out those whose deadline
// passed.
func (r *run) receive(ctx context.Context) error {
	now := r.c.now()
	earliest := time.Time{}
	for _, f := range r.inflight {
		if earliest.IsZero() || f.deadline.Before(earliest) {
			earliest = f.deadline
		}
	}
	if left := earliest.Sub(now); left > 0 {
		msgs, err := r.c.Transport.Receive(ctx, r.c.Queue(), 10, min(left, 20*time.Second), 30*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("failed to receive replies: %w", err)
		}
		for _, m := range msgs {
			r.take(ctx, m)
		}
	}
	// In job order, so events and Missing do not depend on map order.
	now = r.c.now()
	for _, w := range r.job.Watchers {
		fp := w.Key.Fingerprint()
		if f, ok := r.inflight[fp]; ok && !now.Before(f.deadline) {
			delete(r.inflight, fp)
			delete(r.partial, fp)
			r.failed++
			r.out.Missing = append(r.out.Missing, w)
			r.emit(Event{Kind: EventTimedOut, Watcher: w})
		}
	}
	return nil
}

func firstError(m map[string]error) error {
	for _, e := range m {
		return e
	}
	return nil
}

// assembly collects the parts of one watcher's reply.
type assembly struct {
	parts [][]byte
	have  int
}

// take handles one message from the reply queue: a verified part of a
// reply to this job is kept, a part of a reply to another request of this
// identity handed back for the process that waits for it (see release),
// anything else deleted: what does not parse or open, what a key outside
// the identity's watchers sealed, and parts of this job's request nobody
// waits for any more.
func (r *run) take(ctx context.Context, m *transport.Message) {
	c := r.c
	drop := func(why string) {
		c.log().Debug("reply dropped", "why", why, "receives", m.Receives)
		r.deleteLater(ctx, m)
	}
	sr, err := crypto.ParseReply(m.Body)
	if err != nil {
		drop("malformed: " + err.Error())
		return
	}
	fp := sr.From.Fingerprint()
	if !r.trusted[fp] {
		// Before opening it: anyone may seal a box to this identity, and
		// no process of it waits for a key it does not know.
		drop("sealed by a key outside known_watchers")
		return
	}
	plain, err := sr.Open(c.Identity)
	if err != nil {
		drop("does not open")
		return
	}
	p, err := parsePart(plain)
	if err != nil {
		drop(err.Error())
		return
	}
	f, ours := r.inflight[fp]
	if p.id == r.id && !ours {
		// A second copy (a duplicate delivery answered again), a reply
		// after its watcher timed out, or from a watcher this request
		// was not sent to: only this process waits for id, so nobody
		// needs it.
		drop("duplicate, late or unaddressed")
		return
	}
	if p.id != r.id {
		r.release(ctx, m, fmt.Sprintf("%s/%s/%d", p.id, fp, p.part), drop)
		return
	}
	// Verified and ours: the message has served its purpose.
	r.deleteLater(ctx, m)
	a := r.partial[fp]
	if a == nil || len(a.parts) != p.parts {
		a = &assembly{parts: make([][]byte, p.parts)}
		r.partial[fp] = a
	}
	if a.parts[p.part] == nil {
		a.parts[p.part] = append([]byte{}, p.data...)
		a.have++
	}
	if a.have < len(a.parts) {
		return
	}
	delete(r.partial, fp)
	reply, err := ParseReplyBody(bytes.Join(a.parts, nil))
	if err != nil || reply.ID != r.id {
		c.log().Warn("reply from watcher does not decode", "watcher", f.w.Name, "err", err)
		return
	}
	delete(r.inflight, fp)
	if reply.Status != 0 {
		r.failed++
	}
	r.out.Replies = append(r.out.Replies, HostReply{Watcher: f.w, Reply: reply})
	r.emit(Event{Kind: EventReply, Watcher: f.w, Reply: reply})
}

// release hands back a part of a reply to another request, which another
// process of this identity may be waiting for, unless the queue's record of
// it says nobody is: received foreignMaxReceives times, or taken by the
// queue more than foreignMaxAge ago. The first time this run sees the part
// it is visible again at once, for the process that waits; each time after,
// this run hides it a little longer (1 s, 2 s, … foreignMaxPause), so a
// queue full of such parts does not keep this run from its own replies.
func (r *run) release(ctx context.Context, m *transport.Message, key string, drop func(string)) {
	c := r.c
	if m.Receives >= foreignMaxReceives {
		drop(fmt.Sprintf("for another request, received %d times", m.Receives))
		return
	}
	if !m.Sent.IsZero() && c.now().Sub(m.Sent) > foreignMaxAge {
		drop(fmt.Sprintf("for another request, queued %s ago", c.now().Sub(m.Sent).Round(time.Second)))
		return
	}
	seen := r.foreign[key]
	r.foreign[key] = seen + 1
	delay := time.Duration(0)
	if seen > 0 {
		delay = min(time.Second<<min(seen-1, 10), foreignMaxPause)
	}
	if err := c.Transport.ChangeVisibility(ctx, c.Queue(), m, delay); err != nil {
		c.log().Debug("release failed", "err", err)
	}
}
