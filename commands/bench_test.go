package commands_test

import (
	"context"
	"crypto/rand"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// benchPrefix names the benchmark's queues; fauxqs is private to the
// benchmark, so any prefix will do.
const benchPrefix = "bench"

// BenchmarkPingRoundTrip measures what an admin waits for in
// `sera ping --to web1`: the client seals and sends the request, a real
// watcher (real Handler, replay cache, audit log and known_clients file)
// receives, checks and runs it, and the client receives and opens the
// reply. Only the CLI's start-up and the key and config reads are left out.
//
// Besides ns/op it reports the median and 90th percentile of the round
// trips, and the median of each step as the transports see it (see
// phases), which shows where the time goes. Run it with -benchtime=50x or
// more: the percentiles need the samples.
func BenchmarkPingRoundTrip(b *testing.B) {
	b.Run("spool", func(b *testing.B) {
		dir := filepath.Join(b.TempDir(), "spool")
		benchPing(b, func(b *testing.B) transport.Transport {
			s, err := spool.New(dir)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}, nil)
	})
	b.Run("sqs", func(b *testing.B) {
		srv := sqstest.Start(b)
		benchPing(b, func(*testing.B) transport.Transport {
			return sqs.NewFromConfig(srv.Config)
		}, func(b *testing.B, queues ...string) {
			for _, q := range queues {
				if _, err := sqs.CreateQueue(context.Background(), srv.Config, q); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// benchPing runs the round trip over transports made by open, one for the
// watcher and one for the client as two processes would have. mkqueues,
// if set, creates the queues first.
func benchPing(b *testing.B, open func(*testing.B) transport.Transport, mkqueues func(*testing.B, ...string)) {
	clientID := newIdentity(b)
	watcherID := newIdentity(b)
	if mkqueues != nil {
		mkqueues(b, transport.WatcherQueue(benchPrefix, "web1"),
			transport.ClientQueue(benchPrefix, clientID.Public().Fingerprint()))
	}

	dir := b.TempDir()
	knownClients := filepath.Join(dir, "known_clients")
	kc := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: clientID.Public(), Name: "admin"}}}
	if err := os.WriteFile(knownClients, kc.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	replay, err := sera.OpenReplayCache(filepath.Join(dir, "replay"))
	if err != nil {
		b.Fatal(err)
	}

	var ph phases
	w := &sera.Watcher{
		Identity: watcherID, Name: "web1", Prefix: benchPrefix,
		Transport: &timed{Transport: open(b), sent: &ph.replied, received: &ph.picked, mu: &ph.mu},
		Clients:   &sera.ClientFile{Path: knownClients},
		Handler: &commands.Handler{Host: &commands.Host{
			Name: "web1", Version: "bench", Fingerprint: watcherID.Public().Fingerprint(),
			Started: time.Now(), KnownClients: knownClients, Sys: host.Real(dir),
		}},
		Replay: replay,
		Audit:  &sera.AuditLog{Path: filepath.Join(dir, "audit.log")},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	// Registered before anything can fail, so no watcher outlives the
	// benchmark, whatever happens.
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("watcher: %v", err)
		}
	})

	client := &sera.Client{
		Identity:  clientID,
		Transport: &timed{Transport: open(b), sent: &ph.sent, received: &ph.got, mu: &ph.mu},
		Prefix:    benchPrefix, TTL: 5 * time.Minute,
	}
	known := []*sera.KnownWatcher{{Name: "web1", Key: watcherID.Public()}}
	target := sera.Target{Names: []string{"web1"}}
	ping := func() {
		out, err := client.Do(ctx, known, target, []string{"ping"}, 30*time.Second, nil)
		if err != nil {
			b.Fatal(err)
		}
		if len(out.Replies) != 1 {
			b.Fatalf("%d replies, %d missing, send errors %v", len(out.Replies), len(out.Missing), out.SendErrors)
		}
		if r := out.Replies[0].Reply; r.Status != 0 {
			b.Fatalf("ping exited %d: %s", r.Status, r.Stderr)
		}
	}
	// The first round trip creates the spool's directories and looks up
	// the SQS queue URLs, which the transports then keep: not timed.
	ping()

	var total []time.Duration
	var steps [4][]time.Duration
	for b.Loop() {
		ph.reset()
		start := time.Now()
		ping()
		total = append(total, time.Since(start))
		for i, d := range ph.split(start) {
			steps[i] = append(steps[i], d)
		}
	}

	if len(total) < 50 {
		b.Logf("only %d round trips: run with -benchtime=50x or more for a meaningful p90", len(total))
	}
	b.ReportMetric(ms(percentile(total, 0.5)), "ms-median")
	b.ReportMetric(ms(percentile(total, 0.9)), "ms-p90")
	for i, unit := range []string{"ms-med-seal", "ms-med-to-watcher", "ms-med-in-watcher", "ms-med-to-client"} {
		b.ReportMetric(ms(percentile(steps[i], 0.5)), unit)
	}
}

// phases are the moments of one round trip as the transports see them:
// the client starts sending the request (sent), the watcher's Receive
// returns it (picked), the watcher starts sending the reply (replied),
// the client's Receive returns the reply (got). Sends are noted as they
// start, because a receiver can take a message before its Send returns
// (the spool renames the file into place, then syncs the directory):
// noted at the start, each moment is before the next in time. The watcher
// writes them from its goroutine, hence the mutex.
type phases struct {
	mu                         sync.Mutex
	sent, picked, replied, got time.Time
}

func (p *phases) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent, p.picked, p.replied, p.got = time.Time{}, time.Time{}, time.Time{}, time.Time{}
}

// split returns the steps of a round trip that began at start: sealing
// the request; sending it until the watcher's Receive has it; checking,
// running and sealing the reply in the watcher; sending the reply until
// the client's Receive has it. What is left (opening the reply) is small.
func (p *phases) split(start time.Time) [4]time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return [4]time.Duration{p.sent.Sub(start), p.picked.Sub(p.sent), p.replied.Sub(p.picked), p.got.Sub(p.replied)}
}

// timed is a transport that notes when a Send starts and when a Receive
// returns messages. It adds a clock read and a mutex to each.
type timed struct {
	transport.Transport
	mu             *sync.Mutex
	sent, received *time.Time
}

func (t *timed) Send(ctx context.Context, queue string, body []byte) error {
	t.mu.Lock()
	*t.sent = time.Now()
	t.mu.Unlock()
	return t.Transport.Send(ctx, queue, body)
}

func (t *timed) Receive(ctx context.Context, queue string, maxMsgs int, wait, visibility time.Duration) ([]*transport.Message, error) {
	msgs, err := t.Transport.Receive(ctx, queue, maxMsgs, wait, visibility)
	if len(msgs) > 0 {
		t.mu.Lock()
		*t.received = time.Now()
		t.mu.Unlock()
	}
	return msgs, err
}

func newIdentity(b *testing.B) *crypto.Identity {
	id, err := crypto.GenerateIdentity(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	return id
}

// percentile is the nearest-rank p-quantile of ds (0 < p ≤ 1): the
// smallest sample that at least p of the samples do not exceed.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
