// Package transporttest is the conformance suite every transport.Transport
// must pass, so that the spool and SQS behave the same to sera.
//
// The subtests run in parallel, each on queues of its own with a random
// name, so one server can serve the whole suite. Timeouts are whole seconds
// because SQS counts visibility and long polls in seconds.
package transporttest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sera-dev/sera/transport"
)

// Options tells the suite what a transport promises beyond the interface.
type Options struct {
	// DetectsStaleHandles is set when Delete and ChangeVisibility with the
	// handle of an earlier delivery, or of a deleted message, fail with
	// transport.ErrStaleHandle. SQS cannot promise it: DeleteMessage with
	// an old receipt handle succeeds.
	DetectsStaleHandles bool

	// CreateQueue, when set, creates the named queue before the suite
	// uses it, and the suite checks that a queue it never created gives
	// transport.ErrNoQueue. Leave it nil for a transport that creates
	// queues on demand.
	CreateQueue func(t *testing.T, name string)
}

// Run runs the suite. newTransport is called once per subtest; the suite
// closes what it returns.
func Run(t *testing.T, newTransport func(t *testing.T) transport.Transport, opts Options) {
	s := &suite{opts: opts, newTransport: newTransport}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"SendReceive", s.testSendReceive},
		{"QueueIsolation", s.testQueueIsolation},
		{"EmptyAfterWait", s.testEmptyAfterWait},
		{"ArrivalDuringWait", s.testArrivalDuringWait},
		{"MaxMessages", s.testMaxMessages},
		{"Visibility", s.testVisibility},
		{"ChangeVisibilityZero", s.testChangeVisibilityZero},
		{"ChangeVisibilityLonger", s.testChangeVisibilityLonger},
		{"QueueRecord", s.testQueueRecord},
		{"Delete", s.testDelete},
		{"StaleHandle", s.testStaleHandle},
		{"MaxMessageSize", s.testMaxMessageSize},
		{"Cancel", s.testCancel},
		{"ConcurrentReceivers", s.testConcurrentReceivers},
		{"Many", s.testMany},
		{"InvalidQueueName", s.testInvalidQueueName},
		{"NoQueue", s.testNoQueue},
		{"Depth", s.testDepth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t)
		})
	}
}

type suite struct {
	opts         Options
	newTransport func(t *testing.T) transport.Transport
}

// longWait bounds every wait for something that should arrive; reaching it
// is a failure, so it is generous: a loaded machine never gets near it.
const longWait = 30 * time.Second

// slack is how much longer than its wait an empty Receive may take on a
// loaded machine. It stays below 20 s, the default long poll of an SQS
// queue, which a Receive that left out its wait would take.
const slack = 10 * time.Second

func (s *suite) transport(t *testing.T) transport.Transport {
	tr := s.newTransport(t)
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

// queue returns a fresh queue name for t, created if the transport needs it.
func (s *suite) queue(t *testing.T) string {
	name := s.queueName(t)
	if s.opts.CreateQueue != nil {
		s.opts.CreateQueue(t, name)
	}
	return name
}

func (s *suite) queueName(t *testing.T) string {
	base := t.Name()[strings.LastIndex(t.Name(), "/")+1:]
	base = strings.Map(func(r rune) rune {
		if transport.ValidQueueName(string(r)) {
			return r
		}
		return '-'
	}, base)
	if len(base) > 40 {
		base = base[:40]
	}
	return "tt-" + base + "-" + strings.ToLower(rand.Text()[:10])
}

func send(t *testing.T, tr transport.Transport, q string, body []byte) {
	t.Helper()
	if err := tr.Send(context.Background(), q, body); err != nil {
		t.Fatalf("Send(%q): %v", q, err)
	}
}

func receive(t *testing.T, tr transport.Transport, q string, maxMsgs int, wait, visibility time.Duration) []*transport.Message {
	t.Helper()
	msgs, err := tr.Receive(context.Background(), q, maxMsgs, wait, visibility)
	if err != nil {
		t.Fatalf("Receive(%q): %v", q, err)
	}
	if len(msgs) > maxMsgs {
		t.Fatalf("Receive(%q, max %d) returned %d messages", q, maxMsgs, len(msgs))
	}
	return msgs
}

// receiveOne receives exactly one message with the given body.
func receiveOne(t *testing.T, tr transport.Transport, q string, body []byte, visibility time.Duration) *transport.Message {
	t.Helper()
	msgs := receive(t, tr, q, 1, longWait, visibility)
	if len(msgs) != 1 {
		t.Fatalf("Receive(%q) returned %d messages, want 1", q, len(msgs))
	}
	m := msgs[0]
	if string(m.Body) != string(body) {
		t.Fatalf("Receive(%q) body = %.40q, want %.40q", q, m.Body, body)
	}
	if m.Handle == "" {
		t.Fatalf("Receive(%q) returned an empty handle", q)
	}
	return m
}

func receiveNone(t *testing.T, tr transport.Transport, q string, wait time.Duration) {
	t.Helper()
	if msgs := receive(t, tr, q, 10, wait, time.Minute); len(msgs) != 0 {
		t.Fatalf("Receive(%q) returned %d messages (first %.40q), want none", q, len(msgs), msgs[0].Body)
	}
}

// body returns n random printable ASCII bytes: SQS accepts only XML
// characters.
func body(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = ' ' + b[i]%95
	}
	return b
}

