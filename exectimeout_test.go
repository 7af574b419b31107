package sera_test

// The execution timeout on the watcher: a request's exec_timeout_ms capped
// at the watcher's ExecTimeout, StatusTimedOut for a command that ran past
// it, and OnPoll (the watchdog) fed while a command runs.

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
)

// checkTimedOut checks what a command killed at its limit leaves: one
// accepted audit record with exit 124 and reason, one reply with status
// 124, the output the command printed before and stderr exactly as
// given, and the request gone from the queue.
func (f *fixture) checkTimedOut(t *testing.T, m *transport.Message, argv []string, stdout, stderr, reason string) *sera.Reply {
	t.Helper()
	recs := f.a.Records()
	if len(recs) != 1 {
		t.Fatalf("%d audit records, want 1: %+v", len(recs), recs)
	}
	rec := recs[0]
	if rec.Decision != sera.DecisionAccepted || rec.Rule != 0 || rec.Exit == nil || *rec.Exit != sera.StatusTimedOut || rec.Reason != reason {
		t.Errorf("audit %+v (exit %v), want accepted, exit 124, reason %q", rec, deref(rec.Exit), reason)
	}
	if !slices.Equal(rec.Argv, argv) {
		t.Errorf("audit argv %q, want %q", rec.Argv, argv)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 1 {
		t.Fatalf("%d replies, want 1", len(got.replies))
	}
	r := got.replies[0]
	if r.Status != sera.StatusTimedOut || r.Rejected != "" || r.ID != rec.RequestID {
		t.Errorf("reply status %d, rejected %q, id %s; want 124 for %s", r.Status, r.Rejected, r.ID, rec.RequestID)
	}
	if string(r.Stdout) != stdout || string(r.Stderr) != stderr {
		t.Errorf("reply stdout %q stderr %q, want %q and %q", r.Stdout, r.Stderr, stdout, stderr)
	}
	assertDeleted(t, f.tr, f.w.Queue(), m)
	return r
}

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

// checkDeadline checks that the command's context ended limit after it
// started, which was between t0 and t1.
func checkDeadline(t *testing.T, h *fakeHandler, t0, t1 time.Time, limit time.Duration) {
	t.Helper()
	ds := h.Deadlines()
	if len(ds) != 1 {
		t.Fatalf("%d calls, want 1", len(ds))
	}
	if d := ds[0]; d.Before(t0.Add(limit)) || d.After(t1.Add(limit)) {
		t.Errorf("command context ends %s after it started, want %s", d.Sub(t0).Round(time.Millisecond), limit)
	}
}

// In fake time (inFakeTime) a command killed at its limit ran exactly its
// limit: a watcher that let it run longer, or killed it sooner, fails
// however busy the machine. Without a working limit the bubble has nothing
// left to wait for and synctest fails the test: it does not hang.
func TestExecTimeoutOfRequest(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		f.w.ExecTimeout = 20 * time.Second
		req := f.request("block")
		req.ExecTimeoutMS = 200
		t0 := time.Now()
		m := f.deliver(f.w, f.sealed(req))
		if took := time.Since(t0); took != 200*time.Millisecond {
			t.Errorf("the request took %s, want its 200ms limit (the watcher's is 20s)", took)
		}
		checkDeadline(t, f.h, t0, t0, 200*time.Millisecond)
		r := f.checkTimedOut(t, m, []string{"block"}, "started\n",
			"partial\nsera: the command ran longer than 200ms and was killed\n", "timed out after 200ms")
		if d := r.Ended.Sub(r.Started); d != 200*time.Millisecond {
			t.Errorf("reply started %s, ended %s: %s, not the 200ms it ran", r.Started, r.Ended, d)
		}
	})
}

func TestExecTimeoutOfWatcher(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		asked  int64 // ms
		stderr string
	}{
		{"none asked", 0, "partial\nsera: the command ran longer than 300ms and was killed\n"},
		{"more asked", time.Hour.Milliseconds(), "partial\nsera: the command ran longer than 300ms, this watcher's limit (the request asked for 1h), and was killed\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			inFakeTime(t, func(t *testing.T, f *fixture) {
				f.w.ExecTimeout = 300 * time.Millisecond
				req := f.request("block")
				req.ExecTimeoutMS = tc.asked
				t0 := time.Now()
				m := f.deliver(f.w, f.sealed(req))
				if took := time.Since(t0); took != 300*time.Millisecond {
					t.Errorf("the request took %s, want the watcher's 300ms", took)
				}
				checkDeadline(t, f.h, t0, t0, 300*time.Millisecond)
				f.checkTimedOut(t, m, []string{"block"}, "started\n", tc.stderr, "timed out after 300ms")
			})
		})
	}
}

