package sera

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

// Heartbeat is what a watcher tells each client it knows (every one may
// ping), unasked, every interval: that it is alive, and how it is. It is sealed to the
// client like a reply (crypto.SealHeartbeat), onto the client's heartbeat
// queue (transport.HeartbeatQueue), and shows what 'ping' shows and no
// more, but for Openings, which only a client allowed 'allow' is told.
type Heartbeat struct {
	Watcher string    `json:"watcher"`
	Groups  []string  `json:"groups"`
	Version string    `json:"version"`
	Time    time.Time `json:"time"`
	// Started is when the watcher process started.
	Started time.Time `json:"started"`
	// IntervalSeconds is how often the watcher sends heartbeats: a
	// client counts it missing after two intervals without one.
	IntervalSeconds int64 `json:"interval_seconds"`
	// QueueDepth is about how many requests wait in the watcher's queue,
	// where the transport can tell.
	QueueDepth *int `json:"queue_depth,omitempty"`
	// Openings is how many ufw openings of 'sera allow' are open.
	Openings *int `json:"openings,omitempty"`
}

// MaxHeartbeatInterval is the longest interval a heartbeat may state.
const MaxHeartbeatInterval = 24 * time.Hour

// Interval is IntervalSeconds as a duration.
func (h *Heartbeat) Interval() time.Duration { return time.Duration(h.IntervalSeconds) * time.Second }

// ParseHeartbeat decodes an opened heartbeat, strictly.
func ParseHeartbeat(b []byte) (*Heartbeat, error) {
	var h Heartbeat
	if err := crypto.UnmarshalStrict(b, &h); err != nil {
		return nil, fmt.Errorf("invalid heartbeat: %w", err)
	}
	if err := CheckName(h.Watcher); err != nil {
		return nil, fmt.Errorf("invalid heartbeat: %w", err)
	}
	if h.Time.IsZero() || h.IntervalSeconds < 1 || h.IntervalSeconds > int64(MaxHeartbeatInterval/time.Second) {
		return nil, errors.New("invalid heartbeat: no time, or an interval outside 1s to 24h")
	}
	for _, g := range h.Groups {
		if err := CheckName(g); err != nil {
			return nil, fmt.Errorf("invalid heartbeat: group: %w", err)
		}
	}
	return &h, nil
}

// heartbeats is the state of a watcher's heartbeat schedule.
type heartbeats struct {
	next time.Time
	// warned holds the clients whose heartbeat queue failed, said once a
	// process: a client registered before heartbeats has none.
	warned map[string]bool
}

// heartbeatDue sends the heartbeats if they are due, and says how long
// until the next: the first comes after a random part of the interval, so
// a fleet started at once does not beat in step; then one every interval.
func (w *Watcher) heartbeatDue(ctx context.Context, now time.Time) time.Duration {
	every := w.HeartbeatEvery
	if every <= 0 {
		return time.Duration(1<<63 - 1)
	}
	if w.beats.next.IsZero() {
		w.beats.next = now.Add(mrand.N(every))
	}
	if now.Before(w.beats.next) {
		return w.beats.next.Sub(now)
	}
	w.sendHeartbeats(ctx, now)
	w.beats.next = now.Add(every)
	return every
}

// sendHeartbeats sends a heartbeat to every client HeartbeatTo lists.
// Each is sealed to its client alone, so a heartbeat tells no client what
// another may not know.
func (w *Watcher) sendHeartbeats(ctx context.Context, now time.Time) {
	if w.HeartbeatTo == nil {
		return
	}
	clients, err := w.HeartbeatTo()
	if err != nil {
		w.log().Warn("heartbeat: cannot list the clients", "err", err)
		return
	}
	hb := Heartbeat{Watcher: w.Name, Groups: w.Groups, Time: now, Started: w.started,
		IntervalSeconds: int64(w.HeartbeatEvery / time.Second)}
	if hb.Groups == nil {
		hb.Groups = []string{}
	}
	if d, ok := w.Transport.(transport.Depther); ok {
		if n, err := d.Depth(ctx, w.Queue()); err == nil {
			hb.QueueDepth = &n
		}
	}
	var openings *int
	if w.HeartbeatInfo != nil {
		hb.Version, openings = w.HeartbeatInfo(ctx)
	}
	for _, c := range clients {
		h := hb
		if c.Allows("allow") {
			h.Openings = openings
		}
		body, err := json.Marshal(&h)
		if err != nil {
			continue
		}
		fp := c.Key.Fingerprint()
		sealed, err := crypto.SealHeartbeat(w.rand(), w.Identity, c.Key, body)
		if err == nil {
			err = w.Transport.Send(ctx, transport.HeartbeatQueue(w.Prefix, fp), sealed)
		}
		if err != nil && !w.beats.warned[fp] {
			if w.beats.warned == nil {
				w.beats.warned = map[string]bool{}
			}
			w.beats.warned[fp] = true
			w.log().Warn("heartbeat not sent (said once per client)", "client", c.Name, "queue", transport.HeartbeatQueue(w.Prefix, fp), "err", err)
		}
	}
}

// FleetHost is what a client knows of one watcher's health, from its
// heartbeats.
type FleetHost struct {
	Heartbeat
	// Fingerprint is the key the heartbeat was sealed with.
	Fingerprint string `json:"fingerprint"`
}

// ReadHeartbeats takes every heartbeat waiting on the client's heartbeat
// queue and returns the newest of each watcher in known, by name. A
// message that is not a heartbeat sealed for this client by the key
// known has for the name it carries is dropped, as is every message read:
// the queue holds only what was not read yet.
func ReadHeartbeats(ctx context.Context, tr transport.Transport, id *crypto.Identity, prefix string, known *KnownWatchers) (map[string]*FleetHost, error) {
	queue := transport.HeartbeatQueue(prefix, id.Public().Fingerprint())
	out := map[string]*FleetHost{}
	for {
		msgs, err := tr.Receive(ctx, queue, 10, 0, 30*time.Second)
		if err != nil {
			return out, fmt.Errorf("failed to read heartbeats from %s: %w", queue, err)
		}
		if len(msgs) == 0 {
			return out, nil
		}
		for _, m := range msgs {
			if h := openHeartbeat(m.Body, id, known); h != nil {
				if cur := out[h.Watcher]; cur == nil || h.Time.After(cur.Time) {
					out[h.Watcher] = h
				}
			}
		}
		// A batch's deletes at once: a fleet's heartbeats are thousands
		// of messages, each delete a round trip.
		errs := make([]error, len(msgs))
		var wg sync.WaitGroup
		for i, m := range msgs {
			wg.Go(func() { errs[i] = tr.Delete(ctx, queue, m) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return out, fmt.Errorf("failed to delete heartbeats from %s: %w", queue, err)
		}
	}
}

func openHeartbeat(b []byte, id *crypto.Identity, known *KnownWatchers) *FleetHost {
	r, err := crypto.ParseReply(b)
	if err != nil {
		return nil
	}
	w := known.ByKey(r.From)
	if w == nil {
		return nil
	}
	plain, err := r.OpenHeartbeat(id)
	if err != nil {
		return nil
	}
	h, err := ParseHeartbeat(plain)
	if err != nil || h.Watcher != w.Name {
		return nil
	}
	return &FleetHost{Heartbeat: *h, Fingerprint: w.Key.Fingerprint()}
}
