package install

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/transport"
)

// notifySocket listens where NOTIFY_SOCKET points, as systemd does, and
// returns the datagrams it gets.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

// next returns the next datagram. The deadline is only a guard against
// one that never comes.
func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(time.Minute):
		t.Fatal("no notification")
		return ""
	}
}

func TestNotifier(t *testing.T) {
	ch := notifySocket(t)
	n := &Notifier{Watchdog: 90 * time.Second, OnError: func(err error) { t.Error(err) }}
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

	n.Starting("sera-w-web1")
	if m := next(t, ch); m != "STATUS=connecting to queue sera-w-web1" {
		t.Errorf("starting: %q", m)
	}
	// A failed poll: the loop is alive (WATCHDOG=1) but not ready.
	n.OnPoll(sera.WatcherStatus{LastPoll: at, PollOK: false})
	if m := next(t, ch); m != "WATCHDOG=1\nSTATUS=queue unreachable, retrying; last poll failed at 2026-11-23 10:00:00 UTC; 0 requests: 0 accepted, 0 rejected" {
		t.Errorf("failed poll: %q", m)
	}
	// The first poll that reached the queue: READY=1, once.
	n.OnPoll(sera.WatcherStatus{LastPoll: at, PollOK: true})
	if m := next(t, ch); !strings.HasPrefix(m, "READY=1\nWATCHDOG=1\nSTATUS=serving; last poll 2026-11-23 10:00:00 UTC;") {
		t.Errorf("first poll: %q", m)
	}
	n.OnPoll(sera.WatcherStatus{LastPoll: at, PollOK: true, Received: 3, Accepted: 2, Rejected: 1})
	if m := next(t, ch); m != "WATCHDOG=1\nSTATUS=serving; last poll 2026-11-23 10:00:00 UTC; 3 requests: 2 accepted, 1 rejected" {
		t.Errorf("second poll: %q", m)
	}
	n.Stopping()
	if m := next(t, ch); !strings.HasPrefix(m, "STOPPING=1\n") {
		t.Errorf("stopping: %q", m)
	}
	// Once stopping, a last poll does not pretend to be alive. Each
	// notification is queued on the socket before its call returns, and
	// Starting sends whatever the state: had the poll sent anything, it
	// would come before Starting's.
	n.OnPoll(sera.WatcherStatus{LastPoll: at, PollOK: true})
	n.Starting("marker")
	if m := next(t, ch); m != "STATUS=connecting to queue marker" {
		t.Errorf("after stopping: %q", m)
	}
}

func TestNotifierWithoutWatchdog(t *testing.T) {
	ch := notifySocket(t)
	n := &Notifier{}
	n.OnPoll(sera.WatcherStatus{PollOK: true})
	if m := next(t, ch); strings.Contains(m, "WATCHDOG") || !strings.HasPrefix(m, "READY=1\n") {
		t.Errorf("poll: %q", m)
	}
}

func TestNewNotifierReadsWatchdog(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "90000000")
	t.Setenv("WATCHDOG_PID", "")
	n, err := NewNotifier()
	if err != nil || n.Watchdog != 90*time.Second || n.MaxPollGap() != 30*time.Second {
		t.Errorf("NewNotifier: %+v, %v", n, err)
	}
	t.Setenv("WATCHDOG_USEC", "")
	if n, err := NewNotifier(); err != nil || n.Watchdog != 0 || n.MaxPollGap() != 0 {
		t.Errorf("without systemd: %+v, %v", n, err)
	}
}

// recordingTransport records the waits of Receive and fails while fail
// is set.
type recordingTransport struct {
	transport.Transport
	waits []time.Duration
	fail  bool
}

func (r *recordingTransport) Receive(ctx context.Context, queue string, max int, wait, vis time.Duration) ([]*transport.Message, error) {
	r.waits = append(r.waits, wait)
	if r.fail {
		return nil, context.DeadlineExceeded
	}
	return nil, nil
}

func TestAttach(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := notifySocket(t)
	rec := &recordingTransport{fail: true}
	w := &sera.Watcher{Name: "web1", Prefix: "sera", Transport: rec}
	n := &Notifier{Watchdog: 15 * time.Second}
	release := n.Attach(ctx, w)
	defer release()
	if w.PollWait != 5*time.Second || w.MaxBackoff != 5*time.Second || w.MinBackoff != time.Second {
		t.Errorf("poll wait %s, backoff %s..%s; want everything within 5s", w.PollWait, w.MinBackoff, w.MaxBackoff)
	}
	if m := next(t, ch); m != "STATUS=connecting to queue sera-w-web1" {
		t.Errorf("status: %q", m)
	}
	// Short polls until one reaches the queue, then long ones.
	for _, fail := range []bool{true, false, false} {
		rec.fail = fail
		w.Transport.Receive(ctx, "q", 1, 20*time.Second, time.Minute)
	}
	if want := []time.Duration{time.Second, time.Second, 20 * time.Second}; len(rec.waits) != 3 || rec.waits[0] != want[0] || rec.waits[1] != want[1] || rec.waits[2] != want[2] {
		t.Errorf("waits %v, want %v", rec.waits, want)
	}
	w.OnPoll(sera.WatcherStatus{PollOK: true})
	if m := next(t, ch); !strings.HasPrefix(m, "READY=1\nWATCHDOG=1\n") {
		t.Errorf("poll: %q", m)
	}
	// SIGTERM cancels the watcher's context: STOPPING=1 at once.
	cancel()
	if m := next(t, ch); !strings.HasPrefix(m, "STOPPING=1\n") {
		t.Errorf("stop: %q", m)
	}
}