// The limit each command gets, for commands that finish in time: their
// result is theirs.
func TestExecTimeoutLimits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		watcher, asked, want time.Duration
	}{
		{0, 0, sera.DefaultExecTimeout},
		{0, 2 * time.Minute, 2 * time.Minute},
		{0, time.Hour, sera.DefaultExecTimeout},
		{time.Hour, 0, time.Hour},
		{time.Hour, 90 * time.Second, 90 * time.Second},
		{time.Hour, 24 * time.Hour, time.Hour},
	} {
		f := newFixture(t)
		f.w.ExecTimeout = tc.watcher
		req := f.request("ping")
		req.ExecTimeoutMS = tc.asked.Milliseconds()
		t0 := time.Now()
		m := f.deliver(f.w, f.sealed(req))
		checkDeadline(t, f.h, t0, time.Now(), tc.want)
		r := f.checkAccepted(t, f.w, m, []string{"ping"}, 0)
		if string(r.Stdout) != "pong\n" || len(r.Stderr) != 0 {
			t.Errorf("watcher %s, asked %s: reply stdout %q stderr %q", tc.watcher, tc.asked, r.Stdout, r.Stderr)
		}
	}
	if sera.DefaultExecTimeout != 10*time.Minute {
		t.Errorf("DefaultExecTimeout %s, want 10m as documented", sera.DefaultExecTimeout)
	}
}

func TestExecTimeoutInTime(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.w.ExecTimeout = 300 * time.Millisecond
	req := f.request("block")
	req.ExecTimeoutMS = 5000
	go func() {
		<-f.h.started
		f.h.Release()
	}()
	m := f.deliver(f.w, f.sealed(req))
	r := f.checkAccepted(t, f.w, m, []string{"block"}, 3)
	if string(r.Stdout) != "started\n" || string(r.Stderr) != "released\n" {
		t.Errorf("reply stdout %q stderr %q, want the command's own", r.Stdout, r.Stderr)
	}
	// A panic is the command's own failure too.
	m = f.deliver(f.w, f.sealed(f.request("panic")))
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 1 || got.replies[0].Status != 70 || string(got.replies[0].Stderr) != "internal error in panic\n" {
		t.Errorf("replies %+v, want status 70 and only the internal error", got.replies)
	}
	if rec := f.a.Records()[1]; rec.Exit == nil || *rec.Exit != 70 || rec.Reason != "" {
		t.Errorf("audit %+v, want exit 70, no reason", rec)
	}
	assertDeleted(t, f.tr, f.w.Queue(), m)
}

// SIGTERM (the serve context's cancel) does not end a running command:
// only its limit does.
func TestExecTimeoutSurvivesStop(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		stop, done := start(t, f.w)
		req := f.request("block")
		req.ExecTimeoutMS = 400
		if err := f.tr.Send(context.Background(), f.w.Queue(), f.sealed(req)); err != nil {
			t.Fatal(err)
		}
		<-f.h.started
		t0 := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		// Everything that runs on the stop alone has run: Run must
		// still be waiting for the command.
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("Run returned while the command ran: the stop cancelled it")
		default:
		}
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
		if took := time.Since(t0); took != 400*time.Millisecond {
			t.Errorf("Run returned %s after the stop, want when the command's 400ms limit ended it", took)
		}
		got := drain(t, f.tr, f.client, 0)
		if len(got.replies) != 1 || got.replies[0].Status != sera.StatusTimedOut || !strings.HasSuffix(string(got.replies[0].Stderr), "ran longer than 400ms and was killed\n") {
			t.Errorf("replies %+v, want the command timed out after 400ms", got.replies)
		}
		if recs := f.a.Records(); len(recs) != 1 || recs[0].Exit == nil || *recs[0].Exit != sera.StatusTimedOut {
			t.Errorf("audit %+v, want exit 124", recs)
		}
	})
}

// pollRecorder is an OnPoll hook that keeps every call and its time.
type pollRecorder struct {
	mu    sync.Mutex
	calls []polled
}

type polled struct {
	at time.Time
	s  sera.WatcherStatus
}

func (r *pollRecorder) OnPoll(s sera.WatcherStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, polled{time.Now(), s})
}

// busy returns the calls made while command ran.
func (r *pollRecorder) busy(command string) []polled {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []polled
	for _, c := range r.calls {
		if c.s.Running == command {
			out = append(out, c)
		}
	}
	return out
}

