package sera_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/transport"
)

// fleet makes n started watchers h01…hNN on the fixture's spool. Those
// listed in failing trust the client with ping only, so "echo" is refused
// there (status 126): a host that answers, with a failure.
func (f *fixture) fleet(t *testing.T, n int, failing ...string) ([]*sera.Watcher, []*sera.KnownWatcher) {
	t.Helper()
	pingOnly := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: f.client.Public(), Name: "alice"}}}
	pingOnlyPath := filepath.Join(f.dir, "known_clients.ping")
	if err := safefile.WriteAtomic(pingOnlyPath, pingOnly.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var ws []*sera.Watcher
	var kws []*sera.KnownWatcher
	for i := 1; i <= n; i++ {
		w := f.newWatcher(fmt.Sprintf("h%02d", i), "fleet")
		if slices.Contains(failing, w.Name) {
			w.Clients = &sera.ClientFile{Path: pingOnlyPath}
		}
		start(t, w)
		ws = append(ws, w)
		kws = append(kws, known(w))
	}
	return ws, kws
}

// eventLog records a job's events; it is safe to read while the job runs.
type eventLog struct {
	mu     sync.Mutex
	events []sera.Event
}

func (l *eventLog) add(e sera.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) all() []sera.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func (l *eventLog) names(kind sera.EventKind) []string {
	var out []string
	for _, e := range l.all() {
		if e.Kind == kind {
			out = append(out, e.Watcher.Name)
		}
	}
	slices.Sort(out)
	return out
}

// maxInFlight replays the events and returns the most watchers that had
// the request without having answered or timed out.
func maxInFlight(events []sera.Event) int {
	n, most := 0, 0
	for _, e := range events {
		switch e.Kind {
		case sera.EventSent:
			n++
			most = max(most, n)
		case sera.EventReply, sera.EventTimedOut:
			n--
		}
	}
	return most
}

func ran(ws []*sera.Watcher) []string {
	var out []string
	for _, w := range ws {
		if fakeOf(w.Handler).Count() > 0 {
			out = append(out, w.Name)
		}
	}
	return out
}

