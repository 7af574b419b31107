package sera

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

// staleReply is how old an unclaimed reply may get before any client
// process of the identity deletes it: no client waits that long.
const staleReply = time.Hour

// Client sends requests to watchers and collects their replies.
type Client struct {
	Identity  *crypto.Identity
	Transport transport.Transport
	Prefix    string
	// TTL is the request lifetime (SERA_REQUEST_TTL).
	TTL time.Duration
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

// Outcome is the result of one request to one or more watchers.
type Outcome struct {
	RequestID string
	Replies   []HostReply
	// Missing are the watchers that sent no reply before the timeout.
	Missing []*KnownWatcher
	// SendErrors are the watchers the request could not be sent to.
	SendErrors map[string]error
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
// their replies, calling onReply (if set) as each arrives. Replies from
// watchers not in watchers, or for other requests, are never accepted.
func (c *Client) Do(ctx context.Context, watchers []*KnownWatcher, target Target, argv []string, timeout time.Duration, onReply func(HostReply)) (*Outcome, error) {
	if len(watchers) == 0 {
		return nil, errors.New("no watchers to send to")
	}
	id, err := NewRequestID(c.rand())
	if err != nil {
		return nil, err
	}
	now := c.now()
	ttl := c.TTL
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	req := &Request{
		ID: id, IssuedAt: now, ExpiresAt: now.Add(ttl),
		Target: target, Argv: argv, ReplyTo: c.Queue(),
	}
	payload, err := req.Marshal()
	if err != nil {
		return nil, fmt.Errorf("failed to encode request: %w", err)
	}
	out := &Outcome{RequestID: id, SendErrors: map[string]error{}}
	pending := map[string]*KnownWatcher{} // fingerprint → watcher
	batches, err := c.seal(payload, watchers)
	if err != nil {
		return nil, err
	}
	for _, b := range batches {
		for _, w := range b.watchers {
			if err := c.Transport.Send(ctx, transport.WatcherQueue(c.Prefix, w.Name), b.envelope); err != nil {
				out.SendErrors[w.Name] = err
				continue
			}
			pending[w.Key.Fingerprint()] = w
		}
	}
	if len(pending) == 0 {
		return out, fmt.Errorf("failed to send the request to any watcher: %w", firstError(out.SendErrors))
	}
	err = c.collect(ctx, id, pending, now.Add(timeout), func(r HostReply) {
		out.Replies = append(out.Replies, r)
		if onReply != nil {
			onReply(r)
		}
	})
	for _, w := range watchers {
		if _, ok := pending[w.Key.Fingerprint()]; ok {
			out.Missing = append(out.Missing, w)
		}
	}
	return out, err
}

func firstError(m map[string]error) error {
	for _, e := range m {
		return e
	}
	return nil
}

type batch struct {
	watchers []*KnownWatcher
	envelope []byte
}

// seal makes as few envelopes as fit one message each, splitting the
// recipients in halves until they do: never dropping one.
func (c *Client) seal(payload []byte, ws []*KnownWatcher) ([]batch, error) {
	keys := make([]*crypto.PublicKey, len(ws))
	for i, w := range ws {
		keys[i] = w.Key
	}
	env, err := crypto.SealRequest(c.rand(), c.Identity, keys, payload)
	if err == nil && len(env) <= c.Transport.MaxMessageSize() {
		return []batch{{ws, env}}, nil
	}
	if len(ws) == 1 {
		if err == nil {
			err = fmt.Errorf("request is %d bytes, the transport takes at most %d", len(env), c.Transport.MaxMessageSize())
		}
		return nil, fmt.Errorf("failed to seal request: %w", err)
	}
	a, err := c.seal(payload, ws[:len(ws)/2])
	if err != nil {
		return nil, err
	}
	b, err := c.seal(payload, ws[len(ws)/2:])
	if err != nil {
		return nil, err
	}
	return append(a, b...), nil
}

// assembly collects the parts of one watcher's reply.
type assembly struct {
	parts [][]byte
	have  int
}

// collect receives replies for id until every pending watcher answered or
// the deadline passes. It deletes pending entries as replies complete.
func (c *Client) collect(ctx context.Context, id string, pending map[string]*KnownWatcher, deadline time.Time, accept func(HostReply)) error {
	partial := map[string]*assembly{}
	foreign := map[string]bool{}
	for len(pending) > 0 {
		left := deadline.Sub(c.now())
		if left <= 0 {
			return nil
		}
		msgs, err := c.Transport.Receive(ctx, c.Queue(), 10, min(left, 20*time.Second), 30*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("failed to receive replies: %w", err)
		}
		for _, m := range msgs {
			c.take(ctx, m, id, pending, partial, foreign, accept)
		}
	}
	return nil
}

func (c *Client) take(ctx context.Context, m *transport.Message, id string, pending map[string]*KnownWatcher,
	partial map[string]*assembly, foreign map[string]bool, accept func(HostReply)) {
	q := c.Queue()
	drop := func(why string) {
		c.log().Debug("reply dropped", "why", why)
		if err := c.Transport.Delete(ctx, q, m); err != nil {
			c.log().Debug("delete failed", "err", err)
		}
	}
	sr, err := crypto.ParseReply(m.Body)
	if err != nil {
		drop("malformed: " + err.Error())
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
	fp := sr.From.Fingerprint()
	w, ours := pending[fp]
	if p.id == id && !ours {
		// A second copy (a duplicate delivery answered again), or from a
		// watcher this request was not sent to: only this process waits
		// for id, so nobody needs it.
		drop("duplicate or unaddressed")
		return
	}
	if p.id != id {
		// Another process of this identity may be waiting for it: make
		// it visible again at once, or after a pause if we have seen it
		// before, so two processes do not spin on it.
		key := fmt.Sprintf("%s/%s/%d", p.id, fp, p.part)
		if isStale(p, c.now()) {
			drop("stale")
			return
		}
		delay := time.Duration(0)
		if foreign[key] {
			delay = time.Second
		}
		foreign[key] = true
		if err := c.Transport.ChangeVisibility(ctx, q, m, delay); err != nil {
			c.log().Debug("release failed", "err", err)
		}
		return
	}
	// Verified and ours: the message has served its purpose.
	if err := c.Transport.Delete(ctx, q, m); err != nil {
		c.log().Debug("delete failed", "err", err)
	}
	a := partial[fp]
	if a == nil || len(a.parts) != p.parts {
		a = &assembly{parts: make([][]byte, p.parts)}
		partial[fp] = a
	}
	if a.parts[p.part] == nil {
		a.parts[p.part] = append([]byte{}, p.data...)
		a.have++
	}
	if a.have < len(a.parts) {
		return
	}
	delete(partial, fp)
	r, err := ParseReplyBody(bytes.Join(a.parts, nil))
	if err != nil || r.ID != id {
		c.log().Warn("reply from watcher does not decode", "watcher", w.Name, "err", err)
		return
	}
	delete(pending, fp)
	accept(HostReply{Watcher: w, Reply: r})
}

// isStale reports whether an unclaimed single-part reply ended so long ago
// that no client can still be waiting for it.
func isStale(p *replyPart, now time.Time) bool {
	if p.parts != 1 {
		return false
	}
	r, err := ParseReplyBody(p.data)
	return err == nil && now.Sub(r.Ended) > staleReply
}
