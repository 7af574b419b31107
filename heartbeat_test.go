package sera_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
)

func hbIdentity(t *testing.T) *crypto.Identity {
	t.Helper()
	id, err := crypto.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestReadHeartbeats: a client takes only heartbeats sealed for it by the
// key its known_watchers has for the name the heartbeat carries; anything
// else on its heartbeat queue is dropped, and the queue is left empty.
func TestReadHeartbeats(t *testing.T) {
	ctx := context.Background()
	tr, err := spool.New(t.TempDir(), spool.WithPolling())
	if err != nil {
		t.Fatal(err)
	}
	client, web1, web2, stranger := hbIdentity(t), hbIdentity(t), hbIdentity(t), hbIdentity(t)
	known := &sera.KnownWatchers{Watchers: []*sera.KnownWatcher{{Name: "web1", Key: web1.Public()}, {Name: "web2", Key: web2.Public()}}}
	queue := transport.HeartbeatQueue("sera", client.Public().Fingerprint())
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	send := func(from *crypto.Identity, to *crypto.PublicKey, hb sera.Heartbeat, asReply bool) {
		t.Helper()
		body, _ := json.Marshal(hb)
		seal := crypto.SealHeartbeat
		if asReply {
			seal = crypto.SealReply
		}
		b, err := seal(rand.Reader, from, to, body)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Send(ctx, queue, b); err != nil {
			t.Fatal(err)
		}
	}
	hb := func(name string, at time.Time) sera.Heartbeat {
		return sera.Heartbeat{Watcher: name, Groups: []string{}, Version: "v1", Time: at, IntervalSeconds: 300}
	}
	send(web1, client.Public(), hb("web1", now), false)
	send(web1, client.Public(), hb("web1", now.Add(time.Minute)), false) // the newest counts
	send(web1, client.Public(), hb("web1", now.Add(-time.Hour)), false)
	send(web1, client.Public(), hb("web2", now.Add(time.Hour)), false)     // web1 cannot speak for web2
	send(stranger, client.Public(), hb("web2", now.Add(time.Hour)), false) // an unknown key
	send(web2, client.Public(), hb("web2", now), true)                     // a reply, not a heartbeat
	send(web2, stranger.Public(), hb("web2", now), false)                  // for another client
	bad := hb("web2", now)
	bad.IntervalSeconds = 0
	send(web2, client.Public(), bad, false) // fails ParseHeartbeat
	if err := tr.Send(ctx, queue, []byte("junk")); err != nil {
		t.Fatal(err)
	}
	got, err := sera.ReadHeartbeats(ctx, tr, client, "sera", known)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["web1"] == nil || !got["web1"].Time.Equal(now.Add(time.Minute)) || got["web1"].Fingerprint != web1.Public().Fingerprint() {
		t.Fatalf("heartbeats %+v, want web1's newest only", got)
	}
	if n, err := tr.Depth(ctx, queue); err != nil || n != 0 {
		t.Errorf("%d messages left on the heartbeat queue (%v)", n, err)
	}
}

// TestHeartbeatGrants: a watcher's heartbeat goes to every client it
// knows (each may ping) and says how many openings there are only to a
// client allowed 'allow'.
func TestHeartbeatGrants(t *testing.T) {
	dir := t.TempDir()
	tr, err := spool.New(dir, spool.WithPolling())
	if err != nil {
		t.Fatal(err)
	}
	web1 := hbIdentity(t)
	pinger, opener, nothing := hbIdentity(t), hbIdentity(t), hbIdentity(t)
	clients := []*sera.KnownClient{
		{Name: "pinger", Key: pinger.Public()},
		{Name: "opener", Key: opener.Public(), Allow: []string{"allow"}},
		{Name: "nothing", Key: nothing.Public(), Allow: []string{"user"}},
	}
	replay, err := sera.OpenReplayCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan struct{}, 1)
	openings := 3
	w := &sera.Watcher{
		Identity: web1, Name: "web1", Prefix: "sera", Transport: tr,
		Clients: &sera.ClientFile{Path: t.TempDir() + "/known_clients"}, Handler: nopHandler{}, Replay: replay,
		Audit: &sera.AuditLog{Path: t.TempDir() + "/audit.log"}, PollWait: 10 * time.Millisecond,
		HeartbeatEvery: time.Second,
		HeartbeatTo:    func() ([]*sera.KnownClient, error) { return clients, nil },
		HeartbeatInfo: func(context.Context) (string, *int) {
			select {
			case sent <- struct{}{}:
			default:
			}
			return "v9", &openings
		},
	}
	known := &sera.KnownWatchers{Watchers: []*sera.KnownWatcher{{Name: "web1", Key: web1.Public()}}}
	// The watcher stops, and stops writing, before the directories go.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-sent // the first round is being sent; wait until it is read
	read := func(id *crypto.Identity) *sera.FleetHost {
		for {
			got, err := sera.ReadHeartbeats(ctx, tr, id, "sera", known)
			if err != nil {
				t.Fatal(err)
			}
			if got["web1"] != nil {
				return got["web1"]
			}
			<-sent // not yet: the next round
		}
	}
	if h := read(pinger); h.Version != "v9" || h.Openings != nil || h.QueueDepth == nil {
		t.Errorf("pinger's heartbeat: %+v", h)
	}
	if h := read(opener); h.Openings == nil || *h.Openings != 3 {
		t.Errorf("opener's heartbeat: %+v", h)
	}
	if h := read(nothing); h.Openings != nil {
		t.Errorf("a client allowed only 'user' was told the openings: %+v", h)
	}
}

type nopHandler struct{}

func (nopHandler) Resolve(argv []string) (string, error)       { return "ping", nil }
func (nopHandler) Run(context.Context, *sera.Call) sera.Result { return sera.Result{} }
func (nopHandler) Redact(argv []string) []string               { return argv }

// BenchmarkReadHeartbeats: what 'sera status' spends reading one
// heartbeat from each of 1,000 watchers, on the spool.
func BenchmarkReadHeartbeats(b *testing.B) {
	ctx := context.Background()
	tr, err := spool.New(b.TempDir(), spool.WithPolling())
	if err != nil {
		b.Fatal(err)
	}
	client, _ := crypto.GenerateIdentity(rand.Reader)
	known := &sera.KnownWatchers{}
	type watcher struct {
		id   *crypto.Identity
		name string
	}
	var ws []watcher
	for i := range 1000 {
		id, _ := crypto.GenerateIdentity(rand.Reader)
		name := "h" + string(rune('a'+i/100)) + string(rune('a'+i/10%10)) + string(rune('a'+i%10))
		ws = append(ws, watcher{id, name})
		known.Watchers = append(known.Watchers, &sera.KnownWatcher{Name: name, Key: id.Public()})
	}
	queue := transport.HeartbeatQueue("sera", client.Public().Fingerprint())
	now := time.Now()
	for b.Loop() {
		b.StopTimer()
		for _, w := range ws {
			body, _ := json.Marshal(sera.Heartbeat{Watcher: w.name, Groups: []string{"web"}, Version: "v1", Time: now, IntervalSeconds: 300})
			sealed, _ := crypto.SealHeartbeat(rand.Reader, w.id, client.Public(), body)
			if err := tr.Send(ctx, queue, sealed); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		got, err := sera.ReadHeartbeats(ctx, tr, client, "sera", known)
		if err != nil || len(got) != 1000 {
			b.Fatalf("%d heartbeats, %v", len(got), err)
		}
	}
}