func TestRunMaxErrorsStopsSending(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// Three failing hosts of ten, the third of them after hosts that
	// must never be reached.
	ws, kws := f.fleet(t, 10, "h02", "h04", "h06")
	var log eventLog
	out, err := f.newClient(nil).Run(context.Background(), &sera.Job{
		Watchers: kws, Target: sera.Target{Groups: []string{"fleet"}}, Argv: []string{"echo", "hi"},
		Timeout: 20 * time.Second, MaxConcurrency: 2,
		StopAfter: 2, // --max-errors 1
		OnEvent:   log.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	events := log.all()
	// After the event that brought the failures to two, nothing more
	// was sent.
	failures := 0
	for i, e := range events {
		if e.Kind == sera.EventReply && e.Reply.Status != 0 || e.Kind == sera.EventTimedOut || e.Kind == sera.EventSendFailed {
			failures++
		}
		if failures >= 2 {
			for _, later := range events[i+1:] {
				if later.Kind == sera.EventSent {
					t.Errorf("%s was sent the request after the second failure", later.Watcher.Name)
				}
			}
			break
		}
	}
	if failures < 2 {
		t.Fatalf("only %d failures seen: %v", failures, log.names(sera.EventReply))
	}
	if m := maxInFlight(events); m > 2 {
		t.Errorf("%d hosts in flight at once, want at most 2", m)
	}
	sent := log.names(sera.EventSent)
	// h04 is the second failure at the latest, so h01 to h06 at most
	// were ever sent it, whatever order the replies came in.
	for _, w := range []string{"h07", "h08", "h09", "h10"} {
		if slices.Contains(sent, w) {
			t.Errorf("%s was sent the request", w)
		}
	}
	// What the watchers did agrees with what the client says it sent:
	// a skipped host never saw the request (a watcher audits every
	// request, refused or run, just after it replies).
	var saw []string
	for _, w := range ws {
		a := w.Audit.(*memAudit)
		if slices.Contains(sent, w.Name) {
			a.wait(t, 1)
		}
		if len(a.Records()) > 0 {
			saw = append(saw, w.Name)
		}
	}
	equal(t, "hosts that saw the request", saw, sent)
	equal(t, "skipped", names(out.Skipped), log.names(sera.EventSkipped))
	if len(out.Skipped)+len(sent) != 10 {
		t.Errorf("%d skipped + %d sent is not 10", len(out.Skipped), len(sent))
	}
	if out.Failed() < 2 || len(out.Missing) != 0 || len(out.SendErrors) != 0 {
		t.Errorf("outcome: %d failed, missing %v, send errors %v", out.Failed(), names(out.Missing), out.SendErrors)
	}
	// Every host sent the request answered; none was left waiting.
	equal(t, "replied", log.names(sera.EventReply), sent)
}

func TestRunMaxConcurrency(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		ws, kws := f.fleet(t, 5)
		var log eventLog
		done := make(chan error, 1)
		var out *sera.Outcome
		go func() {
			var err error
			out, err = f.newClient(nil).Run(context.Background(), &sera.Job{
				Watchers: kws, Target: sera.Target{All: true}, Argv: []string{"sleep"},
				Timeout: 30 * time.Second, MaxConcurrency: 2, OnEvent: log.add,
			})
			done <- err
		}()
		started := func() []string {
			var out []string
			for _, w := range ws {
				if fakeOf(w.Handler).Count() > 0 {
					out = append(out, w.Name)
				}
			}
			return out
		}
		// settled checks the hosts that run the command once the fleet has
		// done all it does in a second of fake time: every poll of the
		// fixture is 100ms or less, so a request sent in that time has run.
		settled := func(n int) {
			t.Helper()
			advance(time.Second)
			if got := started(); len(got) != n {
				t.Fatalf("%d hosts run the command (%v), want %d", len(got), got, n)
			}
		}
		// Hosts are sent the request in order, two at a time; a host that
		// answers makes room for the next.
		settled(2)
		equal(t, "first two", started(), []string{"h01", "h02"})
		fakeOf(ws[0].Handler).Release()
		settled(3)
		fakeOf(ws[1].Handler).Release()
		settled(4)
		for _, w := range ws {
			fakeOf(w.Handler).Release()
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if len(out.Replies) != 5 || out.Failed() != 0 || len(out.Skipped) != 0 {
			t.Fatalf("%d replies, %d failed, skipped %v", len(out.Replies), out.Failed(), names(out.Skipped))
		}
		if m := maxInFlight(log.all()); m != 2 {
			t.Errorf("%d hosts in flight at most, want 2", m)
		}
	})
}

func TestRunTimeoutFreesSlot(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		_, kws := f.fleet(t, 3)
		// h00 is known but its watcher does not run: it never answers.
		dead := known(f.newWatcher("h00", "fleet"))
		kws = append([]*sera.KnownWatcher{dead}, kws...)
		var log eventLog
		began := time.Now()
		out, err := f.newClient(nil).Run(context.Background(), &sera.Job{
			Watchers: kws, Target: sera.Target{All: true}, Argv: []string{"ping"},
			Timeout: 700 * time.Millisecond, MaxConcurrency: 1, OnEvent: log.add,
		})
		if err != nil {
			t.Fatal(err)
		}
		// In fake time the live hosts answer at once: the job took the
		// dead host's timeout, and little more.
		if d := time.Since(began); d < 700*time.Millisecond || d > time.Second {
			t.Errorf("done in %s, want the dead host's 700ms timeout", d)
		}
		equal(t, "missing", names(out.Missing), []string{"h00"})
		equal(t, "replied", log.names(sera.EventReply), []string{"h01", "h02", "h03"})
		equal(t, "timed out", log.names(sera.EventTimedOut), []string{"h00"})
		if out.Failed() != 1 {
			t.Errorf("%d failed, want 1", out.Failed())
		}
		// Each host's timeout counts from its own send: the live hosts sent
		// after the dead one timed out still answered.
		if m := maxInFlight(log.all()); m != 1 {
			t.Errorf("%d in flight at most, want 1", m)
		}
	})
}

// failSend fails sends to some queues.
type failSend struct {
	transport.Transport
	fail map[string]bool
}

func (t *failSend) Send(ctx context.Context, queue string, body []byte) error {
	if t.fail[queue] {
		return errors.New("queue unreachable (test)")
	}
	return t.Transport.Send(ctx, queue, body)
}

func TestRunSendFailuresCount(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ws, kws := f.fleet(t, 5)
	tr := &failSend{Transport: f.tr, fail: map[string]bool{ws[0].Queue(): true, ws[1].Queue(): true}}
	out, err := f.newClient(tr).Run(context.Background(), &sera.Job{
		Watchers: kws, Target: sera.Target{All: true}, Argv: []string{"ping"},
		Timeout: 10 * time.Second, MaxConcurrency: 1, StopAfter: 2,
	})
	if err == nil {
		t.Error("no error when the request reached no watcher")
	}
	if len(out.SendErrors) != 2 || out.Failed() != 2 {
		t.Errorf("send errors %v", out.SendErrors)
	}
	equal(t, "skipped", names(out.Skipped), []string{"h03", "h04", "h05"})
	equal(t, "ran", ran(ws), nil)
}

// topicTransport is a transport that can publish: a topic's subscribers
// are a fixed list of queues, as SNS with raw delivery would have them.
type topicTransport struct {
	countingTransport
	subscribers map[string][]string
	maxPublish  int
	failPublish error

	mu        sync.Mutex
	published map[string]int
}

func (t *topicTransport) Publish(ctx context.Context, topic string, body []byte) error {
	t.mu.Lock()
	if t.published == nil {
		t.published = map[string]int{}
	}
	t.published[topic]++
	t.mu.Unlock()
	if t.failPublish != nil {
		return t.failPublish
	}
	if len(body) > t.maxPublish {
		return transport.ErrTooLarge
	}
	subs, ok := t.subscribers[topic]
	if !ok {
		return transport.ErrNoTopic
	}
	for _, q := range subs {
		// Straight to the queue: a publish is not a send of the client.
		if err := t.countingTransport.Transport.Send(ctx, q, body); err != nil {
			return err
		}
	}
	return nil
}

