package sera

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
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
	// ReplyQueue is the queue this process receives its replies on, one
	// of the identity's (transport.ReplyQueue), so that processes of one
	// identity running at once do not take each other's replies; "" is
	// transport.ClientQueue.
	ReplyQueue string
	// Optional.
	Now  func() time.Time
	Rand io.Reader
	Log  *slog.Logger
	// Warn, if set, is told what the user should know and may not see
	// in Log: a reply queue given up for the shared one, a publish that
	// fell back to direct sends, receives that failed and are retried.
	// Each message is passed once per Client.
	Warn func(msg string)

	warned map[string]bool
}

// ErrNotSent marks a Run that sent nothing to any watcher because this
// process cannot receive the replies: nothing ran, and the same command
// may be tried again as it is.
var ErrNotSent = errors.New("nothing was sent")

func (c *Client) warn(msg string) {
	c.log().Warn(msg)
	if c.Warn == nil || c.warned[msg] {
		return
	}
	if c.warned == nil {
		c.warned = map[string]bool{}
	}
	c.warned[msg] = true
	c.Warn(msg)
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
	// Reply is set for EventReply, Err for EventSendFailed, and for
	// EventTimedOut when receiving failed at the end (the request was
	// sent all the same: the command may have run).
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
	// ReceiveErr is the last error receiving replies, when one failed and
	// no later receive succeeded; watchers in Missing may have run the
	// command.
	ReceiveErr error
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

// Queue is the queue this process receives replies on: ReplyQueue, or the
// identity's first reply queue.
func (c *Client) Queue() string {
	if c.ReplyQueue != "" {
		return c.ReplyQueue
	}
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
