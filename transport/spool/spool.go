// Package spool is the transport on a local directory, sera's embedded
// default. A client and a watcher on one machine share the directory; any
// number of processes and goroutines may use it at once.
//
// Every message is one file and every change of state is a rename, which is
// atomic on a POSIX file system, so no locks are needed:
//
//	DIR/QUEUE/                    one directory per queue, 0700
//	DIR/QUEUE/tmp/                Send writes and fsyncs here, then renames
//	DIR/QUEUE/ID.VISIBLE.N.TOKEN  one message, 0600
//
// ID is the send time in nanoseconds plus a random suffix, in fixed-width hex,
// so a directory listing is in send order; it is the message's Sent time.
// VISIBLE is when the message may
// be received (Unix nanoseconds, hex), N how often it was received and TOKEN
// the random token of its current delivery. A receiver claims a message by
// renaming it to a name with a later VISIBLE, N+1 and a fresh TOKEN: of
// several receivers racing for one name exactly one rename succeeds and the
// others find the name gone. The file name is the message's Handle, so a
// handle goes stale the moment anyone renames or deletes the file.
//
// Directories are 0700 and messages 0600, so every process sharing a spool
// runs as its owner. A Send cut short by a crash can leave a file in tmp/,
// which receivers ignore and nothing removes.
package spool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sera-dev/sera/transport"
)

// A waiting Receive is woken by inotify when a message is renamed into the
// queue directory, and lists the directory every rescanInterval anyway,
// for messages whose visibility timeout ran out (no event marks that).
// Without inotify (e.g. its per-user instance limit reached) it lists the
// directory every pollInterval instead.
const (
	rescanInterval = 250 * time.Millisecond
	pollInterval   = 15 * time.Millisecond
)

// Spool is a transport.Transport on a local directory.
type Spool struct {
	dir     string
	maxSize int
	poll    bool
}

var _ transport.Transport = (*Spool)(nil)

// Option configures a Spool.
type Option func(*Spool) error

// WithMaxMessageSize sets the largest body Send accepts, so tests can
// exercise the limit without megabyte bodies. It defaults to
// transport.DefaultMaxMessageSize; a larger value would not fit SQS.
func WithMaxMessageSize(n int) Option {
	return func(s *Spool) error {
		if n < 1 {
			return fmt.Errorf("invalid max message size %d", n)
		}
		s.maxSize = n
		return nil
	}
}

// WithPolling makes a waiting Receive list the queue directory every
// pollInterval instead of waiting for inotify to report a new message: for
// a directory whose changes inotify does not see (NFS, a folder shared
// with a virtual machine), and for tests under testing/synctest, whose
// fake clock cannot advance while a goroutine waits on a file descriptor.
func WithPolling() Option {
	return func(s *Spool) error {
		s.poll = true
		return nil
	}
}

// New returns a Spool on dir, creating dir (0700) if it does not exist.
func New(dir string, opts ...Option) (*Spool, error) {
	if dir == "" {
		return nil, errors.New("failed to open spool: empty directory name")
	}
	s := &Spool{dir: dir, maxSize: transport.DefaultMaxMessageSize}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, fmt.Errorf("failed to open spool: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("failed to open spool: %w", err)
	}
	return s, nil
}

// Locate implements transport.Locator: the queue's directory.
func (s *Spool) Locate(queue string) string { return filepath.Join(s.dir, queue) }

// MaxMessageSize implements transport.Transport.
func (s *Spool) MaxMessageSize() int { return s.maxSize }

// Close implements transport.Transport. A Spool holds no resources.
func (s *Spool) Close() error { return nil }

