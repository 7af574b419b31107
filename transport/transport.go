// Package transport defines how sera moves opaque, already-sealed messages
// between clients and watchers. A transport never sees plaintext: requests
// and replies are encrypted before they reach it, so a transport only has to
// be reliable, not trusted.
//
// The semantics follow SQS (at-least-once delivery, visibility timeouts,
// receipt-handle deletes) because SQS is the production transport; the spool
// transport reproduces them on a local directory. The conformance suite in
// package transporttest holds every implementation to the same behaviour.
package transport

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxMessageSize is the largest message body, in bytes, that sera
// sends on any transport. It is SQS's current limit (1 MiB), so a message
// that fits the spool also fits SQS.
const DefaultMaxMessageSize = 1 << 20

// Errors returned by transports. Callers check them with errors.Is.
var (
	// ErrTooLarge is returned by Send when the body exceeds MaxMessageSize.
	ErrTooLarge = errors.New("message too large")
	// ErrNoQueue is returned when the named queue does not exist (SQS) and
	// the transport cannot create it.
	ErrNoQueue = errors.New("queue does not exist")
	// ErrStaleHandle is returned by Delete or ChangeVisibility when the
	// message was re-delivered to someone else (its visibility timeout
	// passed) or was already deleted.
	ErrStaleHandle = errors.New("message handle no longer valid")
	// ErrInvalidQueueName is returned for a queue name outside the
	// characters SQS accepts ([A-Za-z0-9_-], 1 to 80 characters).
	ErrInvalidQueueName = errors.New("invalid queue name")
)

// Message is one received message. Handle identifies this delivery (an SQS
// receipt handle); it is only meaningful to the transport that returned it,
// which may update it in ChangeVisibility.
//
// Receives and Sent are the queue's own record of the message, kept beside
// the body, never read from it: a receiver that bounds how long it keeps
// passing on a message it cannot use (sera's client, with replies for
// other processes) judges by them, so a sender cannot make its message
// live for ever by what it writes into it.
type Message struct {
	// Body is the message as sent.
	Body []byte
	// Handle identifies this delivery for Delete and ChangeVisibility.
	Handle string
	// Receives is how many times the message has been received, this
	// delivery included (SQS's ApproximateReceiveCount). Every delivery
	// counts, ChangeVisibility(0) followed by a Receive included.
	Receives int
	// Sent is when the queue accepted the message (SQS's SentTimestamp,
	// by the queue's clock; the spool's send time). It does not change
	// with later deliveries. Zero when the transport cannot tell.
	Sent time.Time
}

// Transport moves messages between named queues.
type Transport interface {
	// Send puts body on the named queue. It returns ErrTooLarge (wrapped)
	// when len(body) > MaxMessageSize.
	Send(ctx context.Context, queue string, body []byte) error

	// Receive waits up to wait for at most max messages on the named
	// queue and hides each returned message from other receivers for
	// visibility. It returns an empty slice, not an error, when nothing
	// arrived in time, and ctx.Err() when ctx is done first. A wait of 0
	// looks once and returns (on SQS it waits the queue's own default,
	// which is 0 on sera's reply queues).
	Receive(ctx context.Context, queue string, max int, wait, visibility time.Duration) ([]*Message, error)

	// Delete removes a received message for good.
	Delete(ctx context.Context, queue string, m *Message) error

	// ChangeVisibility hides a received message for d from now; d == 0
	// makes it visible to other receivers at once.
	ChangeVisibility(ctx context.Context, queue string, m *Message, d time.Duration) error

	// MaxMessageSize is the largest body Send accepts, in bytes.
	MaxMessageSize() int

	// Close releases the transport's resources.
	Close() error
}

// Publisher is implemented by transports that can fan one message out to
// every queue subscribed to a topic (SNS), so a request for a group of
// watchers costs one call instead of one per watcher.
type Publisher interface {
	// Publish sends body to every queue subscribed to the named topic.
	// It returns ErrTooLarge (wrapped) when len(body) > MaxPublishSize,
	// and ErrNoTopic (wrapped) when the topic does not exist. A failed
	// Publish delivered the message to no queue.
	Publish(ctx context.Context, topic string, body []byte) error

	// MaxPublishSize is the largest body Publish accepts, in bytes.
	MaxPublishSize() int
}

// Locator is implemented by transports that can say where a queue is, for
// the logs of whoever serves it: a directory, a URL.
type Locator interface {
	// Locate is where queue is, or "" while the transport cannot tell
	// (an SQS queue whose URL it has not looked up yet).
	Locate(queue string) string
}

// Depther is a transport that can tell about how many messages wait in
// a queue: a watcher's heartbeat reports its own queue's.
type Depther interface {
	Depth(ctx context.Context, queue string) (int, error)
}

// ErrNoTopic is returned by Publish when the named topic does not exist.
var ErrNoTopic = errors.New("topic does not exist")

// AllTopic is the topic every watcher queue subscribes to.
func AllTopic(prefix string) string { return prefix + "-all" }

// GroupTopic is the topic of the watchers of group g.
func GroupTopic(prefix, g string) string { return prefix + "-g-" + g }

// ValidQueueName reports whether name is a queue name every transport
// accepts: 1 to 80 characters of [A-Za-z0-9_-], as SQS requires.
func ValidQueueName(name string) bool { return validName(name, 80) }

// ValidTopicName reports whether name is an SNS topic name: 1 to 256
// characters of [A-Za-z0-9_-]. It becomes part of an ARN, so no ':' or '/'.
func ValidTopicName(name string) bool { return validName(name, 256) }

func validName(name string, max int) bool {
	if len(name) == 0 || len(name) > max {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// WatcherQueue is the command queue of the watcher called name.
func WatcherQueue(prefix, name string) string { return prefix + "-w-" + name }

// ClientQueue is the reply queue of the client identity with fingerprint fp.
func ClientQueue(prefix, fp string) string { return prefix + "-c-" + fp }

// MaxReplyQueues bounds how many reply queues one client identity has:
// ClientQueue and ReplyQueue 1 to MaxReplyQueues-1.
const MaxReplyQueues = 64

// ReplyQueue is reply queue n of the client identity fp: 0 is ClientQueue,
// the one a single process uses; each further process of the identity
// running at the same time takes another (PREFIX-c-FP-N), so that no
// process receives the replies to another's requests.
func ReplyQueue(prefix, fp string, n int) string {
	if n == 0 {
		return ClientQueue(prefix, fp)
	}
	return ClientQueue(prefix, fp) + "-" + strconv.Itoa(n)
}

// HeartbeatQueue is where watchers send the client identity fp their
// heartbeats (sera.Heartbeat). It is not a reply queue (IsReplyQueue), so
// no request can name it as its reply_to.
func HeartbeatQueue(prefix, fp string) string { return ClientQueue(prefix, fp) + "-hb" }

// IsReplyQueue reports whether name is one of the reply queues of the
// client identity fp, ReplyQueue(prefix, fp, n) for 0 <= n < MaxReplyQueues
// spelled exactly so: a watcher replies only there.
func IsReplyQueue(prefix, fp, name string) bool {
	base := ClientQueue(prefix, fp)
	if name == base {
		return true
	}
	rest, ok := strings.CutPrefix(name, base+"-")
	if !ok {
		return false
	}
	n, err := strconv.Atoi(rest)
	return err == nil && n > 0 && n < MaxReplyQueues && strconv.Itoa(n) == rest
}