func (s *suite) testSendReceive(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	b := body(1000)
	send(t, tr, q, b)
	m := receiveOne(t, tr, q, b, time.Minute)
	if m.Receives != 1 {
		t.Errorf("Receives = %d, want 1", m.Receives)
	}
	if err := tr.Delete(context.Background(), q, m); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

func (s *suite) testQueueIsolation(t *testing.T) {
	tr, qa, qb := s.transport(t), s.queue(t), s.queue(t)
	send(t, tr, qa, []byte("for a"))
	send(t, tr, qb, []byte("for b"))
	receiveOne(t, tr, qb, []byte("for b"), time.Minute)
	receiveNone(t, tr, qb, 0)
	receiveOne(t, tr, qa, []byte("for a"), time.Minute)
}

func (s *suite) testEmptyAfterWait(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	start := time.Now()
	receiveNone(t, tr, q, time.Second)
	// Load only makes a Receive slower, so the lower bound holds on any
	// machine; the upper one is a guard against one that ignores its wait.
	if d := time.Since(start); d < 900*time.Millisecond || d > time.Second+slack {
		t.Errorf("empty Receive with wait 1s took %v", d)
	}
}

func (s *suite) testArrivalDuringWait(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	sent := make(chan error, 1)
	go func() {
		// Nothing tells when a Receive has started to wait (SQS waits in
		// the server), so the Send comes a little later. Should load
		// delay the Receive past it, the message is there from the start:
		// the test checks less, and cannot fail for it.
		time.Sleep(300 * time.Millisecond)
		sent <- tr.Send(context.Background(), q, []byte("late"))
	}()
	start := time.Now()
	receiveOne(t, tr, q, []byte("late"), time.Minute)
	// A Receive that looks again only when its wait is over returns
	// longWait after it started, however fast the machine.
	if d := time.Since(start); d >= longWait {
		t.Errorf("Receive returned the message %v after it started, at the end of its wait", d)
	}
	if err := <-sent; err != nil {
		t.Fatalf("Send: %v", err)
	}
}

func (s *suite) testMaxMessages(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	for i := range 5 {
		send(t, tr, q, fmt.Appendf(nil, "m%d", i))
	}
	if msgs := receive(t, tr, q, 2, longWait, time.Minute); len(msgs) == 0 {
		t.Fatal("Receive returned nothing")
	}
}

func (s *suite) testVisibility(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	b := body(100)
	send(t, tr, q, b)
	start := time.Now()
	m1 := receiveOne(t, tr, q, b, 2*time.Second)
	if m1.Receives != 1 {
		t.Errorf("first Receives = %d, want 1", m1.Receives)
	}
	// The second Receive starts as the first returns: that it gets the
	// message no sooner than 2s after the first began shows the message
	// was hidden meanwhile. (A Receive that does not wait, to see it
	// hidden, would fail whenever load delayed it past the 2s.)
	m2 := receiveOne(t, tr, q, b, time.Minute)
	if d := time.Since(start); d < 1950*time.Millisecond {
		t.Errorf("message hidden for 2s came back after %v", d)
	}
	if m2.Receives != 2 {
		t.Errorf("second Receives = %d, want 2", m2.Receives)
	}
	if m2.Handle == m1.Handle {
		t.Errorf("second delivery has the first one's handle")
	}
}

func (s *suite) testChangeVisibilityZero(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	send(t, tr, q, []byte("again"))
	m := receiveOne(t, tr, q, []byte("again"), time.Hour)
	if err := tr.ChangeVisibility(context.Background(), q, m, 0); err != nil {
		t.Fatalf("ChangeVisibility(0): %v", err)
	}
	// Visible at once: a Receive that does not wait gets it.
	msgs := receive(t, tr, q, 1, 0, time.Minute)
	if len(msgs) != 1 || string(msgs[0].Body) != "again" {
		t.Fatalf("Receive without a wait after ChangeVisibility(0) returned %d messages, want the message", len(msgs))
	}
	if m2 := msgs[0]; m2.Receives != 2 {
		t.Errorf("Receives = %d, want 2", m2.Receives)
	}
}

func (s *suite) testChangeVisibilityLonger(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	send(t, tr, q, []byte("later"))
	start := time.Now()
	m := receiveOne(t, tr, q, []byte("later"), time.Second)
	// An hour, not a few seconds: the check below must end before the
	// new timeout does, however slowly the machine gets to it.
	if err := tr.ChangeVisibility(context.Background(), q, m, time.Hour); err != nil {
		t.Fatalf("ChangeVisibility(1h): %v", err)
	}
	// Well past the original second, the message must still be hidden.
	receiveNone(t, tr, q, 2*time.Second)
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("test waited only %v", d)
	}
	// The (possibly updated) handle is still ours.
	if err := tr.ChangeVisibility(context.Background(), q, m, 0); err != nil {
		t.Fatalf("ChangeVisibility(0) after extending: %v", err)
	}
	// Hidden for an hour: receiving it within longWait shows the 0 took.
	if m2 := receiveOne(t, tr, q, []byte("later"), time.Minute); m2.Receives != 2 {
		t.Errorf("Receives = %d, want 2", m2.Receives)
	}
}

