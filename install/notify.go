package install

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/transport"
)

// Notifier tells systemd the truth about the watcher through sd_notify(3):
// READY=1 after the first poll that reached the queue, WATCHDOG=1 from
// the poll loop itself after every poll and, while a command runs, from
// the watcher every 10 s at most until the command is ExecGrace past its
// execution timeout (so a stuck loop or command stops it and systemd
// restarts the service), STATUS= with the last poll, the request counts
// and the command that runs, and STOPPING=1 when the watcher is told to
// stop. Outside systemd (no NOTIFY_SOCKET) every method does nothing.
type Notifier struct {
	// Notify sends one notification; nil uses daemon.SdNotify.
	Notify func(state string) error
	// Watchdog is systemd's watchdog timeout, 0 if none (see
	// WatchdogFromEnv).
	Watchdog time.Duration
	// OnError, if set, is told about a notification that failed.
	OnError func(error)

	mu       sync.Mutex
	ready    bool
	stopping bool
}

// NewNotifier returns a Notifier for this process, with the watchdog
// timeout systemd set for it.
func NewNotifier() (*Notifier, error) {
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return nil, fmt.Errorf("bad watchdog settings from systemd: %w", err)
	}
	return &Notifier{Watchdog: wd}, nil
}

func (n *Notifier) send(lines ...string) {
	state := strings.Join(lines, "\n")
	var err error
	if n.Notify != nil {
		err = n.Notify(state)
	} else {
		_, err = daemon.SdNotify(false, state)
	}
	if err != nil && n.OnError != nil {
		n.OnError(fmt.Errorf("sd_notify %q: %w", lines[0], err))
	}
}

// MaxPollGap is the longest the watcher may go between two polls (and so
// two watchdog notifications): a third of the watchdog timeout, so one
// slow poll or a lost datagram does not get a healthy watcher killed. 0
// means no limit.
func (n *Notifier) MaxPollGap() time.Duration { return n.Watchdog / 3 }

// Starting sets the status shown before the first poll.
func (n *Notifier) Starting(queue string) {
	n.send("STATUS=connecting to queue " + queue)
}

// OnPoll is the watcher's OnPoll hook.
func (n *Notifier) OnPoll(s sera.WatcherStatus) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopping {
		return
	}
	var lines []string
	if s.PollOK && !n.ready {
		n.ready = true
		lines = append(lines, daemon.SdNotifyReady)
	}
	if n.Watchdog > 0 {
		lines = append(lines, daemon.SdNotifyWatchdog)
	}
	lines = append(lines, "STATUS="+Status(s))
	n.send(lines...)
}

// Stopping says the watcher is shutting down: it finishes the command
// that runs and takes no new request.
func (n *Notifier) Stopping() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopping = true
	n.send(daemon.SdNotifyStopping, "STATUS=stopping: finishing the running request, if any")
}

// Status is the one-line status systemctl shows for s.
func Status(s sera.WatcherStatus) string {
	counts := fmt.Sprintf("%d requests: %d accepted, %d rejected", s.Received, s.Accepted, s.Rejected)
	at := s.LastPoll.Format("2006-01-02 15:04:05 MST")
	if s.Running != "" {
		return "running " + s.Running + " since " + s.RunningSince.Format("2006-01-02 15:04:05 MST") + "; last poll " + at + "; " + counts
	}
	if !s.PollOK {
		return "queue unreachable, retrying; last poll failed at " + at + "; " + counts
	}
	return "serving; last poll " + at + "; " + counts
}

// QuickFirstPoll wraps a watcher's transport so that its receives wait
// at most a second until one succeeds: the watcher then reports READY=1
// as soon as it has reached its queue, instead of after a whole long poll
// of an empty queue ('systemctl start sera' and a package upgrade wait
// for it).
func QuickFirstPoll(t transport.Transport) transport.Transport {
	return &quickFirst{Transport: t}
}

type quickFirst struct {
	transport.Transport
	reached atomic.Bool
}

func (q *quickFirst) Receive(ctx context.Context, queue string, max int, wait, visibility time.Duration) ([]*transport.Message, error) {
	if !q.reached.Load() {
		wait = min(wait, time.Second)
	}
	msgs, err := q.Transport.Receive(ctx, queue, max, wait, visibility)
	if err == nil {
		q.reached.Store(true)
	}
	return msgs, err
}

// Attach makes w report to systemd: it wraps w's transport with
// QuickFirstPoll, sets w.OnPoll, fits w's long poll and retry backoff
// into the watchdog timeout, says STOPPING=1 as soon as ctx ends (SIGTERM)
// and sets the status to "connecting". Call it after w is set up and
// before w.Run; outside systemd it only costs a short first poll. Call
// the returned function once w.Run has returned: if ctx has ended, it
// waits until STOPPING=1 is out, as the process may exit right after.
func (n *Notifier) Attach(ctx context.Context, w *sera.Watcher) (release func()) {
	w.Transport = QuickFirstPoll(w.Transport)
	prev := w.OnPoll
	w.OnPoll = func(s sera.WatcherStatus) {
		if prev != nil {
			prev(s)
		}
		n.OnPoll(s)
	}
	if gap := n.MaxPollGap(); gap > 0 {
		w.PollWait = min(orDefault(w.PollWait, 20*time.Second), gap)
		w.MaxBackoff = min(orDefault(w.MaxBackoff, sera.DefaultMaxBackoff), gap)
		w.MinBackoff = min(orDefault(w.MinBackoff, time.Second), w.MaxBackoff)
	}
	n.Starting(w.Queue())
	sent := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(sent)
		n.Stopping()
	})
	return func() {
		if !stop() {
			<-sent
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
