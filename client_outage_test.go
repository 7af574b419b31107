package sera_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// missingQueue is a transport on which one queue does not exist.
type missingQueue struct {
	transport.Transport
	queue string
}

func (m *missingQueue) Receive(ctx context.Context, queue string, max int, wait, visibility time.Duration) ([]*transport.Message, error) {
	if queue == m.queue {
		return nil, fmt.Errorf("failed to receive from %q: %w", queue, transport.ErrNoQueue)
	}
	return m.Transport.Receive(ctx, queue, max, wait, visibility)
}

// warnings collects what a client tells its user.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) add(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string{}, w.msgs...)
}

// A client that cannot receive its replies sends nothing: no watcher
// gets the request, and the error says why and that nothing was sent.
func TestClientReplyQueueMissing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.newClient(&missingQueue{Transport: f.tr, queue: f.clientQueue(f.client)})
	out, err := c.Do(context.Background(), []*sera.KnownWatcher{known(f.w)},
		sera.Target{Names: []string{"web1"}}, []string{"echo", "hello"}, 10*time.Second, nil)
	if !errors.Is(err, sera.ErrNotSent) || !strings.Contains(err.Error(), "cannot receive replies on "+f.clientQueue(f.client)) ||
		!strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Do = %+v, %v; want nothing sent, the reply queue does not exist", out, err)
	}
	assertQueueEmpty(t, f.tr, f.w.Queue())
}

// A process whose own reply queue does not exist (registered before there
// were several) shares the identity's first, says so once, and gets its
// reply.
func TestClientReplyQueueFallback(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	fp := f.client.Public().Fingerprint()
	c := f.newClient(&missingQueue{Transport: f.tr, queue: transport.ReplyQueue(testPrefix, fp, 3)})
	c.ReplyQueue = transport.ReplyQueue(testPrefix, fp, 3)
	var w warnings
	c.Warn = w.add
	for range 2 {
		out, err := c.Do(context.Background(), []*sera.KnownWatcher{known(f.w)},
			sera.Target{Names: []string{"web1"}}, []string{"echo", "hello"}, 10*time.Second, nil)
		if err != nil || len(out.Replies) != 1 {
			t.Fatalf("Do = %+v, %v", out, err)
		}
	}
	if got := w.all(); len(got) != 1 || !strings.Contains(got[0], "does not exist, so this process shares "+f.clientQueue(f.client)) {
		t.Errorf("warnings %q, want one that the process shares the first reply queue", got)
	}
	assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
}

// The queue server goes away for 10 s while a client waits for its reply
// with a minute to spare: the client keeps trying, and the reply arrives.
func TestClientOutage(t *testing.T) {
	t.Parallel()
	srv := sqstest.Start(t)
	proxy := srv.Proxy(t)
	f := newFixture(t)
	ctx := context.Background()
	for _, q := range []string{f.w.Queue(), f.clientQueue(f.client)} {
		if _, err := sqs.CreateQueue(ctx, srv.Config, q); err != nil {
			t.Fatal(err)
		}
	}
	// The watcher is cut off too; it comes back within its backoff.
	f.w.Transport = sqs.NewFromConfig(proxy.Config)
	// A receive whose answer the outage cut hides its message for the
	// visibility timeout: keep that short of the client's.
	f.w.Visibility = 5 * time.Second
	start(t, f.w)
	c := f.newClient(sqs.NewFromConfig(proxy.Config))
	var w warnings
	c.Warn = w.add
	outage := make(chan struct{})
	job := &sera.Job{
		Watchers: []*sera.KnownWatcher{known(f.w)}, Target: sera.Target{Names: []string{"web1"}},
		Argv: []string{"echo", "hello"}, Timeout: time.Minute,
		OnEvent: func(e sera.Event) {
			if e.Kind == sera.EventSent {
				// The request has left: the server goes away now, and
				// comes back in 10 s.
				proxy.Down()
				// The outage's length is the scenario (issue 14: a
				// server away for 10 s), not a wait for code to run.
				time.AfterFunc(10*time.Second, func() {
					proxy.Up()
					close(outage)
				})
			}
		},
	}
	out, err := c.Run(ctx, job)
	<-outage
	if err != nil || len(out.Replies) != 1 || out.Replies[0].Reply.Status != 0 || string(out.Replies[0].Reply.Stdout) != "hello\n" {
		t.Fatalf("Run = %+v, %v; want the reply after the outage", out, err)
	}
	if proxy.Refused() == 0 {
		t.Errorf("no connection was refused: the outage did not happen")
	}
	got := w.all()
	if len(got) != 1 || !strings.Contains(got[0], "receiving replies on "+f.clientQueue(f.client)+" failed; retrying until the timeout") {
		t.Errorf("warnings %q, want one that receiving failed and is retried", got)
	}
	if calls := f.h.Calls(); len(calls) != 1 {
		t.Errorf("ran %q, want once", calls)
	}
}

