package sera

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

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

	// receiveErr is the last receive's error, nil once one succeeds;
	// receiveFails counts the failures in a row; receiveWarned is set
	// once the user was told of one.
	receiveErr    error
	receiveFails  int
	receiveWarned bool
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
	if err := r.probe(ctx); err != nil {
		return err
	}
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
		r.c.warn(fmt.Sprintf("publishing to topic %s failed, so the request goes to each watcher's queue instead: %v", r.job.Topic, err))
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