func TestAttachWithoutWatchdogKeepsTimings(t *testing.T) {
	w := &sera.Watcher{Name: "web1", Transport: &recordingTransport{}}
	(&Notifier{Notify: func(string) error { return nil }}).Attach(context.Background(), w)()
	if w.PollWait != 0 || w.MaxBackoff != 0 || w.MinBackoff != 0 {
		t.Errorf("timings changed without a watchdog: %s %s %s", w.PollWait, w.MinBackoff, w.MaxBackoff)
	}
}

// The watcher stops as soon as SIGTERM cancels its context and the process
// exits right after: release must not return before STOPPING=1 is sent.
// In a synctest bubble each notification takes a millisecond of the fake
// clock, which moves only while release waits: a release that does not
// wait returns before the stop's notification, every time.
func TestAttachReleaseWaitsForStopping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var sent []string
		var mu sync.Mutex
		n := &Notifier{Notify: func(state string) error {
			time.Sleep(time.Millisecond) // a slow socket, on the fake clock
			mu.Lock()
			sent = append(sent, state)
			mu.Unlock()
			return nil
		}}
		release := n.Attach(ctx, &sera.Watcher{Name: "web1", Transport: &recordingTransport{}})
		cancel()
		release()
		mu.Lock()
		last := ""
		if len(sent) > 0 {
			last = sent[len(sent)-1]
		}
		mu.Unlock()
		if !strings.HasPrefix(last, "STOPPING=1\n") {
			t.Fatalf("release returned before STOPPING=1: sent %q", sent)
		}
		// Without a stop, release does not wait.
		n = &Notifier{Notify: func(string) error { return nil }}
		n.Attach(context.Background(), &sera.Watcher{Name: "web1", Transport: &recordingTransport{}})()
	})
}

// While a command runs, the watcher keeps calling OnPoll with Running
// set: each call feeds the watchdog and says what runs.
func TestNotifierWhileRunning(t *testing.T) {
	ch := notifySocket(t)
	n := &Notifier{Watchdog: WatchdogSec, OnError: func(err error) { t.Error(err) }}
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	n.OnPoll(sera.WatcherStatus{LastPoll: at, PollOK: true})
	if m := next(t, ch); !strings.HasPrefix(m, "READY=1\nWATCHDOG=1\n") {
		t.Errorf("poll: %q", m)
	}
	busy := sera.WatcherStatus{LastPoll: at, PollOK: true, Received: 1, Running: "user add", RunningSince: at.Add(time.Second)}
	for range 3 {
		n.OnPoll(busy)
		if m := next(t, ch); m != "WATCHDOG=1\nSTATUS=running user add since 2026-11-23 10:00:01 UTC; last poll 2026-11-23 10:00:00 UTC; 1 requests: 0 accepted, 0 rejected" {
			t.Errorf("while running: %q", m)
		}
	}
	// Done: the next poll says so.
	n.OnPoll(sera.WatcherStatus{LastPoll: at.Add(time.Minute), PollOK: true, Received: 1, Accepted: 1})
	if m := next(t, ch); m != "WATCHDOG=1\nSTATUS=serving; last poll 2026-11-23 10:01:00 UTC; 1 requests: 1 accepted, 0 rejected" {
		t.Errorf("after: %q", m)
	}
}

func TestStatusRunning(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		s    sera.WatcherStatus
		want string
	}{
		{sera.WatcherStatus{LastPoll: at, PollOK: true, Received: 2, Accepted: 1, Running: "ping", RunningSince: at.Add(2 * time.Second)},
			"running ping since 2026-11-23 10:00:02 UTC; last poll 2026-11-23 10:00:00 UTC; 2 requests: 1 accepted, 0 rejected"},
		{sera.WatcherStatus{LastPoll: at, PollOK: true, Received: 2, Accepted: 2},
			"serving; last poll 2026-11-23 10:00:00 UTC; 2 requests: 2 accepted, 0 rejected"},
	} {
		if got := Status(tc.s); got != tc.want {
			t.Errorf("Status(%+v) = %q, want %q", tc.s, got, tc.want)
		}
	}
}

// The watcher's reports while a command runs (every 10 s at most, see
// sera.ExecGrace) fit the unit's watchdog, and a command stuck past its
// limit still gets the watcher restarted: its reports stop ExecGrace after
// the limit, and WatchdogSec later systemd acts.
func TestWatchdogFitsExecTimeout(t *testing.T) {
	n := &Notifier{Watchdog: WatchdogSec}
	if gap := n.MaxPollGap(); gap < 10*time.Second {
		t.Errorf("max poll gap %s is shorter than the watcher's busy report interval (10s)", gap)
	}
	if sera.ExecGrace <= 5*time.Second || sera.ExecGrace >= WatchdogSec {
		t.Errorf("ExecGrace %s: want longer than the 5s a killed program's output is waited for, shorter than WatchdogSec %s", sera.ExecGrace, WatchdogSec)
	}
}