// clockSkew is how far the queue's clock (SQS's, for Sent) may be from
// this machine's. Sent is checked only to be the send time within it, and
// unchanged by later deliveries: a Sent that is zero, taken from the body,
// or reset on redelivery fails.
const clockSkew = time.Minute

// releases is how often testQueueRecord hands a message back.
const releases = 6

// testQueueRecord checks what a receiver that must not trust bodies
// judges a message by: Receives counts every delivery, and Sent is when the
// queue took the message, whatever the body says and however often it was
// handed back.
func (s *suite) testQueueRecord(t *testing.T) {
	ctx := context.Background()
	tr, q := s.transport(t), s.queue(t)
	// A body that claims another send time and receive count.
	b := []byte(`{"sent":"2001-01-01T00:00:00Z","receives":1}`)
	before := time.Now()
	send(t, tr, q, b)
	after := time.Now()
	var sent time.Time
	for i := 1; i <= releases; i++ {
		m := receiveOne(t, tr, q, b, time.Hour)
		if m.Receives != i {
			t.Errorf("delivery %d: Receives = %d, want %d", i, m.Receives, i)
		}
		if m.Sent.Before(before.Add(-clockSkew)) || m.Sent.After(after.Add(clockSkew)) {
			t.Fatalf("delivery %d: Sent = %v, want the send time (%v to %v)", i, m.Sent, before, after)
		}
		if i == 1 {
			sent = m.Sent
		} else if !m.Sent.Equal(sent) {
			t.Errorf("delivery %d: Sent = %v, was %v at the first delivery", i, m.Sent, sent)
		}
		if i < releases {
			if err := tr.ChangeVisibility(ctx, q, m, 0); err != nil {
				t.Fatalf("ChangeVisibility(0): %v", err)
			}
			continue
		}
		if err := tr.Delete(ctx, q, m); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	// Two messages sent one after the other are told apart by Sent in
	// the order they were sent (to the queue clock's resolution).
	send(t, tr, q, []byte("first"))
	send(t, tr, q, []byte("second"))
	got := map[string]time.Time{}
	for range 3 {
		for _, m := range receive(t, tr, q, 2, longWait, time.Hour) {
			got[string(m.Body)] = m.Sent
		}
		if len(got) == 2 {
			break
		}
	}
	if len(got) != 2 {
		t.Fatalf("received %d of the 2 messages", len(got))
	}
	if got["second"].Before(got["first"]) {
		t.Errorf("Sent of the later message %v is before the earlier one's %v", got["second"], got["first"])
	}
}

func (s *suite) testDelete(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	send(t, tr, q, []byte("gone"))
	m := receiveOne(t, tr, q, []byte("gone"), time.Second)
	if err := tr.Delete(context.Background(), q, m); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// Past the visibility timeout, a message not deleted would be back.
	receiveNone(t, tr, q, 2*time.Second)
}

// testDepth: a transport that tells a queue's depth (transport.Depther)
// counts its messages, visible and received alike, and not the deleted.
func (s *suite) testDepth(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	d, ok := tr.(transport.Depther)
	if !ok {
		t.Skip("the transport does not tell a queue's depth")
	}
	depth := func() int {
		t.Helper()
		n, err := d.Depth(context.Background(), q)
		if err != nil {
			t.Fatalf("Depth: %v", err)
		}
		return n
	}
	if n := depth(); n != 0 {
		t.Fatalf("an empty queue's depth is %d", n)
	}
	for i := range 3 {
		send(t, tr, q, body(i+1))
	}
	if n := depth(); n != 3 {
		t.Errorf("depth %d after 3 sends", n)
	}
	m := receive(t, tr, q, 1, longWait, time.Minute)
	if n := depth(); n != 3 {
		t.Errorf("depth %d with one of 3 received", n)
	}
	if err := tr.Delete(context.Background(), q, m[0]); err != nil {
		t.Fatal(err)
	}
	if n := depth(); n != 2 {
		t.Errorf("depth %d after a delete", n)
	}
}

func (s *suite) testStaleHandle(t *testing.T) {
	ctx := context.Background()
	tr, q := s.transport(t), s.queue(t)
	send(t, tr, q, []byte("stale"))
	m1 := receiveOne(t, tr, q, []byte("stale"), time.Second)
	m2 := receiveOne(t, tr, q, []byte("stale"), time.Minute)
	if !s.opts.DetectsStaleHandles {
		// All that can be asked: a stale handle is no other failure, and
		// the current holder can still delete.
		if err := tr.Delete(ctx, q, m1); err != nil && !errors.Is(err, transport.ErrStaleHandle) {
			t.Errorf("Delete with stale handle: %v", err)
		}
		if err := tr.Delete(ctx, q, m2); err != nil && !errors.Is(err, transport.ErrStaleHandle) {
			t.Errorf("Delete: %v", err)
		}
		return
	}
	if err := tr.Delete(ctx, q, m1); !errors.Is(err, transport.ErrStaleHandle) {
		t.Errorf("Delete with stale handle: %v, want ErrStaleHandle", err)
	}
	if err := tr.ChangeVisibility(ctx, q, m1, 0); !errors.Is(err, transport.ErrStaleHandle) {
		t.Errorf("ChangeVisibility with stale handle: %v, want ErrStaleHandle", err)
	}
	// The stale calls must not have touched the current delivery.
	receiveNone(t, tr, q, 0)
	if err := tr.Delete(ctx, q, m2); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := tr.Delete(ctx, q, m2); !errors.Is(err, transport.ErrStaleHandle) {
		t.Errorf("second Delete: %v, want ErrStaleHandle", err)
	}
	if err := tr.ChangeVisibility(ctx, q, m2, 0); !errors.Is(err, transport.ErrStaleHandle) {
		t.Errorf("ChangeVisibility after Delete: %v, want ErrStaleHandle", err)
	}
}

func (s *suite) testMaxMessageSize(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	n := tr.MaxMessageSize()
	if n < 1 {
		t.Fatalf("MaxMessageSize = %d", n)
	}
	err := tr.Send(context.Background(), q, body(n+1))
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Errorf("Send of %d bytes: %v, want ErrTooLarge", n+1, err)
	}
	b := body(n)
	send(t, tr, q, b)
	receiveOne(t, tr, q, b, time.Minute)
}