func (r *pollRecorder) all() []polled {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// While a command runs, the watcher reports itself busy when it starts and
// then every PollWait (100 ms here, under 10 s), with the status it had
// when the command started; after it, idle again.
func TestExecFeedsWatchdog(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		var rec pollRecorder
		f.w.OnPoll = rec.OnPoll
		start(t, f.w)
		if err := f.tr.Send(context.Background(), f.w.Queue(), f.sealed(f.request("sleep"))); err != nil {
			t.Fatal(err)
		}
		<-f.h.started
		t0 := time.Now()
		advance(700 * time.Millisecond)
		busy := rec.busy("sleep")
		for i, c := range busy {
			if !c.s.RunningSince.Equal(t0) || !c.s.PollOK || c.s.Received != 1 {
				t.Errorf("busy status %d: %+v", i, c.s)
			}
		}
		if want := 8; len(busy) != want {
			t.Fatalf("OnPoll called %d times in the 700ms the command ran, want %d: at its start and every 100ms", len(busy), want)
		}
		for i, c := range busy {
			if at := c.at.Sub(t0); at != time.Duration(i)*100*time.Millisecond {
				t.Errorf("busy report %d came %s after the command started, want %dms", i, at, i*100)
			}
		}
		f.h.Release()
		f.a.wait(t, 1)
		// The watcher is back in its poll: it has reported idle.
		synctest.Wait()
		calls := rec.all()
		if c := calls[len(calls)-1]; c.s.Running != "" || c.s.Accepted != 1 {
			t.Errorf("last report after the command: %+v, want idle with 1 accepted", c.s)
		}
		if got := drain(t, f.tr, f.client, 0); len(got.replies) != 1 || got.replies[0].Status != 0 {
			t.Errorf("replies %+v", got.replies)
		}
	})
}

// A command that ignores its context and returns long after its limit:
// the watcher stops reporting itself alive once it is ExecGrace past the
// limit (so systemd's watchdog restarts it), and when it does return it is
// answered as timed out.
func TestExecStuckStopsWatchdog(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		var rec pollRecorder
		f.w.OnPoll = rec.OnPoll
		const limit, grace, every = 100 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond
		sera.SetExecGrace(f.w, grace)
		start(t, f.w)
		req := f.request("sleep")
		req.ExecTimeoutMS = limit.Milliseconds()
		if err := f.tr.Send(context.Background(), f.w.Queue(), f.sealed(req)); err != nil {
			t.Fatal(err)
		}
		<-f.h.started
		t0 := time.Now()
		advance(time.Second)
		busy := rec.busy("sleep")
		if len(busy) == 0 {
			t.Fatal("OnPoll not called while the command ran")
		}
		// Fed every 100ms until limit+grace, then never again.
		last := time.Duration(0)
		for i, c := range busy {
			at := c.at.Sub(t0)
			if at > limit+grace {
				t.Errorf("OnPoll called %s after the command started, %s past its limit", at, at-limit)
			}
			if i > 0 && at-last > every {
				t.Errorf("busy report %d came %s after the one before", i, at-last)
			}
			last = at
		}
		if last <= limit+grace-every {
			t.Errorf("last busy report %s after the command started, want it fed until %s", last, limit+grace)
		}
		f.h.Release()
		recs := f.a.wait(t, 1)
		if recs[0].Exit == nil || *recs[0].Exit != sera.StatusTimedOut || recs[0].Reason != "timed out after 100ms" {
			t.Errorf("audit %+v, want exit 124", recs[0])
		}
		got := drain(t, f.tr, f.client, 0)
		if len(got.replies) != 1 {
			t.Fatalf("%d replies", len(got.replies))
		}
		if r := got.replies[0]; r.Status != sera.StatusTimedOut || string(r.Stdout) != "slept\n" || string(r.Stderr) != "sera: the command ran longer than 100ms and was killed\n" {
			t.Errorf("reply %d stdout %q stderr %q", r.Status, r.Stdout, r.Stderr)
		}
	})
}

func TestExecTimeoutSetting(t *testing.T) {
	t.Parallel()
	c, err := settings.Load(settings.Env{Getenv: mapEnv(nil), UserHome: t.TempDir(), Hostname: "h"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if v := c.Lookup(settings.KeyExecTimeout); v.Source != settings.SourceDefault || c.Duration(settings.KeyExecTimeout) != sera.DefaultExecTimeout {
		t.Errorf("default %+v, want %s", v, sera.DefaultExecTimeout)
	}
	c, err = settings.Load(settings.Env{Getenv: mapEnv(map[string]string{settings.KeyExecTimeout: "90s"}), UserHome: t.TempDir(), Hostname: "h"}, false)
	if err != nil || c.Duration(settings.KeyExecTimeout) != 90*time.Second {
		t.Errorf("SERA_EXEC_TIMEOUT=90s: %v", err)
	}
	for _, ok := range []string{"1ms", "30s", "24h"} {
		if err := settings.Check(settings.KeyExecTimeout, ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"0", "0s", "-1m", "24h0m1s", "25h", "ten minutes"} {
		if err := settings.Check(settings.KeyExecTimeout, bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
		if _, err := settings.Load(settings.Env{Getenv: mapEnv(map[string]string{settings.KeyExecTimeout: bad}), UserHome: t.TempDir(), Hostname: "h"}, false); err == nil || !strings.Contains(err.Error(), settings.KeyExecTimeout) {
			t.Errorf("LoadConfig with %s: %v", bad, err)
		}
	}
	if d, ok := settings.Lookup(settings.KeyExecTimeout); !ok || d.Help == "" {
		t.Error("SERA_EXEC_TIMEOUT is not listed")
	}
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}