// Send implements transport.Transport.
func (s *Spool) Send(ctx context.Context, queue string, body []byte) error {
	if len(body) > s.maxSize {
		return fmt.Errorf("failed to send to %q: %w (%d bytes, limit %d)", queue, transport.ErrTooLarge, len(body), s.maxSize)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	q, err := s.queueDir(queue)
	if err != nil {
		return fmt.Errorf("failed to send: %w", err)
	}
	if err := writeMessage(q, body); err != nil {
		return fmt.Errorf("failed to send to %q: %w", queue, err)
	}
	return nil
}

func writeMessage(q string, body []byte) error {
	f, err := os.CreateTemp(filepath.Join(q, "tmp"), "send-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(q, msgName{id: newID(), token: zeroToken}.String()))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	// The rename is only durable once the directory is synced too.
	return syncDir(q)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Receive implements transport.Transport. It takes visible messages as soon
// as they arrive (see rescanInterval), until wait has passed or ctx is done.
func (s *Spool) Receive(ctx context.Context, queue string, maxMsgs int, wait, visibility time.Duration) ([]*transport.Message, error) {
	if maxMsgs < 1 {
		return nil, fmt.Errorf("failed to receive from %q: max %d is less than 1", queue, maxMsgs)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q, err := s.queueDir(queue)
	if err != nil {
		return nil, fmt.Errorf("failed to receive: %w", err)
	}
	visibility = max(visibility, 0)
	deadline := time.Now().Add(wait)
	var timer *time.Timer
	var arrived <-chan struct{}
	interval := pollInterval
	if wait > 0 && !s.poll {
		if w, err := watchDir(q); err == nil {
			// Closing an inotify instance waits for the kernel (an RCU
			// grace period, milliseconds): not on the way back to the
			// caller.
			defer func() { go w.Close() }()
			arrived, interval = w.events, rescanInterval
		}
	}
	for {
		msgs, err := claim(q, maxMsgs, visibility)
		if err != nil {
			return nil, fmt.Errorf("failed to receive from %q: %w", queue, err)
		}
		if len(msgs) > 0 {
			return msgs, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		d := min(left, interval)
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-arrived:
		case <-timer.C:
		}
	}
}

// claim takes up to maxMsgs visible messages from the queue directory q, oldest
// first. Losing a race for a message is normal and not an error.
func claim(q string, maxMsgs int, visibility time.Duration) ([]*transport.Message, error) {
	entries, err := os.ReadDir(q)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var msgs []*transport.Message
	for _, e := range entries {
		if len(msgs) == maxMsgs {
			break
		}
		if !e.Type().IsRegular() {
			continue
		}
		n, ok := parseName(e.Name())
		if !ok || n.visible > now.UnixNano() {
			continue
		}
		m, err := claimOne(q, n, now.Add(visibility))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			if len(msgs) > 0 {
				// Hand out what is already claimed; the error will recur.
				break
			}
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func claimOne(q string, n msgName, visible time.Time) (*transport.Message, error) {
	old := filepath.Join(q, n.String())
	// Open before the rename: once ours, the message may be claimed again
	// (its visibility can be short) before its body has been read.
	f, err := os.OpenFile(old, os.O_RDONLY|openNoFollow, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	next := msgName{id: n.id, visible: visible.UnixNano(), receives: n.receives + 1, token: newToken()}
	if err := os.Rename(old, filepath.Join(q, next.String())); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	return &transport.Message{Body: body, Handle: next.String(), Receives: next.receives, Sent: n.sent()}, nil
}

// Delete implements transport.Transport.
func (s *Spool) Delete(ctx context.Context, queue string, m *transport.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	q, err := s.queueDir(queue)
	if err != nil {
		return fmt.Errorf("failed to delete: %w", err)
	}
	if _, ok := parseHandle(m.Handle); !ok {
		return fmt.Errorf("failed to delete from %q: malformed handle: %w", queue, transport.ErrStaleHandle)
	}
	if err := os.Remove(filepath.Join(q, m.Handle)); err != nil {
		return fmt.Errorf("failed to delete from %q: %w", queue, handleErr(err))
	}
	return nil
}

// ChangeVisibility implements transport.Transport. The message keeps its
// delivery token, so m stays the holder, but its file name and therefore
// m.Handle change.
func (s *Spool) ChangeVisibility(ctx context.Context, queue string, m *transport.Message, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	q, err := s.queueDir(queue)
	if err != nil {
		return fmt.Errorf("failed to change visibility: %w", err)
	}
	n, ok := parseHandle(m.Handle)
	if !ok {
		return fmt.Errorf("failed to change visibility on %q: malformed handle: %w", queue, transport.ErrStaleHandle)
	}
	n.visible = time.Now().Add(max(d, 0)).UnixNano()
	next := n.String()
	if err := os.Rename(filepath.Join(q, m.Handle), filepath.Join(q, next)); err != nil {
		return fmt.Errorf("failed to change visibility on %q: %w", queue, handleErr(err))
	}
	m.Handle = next
	return nil
}

func handleErr(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return transport.ErrStaleHandle
	}
	return err
}

// Depth implements transport.Depther: the messages in queue, visible or
// not.
func (s *Spool) Depth(ctx context.Context, queue string) (int, error) {
	q, err := s.queueDir(queue)
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(q)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if _, ok := parseName(e.Name()); ok && e.Type().IsRegular() {
			n++
		}
	}
	return n, nil
}

// queueDir returns the directory of queue, creating it and its tmp
// directory on demand. It refuses a symlink: the spool's permissions are
// only worth something if every queue lives inside it.
func (s *Spool) queueDir(queue string) (string, error) {
	if !transport.ValidQueueName(queue) {
		return "", fmt.Errorf("queue %q: %w", queue, transport.ErrInvalidQueueName)
	}
	q := filepath.Join(s.dir, queue)
	for _, d := range []string{q, filepath.Join(q, "tmp")} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("failed to create queue %q: %w", queue, err)
		}
		fi, err := os.Lstat(d)
		if err != nil {
			return "", fmt.Errorf("failed to open queue %q: %w", queue, err)
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("failed to open queue %q: %s is not a directory (symlinks are refused)", queue, d)
		}
	}
	return q, nil
}

// msgName is a message file name; see the package documentation.
type msgName struct {
	id       string // idLen hex digits
	visible  int64  // Unix nanoseconds
	receives int
	token    string // tokenLen hex digits
}

const (
	idLen    = 24
	tokenLen = 16
)

// zeroToken marks a message that was never received.
var zeroToken = strings.Repeat("0", tokenLen)

// sent is the send time that begins the message's ID.
func (n msgName) sent() time.Time {
	ns, err := strconv.ParseUint(n.id[:16], 16, 64)
	if err != nil || ns > math.MaxInt64 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns))
}

func (n msgName) String() string {
	return fmt.Sprintf("%s.%016x.%d.%s", n.id, n.visible, n.receives, n.token)
}

func parseName(s string) (msgName, bool) {
	id, rest, _ := strings.Cut(s, ".")
	vis, rest, _ := strings.Cut(rest, ".")
	recv, token, _ := strings.Cut(rest, ".")
	if len(id) != idLen || !isHex(id) || len(vis) != 16 || !isHex(vis) || len(token) != tokenLen || !isHex(token) {
		return msgName{}, false
	}
	visible, err := strconv.ParseInt(vis, 16, 64)
	if err != nil {
		return msgName{}, false
	}
	receives, err := strconv.Atoi(recv)
	if err != nil || receives < 0 || strconv.Itoa(receives) != recv {
		return msgName{}, false
	}
	return msgName{id: id, visible: visible, receives: receives, token: token}, true
}

// parseHandle parses a handle, which is the name of a received message. The
// strict parse is also what keeps a handle from naming a path outside the
// queue.
func parseHandle(h string) (msgName, bool) {
	n, ok := parseName(h)
	return n, ok && n.receives > 0
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// lastID is the time part of the last ID this process made, so IDs from
// one process strictly increase even when the clock is coarse.
var lastID atomic.Int64

// maxIDBump is how far behind the last ID the clock may be for the next ID
// to be the last one's successor rather than the clock's reading. A clock
// that went back further (set back, or a test's fake clock in a process
// that also used the real one) gives IDs by itself: the time in an ID is
// the message's Sent, and must not run ahead of the clock that sent it.
// The random suffix keeps such IDs apart.
const maxIDBump = int64(time.Second)

func newID() string {
	for {
		last := lastID.Load()
		now := time.Now().UnixNano()
		if now <= last && last-now < maxIDBump {
			now = last + 1
		}
		if lastID.CompareAndSwap(last, now) {
			var r [4]byte
			rand.Read(r[:])
			return fmt.Sprintf("%016x%s", now, hex.EncodeToString(r[:]))
		}
	}
}

func newToken() string {
	var r [tokenLen / 2]byte
	rand.Read(r[:])
	return hex.EncodeToString(r[:])
}
