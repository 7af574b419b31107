package sera

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

// Receive errors are retried until the deadline, after a pause that
// doubles from receiveRetryMin to receiveRetryMax: a queue server that is
// away for a few seconds costs a few seconds, not the replies.
const (
	receiveRetryMin = 250 * time.Millisecond
	receiveRetryMax = 5 * time.Second
)

// probe receives once, without waiting, before anything is sent: a process
// that cannot receive its replies must not send a request whose outcome it
// would never learn. A reply queue of the identity's that does not exist
// is given up for its first, shared one. What the probe receives is taken
// like any reply (a leftover, or another process's).
func (r *run) probe(ctx context.Context) error {
	c := r.c
	msgs, err := c.Transport.Receive(ctx, c.Queue(), 10, 0, 30*time.Second)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		base := transport.ClientQueue(c.Prefix, c.Identity.Public().Fingerprint())
		if errors.Is(err, transport.ErrNoQueue) && c.Queue() != base {
			c.warn(fmt.Sprintf("reply queue %s does not exist, so this process shares %s with the other processes of this identity, which is slower ('sera client register' creates the identity's %s reply queues)",
				c.Queue(), base, settingsReplyQueues))
			c.ReplyQueue = base
			return r.probe(ctx)
		}
		hint := ""
		if errors.Is(err, transport.ErrNoQueue) {
			hint = " (is this client registered? 'sera client register' creates its reply queues)"
		}
		return fmt.Errorf("%w: cannot receive replies on %s%s: %w", ErrNotSent, c.Queue(), hint, err)
	}
	for _, m := range msgs {
		r.take(ctx, m)
	}
	return nil
}

// settingsReplyQueues names the setting of how many reply queues an
// identity has (package settings imports this one).
const settingsReplyQueues = "SERA_REPLY_QUEUES"

// receive waits for replies until the earliest deadline of the watchers
// in flight, takes what arrived, and times out those whose deadline
// passed. A failed receive is retried (see receiveRetryMin) until then.
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
			r.receiveErr = err
			pause := min(receiveRetryMin<<min(r.receiveFails, 10), receiveRetryMax, earliest.Sub(r.c.now()))
			r.receiveFails++
			if !r.receiveWarned {
				// Once a run: later failures are most likely the same
				// outage, and the outcome names the last one.
				r.receiveWarned = true
				r.c.warn(fmt.Sprintf("receiving replies on %s failed; retrying until the timeout: %v", r.c.Queue(), err))
			}
			if pause > 0 {
				t := time.NewTimer(pause)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
			}
		} else {
			r.receiveErr, r.receiveFails = nil, 0
			for _, m := range msgs {
				r.take(ctx, m)
			}
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
			r.emit(Event{Kind: EventTimedOut, Watcher: w, Err: r.receiveErr})
		}
	}
	r.out.ReceiveErr = r.receiveErr
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