func (t *topicTransport) MaxPublishSize() int { return t.maxPublish }

func (t *topicTransport) Published(topic string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.published[topic]
}

func TestRunPublishes(t *testing.T) {
	t.Parallel()
	topic := transport.GroupTopic(testPrefix, "fleet")
	for _, tt := range []struct {
		name        string
		maxPublish  int
		failPublish error
		job         sera.Job
		published   bool
	}{
		{name: "one publish", maxPublish: 256 << 10, published: true},
		{name: "publish fails", maxPublish: 256 << 10, failPublish: errors.New("access denied (test)")},
		{name: "too large for one publish", maxPublish: 300},
		{name: "paced", maxPublish: 256 << 10, job: sera.Job{MaxConcurrency: 2}},
		{name: "error budget", maxPublish: 256 << 10, job: sera.Job{StopAfter: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			ws, kws := f.fleet(t, 4)
			tr := &topicTransport{countingTransport: countingTransport{Transport: f.tr}, maxPublish: tt.maxPublish, failPublish: tt.failPublish}
			tr.subscribers = map[string][]string{topic: nil}
			for _, w := range ws {
				tr.subscribers[topic] = append(tr.subscribers[topic], w.Queue())
			}
			job := tt.job
			job.Watchers, job.Target, job.Argv, job.Timeout, job.Topic = kws, sera.Target{Groups: []string{"fleet"}}, []string{"ping"}, 20*time.Second, topic
			c := f.newClient(tr)
			var warned []string
			c.Warn = func(msg string) { warned = append(warned, msg) }
			out, err := c.Run(context.Background(), &job)
			if err != nil {
				t.Fatal(err)
			}
			// A publish that failed is said, not hidden in the log.
			if tt.failPublish != nil {
				if len(warned) != 1 || !strings.Contains(warned[0], "publishing to topic "+topic+" failed, so the request goes to each watcher's queue instead: access denied") {
					t.Errorf("warnings %q, want one that the publish failed", warned)
				}
			} else if len(warned) != 0 {
				t.Errorf("warnings %q, want none", warned)
			}
			if len(out.Replies) != 4 || out.Failed() != 0 {
				t.Fatalf("%d replies, %d failed", len(out.Replies), out.Failed())
			}
			direct := 0
			for _, w := range ws {
				direct += len(tr.Sent(w.Queue()))
				if n := fakeOf(w.Handler).Count(); n != 1 {
					t.Errorf("%s ran %d times", w.Name, n)
				}
			}
			if tt.published {
				if out.Published != topic || tr.Published(topic) != 1 || direct != 0 {
					t.Errorf("published to %q (%d times), %d direct sends; want one publish", out.Published, tr.Published(topic), direct)
				}
				return
			}
			if out.Published != "" || direct != 4 {
				t.Errorf("published to %q, %d direct sends; want one send per watcher", out.Published, direct)
			}
		})
	}
}

func TestRunExecTimeoutSigned(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ws, kws := f.fleet(t, 1)
	tr := &countingTransport{Transport: f.tr}
	if _, err := f.newClient(tr).Run(context.Background(), &sera.Job{
		Watchers: kws, Target: sera.Target{Names: []string{"h01"}}, Argv: []string{"ping"},
		Timeout: 10 * time.Second, ExecTimeout: 1500 * time.Millisecond,
	}); err != nil {
		t.Fatal(err)
	}
	sent := tr.Sent(ws[0].Queue())
	if len(sent) != 1 {
		t.Fatalf("%d messages sent", len(sent))
	}
	env, err := crypto.ParseEnvelope(sent[0])
	if err != nil {
		t.Fatal(err)
	}
	payload, err := env.Open(ws[0].Identity)
	if err != nil {
		t.Fatal(err)
	}
	req, err := sera.ParseRequest(payload)
	if err != nil {
		t.Fatal(err)
	}
	if req.ExecTimeout() != 1500*time.Millisecond {
		t.Errorf("exec timeout %s in the signed request", req.ExecTimeout())
	}
	_, err = f.newClient(nil).Run(context.Background(), &sera.Job{
		Watchers: kws, Target: sera.Target{All: true}, Argv: []string{"ping"}, Timeout: time.Second,
		ExecTimeout: 25 * time.Hour,
	})
	if err == nil {
		t.Error("an execution timeout over the request lifetime limit was accepted")
	}
}

func TestRunRefusesDuplicateWatcher(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, kws := f.fleet(t, 2)
	_, err := f.newClient(nil).Run(context.Background(), &sera.Job{
		Watchers: append(kws, kws[0]), Target: sera.Target{All: true}, Argv: []string{"ping"}, Timeout: time.Second,
	})
	if err == nil {
		t.Error("a job naming a watcher twice was accepted")
	}
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: %q, want %q", what, got, want)
	}
}