func (s *suite) testCancel(t *testing.T) {
	tr, q := s.transport(t), s.queue(t)
	ctx, cancel := context.WithCancel(context.Background())
	// As in testArrivalDuringWait, the cancel comes a little after the
	// Receive starts; if load makes it come first, the Receive returns
	// at once and the test checks less.
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := tr.Receive(ctx, q, 1, longWait, time.Minute)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Receive after cancel: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d >= longWait {
		t.Errorf("Receive returned %v after it started, at the end of its wait: it did not notice the cancel", d)
	}
	if _, err := tr.Receive(ctx, q, 1, longWait, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("Receive with done context: %v, want context.Canceled", err)
	}
}

func (s *suite) testConcurrentReceivers(t *testing.T) {
	const n, receivers = 40, 8
	tr, q := s.transport(t), s.queue(t)
	for i := range n {
		send(t, tr, q, fmt.Appendf(nil, "m%02d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*longWait)
	defer cancel()
	var (
		mu    sync.Mutex
		seen  = map[string]int{}
		total atomic.Int32
		wg    sync.WaitGroup
	)
	for range receivers {
		wg.Go(func() {
			for ctx.Err() == nil {
				// A visibility far longer than the test: any second
				// delivery is a failure.
				msgs, err := tr.Receive(ctx, q, 3, time.Second, time.Minute)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("Receive: %v", err)
					}
					return
				}
				mu.Lock()
				for _, m := range msgs {
					seen[string(m.Body)]++
				}
				mu.Unlock()
				if total.Add(int32(len(msgs))) >= n {
					cancel()
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("received %d distinct messages, want %d", len(seen), n)
	}
	for b, c := range seen {
		if c != 1 {
			t.Errorf("message %q delivered %d times", b, c)
		}
	}
}

func (s *suite) testMany(t *testing.T) {
	const n, senders = 200, 4
	tr, q := s.transport(t), s.queue(t)
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() {
			for i := w; i < n; i += senders {
				if err := tr.Send(context.Background(), q, fmt.Appendf(nil, "m%03d", i)); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[string]bool{}
	deadline := time.Now().Add(2 * longWait)
	for len(seen) < n && time.Now().Before(deadline) {
		for _, m := range receive(t, tr, q, 10, time.Second, time.Minute) {
			if seen[string(m.Body)] {
				t.Errorf("message %q delivered twice", m.Body)
			}
			seen[string(m.Body)] = true
			if err := tr.Delete(context.Background(), q, m); err != nil {
				t.Fatalf("Delete: %v", err)
			}
		}
	}
	for i := range n {
		if b := fmt.Sprintf("m%03d", i); !seen[b] {
			t.Errorf("message %q never arrived", b)
		}
	}
}

func (s *suite) testInvalidQueueName(t *testing.T) {
	ctx := context.Background()
	tr := s.transport(t)
	m := &transport.Message{Body: []byte("x"), Handle: "x", Receives: 1}
	for _, q := range []string{"", ".", "..", "../x", "a/b", "a.b", "a b", "é", strings.Repeat("a", 81)} {
		if err := tr.Send(ctx, q, []byte("x")); !errors.Is(err, transport.ErrInvalidQueueName) {
			t.Errorf("Send(%q): %v, want ErrInvalidQueueName", q, err)
		}
		if _, err := tr.Receive(ctx, q, 1, 0, time.Second); !errors.Is(err, transport.ErrInvalidQueueName) {
			t.Errorf("Receive(%q): %v, want ErrInvalidQueueName", q, err)
		}
		if err := tr.Delete(ctx, q, m); !errors.Is(err, transport.ErrInvalidQueueName) {
			t.Errorf("Delete(%q): %v, want ErrInvalidQueueName", q, err)
		}
		if err := tr.ChangeVisibility(ctx, q, m, 0); !errors.Is(err, transport.ErrInvalidQueueName) {
			t.Errorf("ChangeVisibility(%q): %v, want ErrInvalidQueueName", q, err)
		}
	}
}

func (s *suite) testNoQueue(t *testing.T) {
	if s.opts.CreateQueue == nil {
		t.Skip("transport creates queues on demand")
	}
	ctx := context.Background()
	tr, q := s.transport(t), s.queueName(t)
	if err := tr.Send(ctx, q, []byte("x")); !errors.Is(err, transport.ErrNoQueue) {
		t.Errorf("Send to missing queue: %v, want ErrNoQueue", err)
	}
	if _, err := tr.Receive(ctx, q, 1, 0, time.Second); !errors.Is(err, transport.ErrNoQueue) {
		t.Errorf("Receive from missing queue: %v, want ErrNoQueue", err)
	}
}