// flakySend fails the first n sends to queue.
type flakySend struct {
	transport.Transport
	queue string
	mu    sync.Mutex
	n     int
}

func (f *flakySend) Send(ctx context.Context, queue string, body []byte) error {
	f.mu.Lock()
	fail := queue == f.queue && f.n > 0
	if fail {
		f.n--
	}
	f.mu.Unlock()
	if fail {
		return errors.New("connection refused")
	}
	return f.Transport.Send(ctx, queue, body)
}

// A reply that fails to send is tried again at once, not left until the
// request is delivered again.
func TestWatcherRetriesReply(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	flaky := &flakySend{Transport: f.tr, queue: f.clientQueue(f.client), n: 2}
	f.w.Transport = flaky
	m := f.deliver(f.w, f.sealed(f.request("echo", "hi")))
	if r := drain(t, f.tr, f.client, 0); len(r.replies) != 1 || string(r.replies[0].Stdout) != "hi\n" {
		t.Fatalf("replies %+v, want the one reply", r.replies)
	}
	if flaky.n != 0 {
		t.Errorf("%d failures left, want both used", flaky.n)
	}
	assertDeleted(t, f.tr, f.w.Queue(), m)
}

// failingReceives fails every Receive on queue while fail is set, and
// notes when each Receive was called.
type failingReceives struct {
	transport.Transport
	queue string
	mu    sync.Mutex
	fail  bool
	calls []time.Time
}

func (f *failingReceives) Receive(ctx context.Context, queue string, max int, wait, visibility time.Duration) ([]*transport.Message, error) {
	f.mu.Lock()
	f.calls = append(f.calls, time.Now())
	fail := f.fail && queue == f.queue
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("failed to receive from %q: %w", queue, transport.ErrNoQueue)
	}
	return f.Transport.Receive(ctx, queue, max, wait, visibility)
}

// A watcher whose queue is missing retries at most DefaultMaxBackoff
// apart, however long it has been missing, and once a poll succeeds the
// next failure waits the shortest pause again.
func TestWatcherBackoffCapped(t *testing.T) {
	inFakeTime(t, func(t *testing.T, f *fixture) {
		fr := &failingReceives{Transport: f.tr, queue: f.w.Queue(), fail: true}
		f.w.Transport, f.w.MinBackoff, f.w.MaxBackoff = fr, 0, 0
		start(t, f.w)
		advance(2 * time.Minute)
		fr.mu.Lock()
		calls := slices.Clone(fr.calls)
		fr.fail = false
		fr.mu.Unlock()
		if len(calls) < 10 {
			t.Fatalf("%d polls in 2 minutes", len(calls))
		}
		gap := func(cs []time.Time) (longest time.Duration) {
			for i := 1; i < len(cs); i++ {
				longest = max(longest, cs[i].Sub(cs[i-1]))
			}
			return longest
		}
		if g := gap(calls); g > sera.DefaultMaxBackoff || g < sera.DefaultMaxBackoff/2 {
			t.Errorf("longest wait between failed polls %s, want it to grow to at most %s", g, sera.DefaultMaxBackoff)
		}
		// The queue is back: polls succeed (and wait their long poll).
		advance(time.Minute)
		fr.mu.Lock()
		n := len(fr.calls)
		fr.fail = true
		fr.mu.Unlock()
		advance(3 * time.Second)
		fr.mu.Lock()
		after := slices.Clone(fr.calls[n:])
		fr.mu.Unlock()
		// The first failure after a success waits about a second, not 10.
		if len(after) < 3 {
			t.Errorf("%d polls in the 3 s after the queue went again, want the backoff to start over", len(after))
		}
	})
}
