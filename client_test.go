package sera_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/transport"
)

func (f *fixture) newClient(tr transport.Transport) *sera.Client {
	if tr == nil {
		tr = f.tr
	}
	return &sera.Client{Identity: f.client, Transport: tr, Prefix: testPrefix, TTL: time.Minute, Now: f.clock.Now}
}

func known(w *sera.Watcher) *sera.KnownWatcher {
	return &sera.KnownWatcher{Name: w.Name, Key: w.Identity.Public(), Groups: w.Groups}
}

func names(ws []*sera.KnownWatcher) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name)
	}
	slices.Sort(out)
	return out
}

func TestClientDo(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	var seen []sera.HostReply
	out, err := f.newClient(nil).Do(context.Background(), []*sera.KnownWatcher{known(f.w)},
		sera.Target{Names: []string{"web1"}}, []string{"echo", "hello"}, 10*time.Second,
		func(r sera.HostReply) { seen = append(seen, r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Replies) != 1 || len(out.Missing) != 0 || len(out.SendErrors) != 0 || len(seen) != 1 {
		t.Fatalf("outcome %+v", out)
	}
	r := out.Replies[0]
	if r.Watcher.Name != "web1" || r.Reply.ID != out.RequestID || r.Reply.Status != 0 || string(r.Reply.Stdout) != "hello\n" {
		t.Errorf("reply %+v from %s", r.Reply, r.Watcher.Name)
	}
	if calls := f.h.Calls(); len(calls) != 1 || !slices.Equal(calls[0], []string{"echo", "hello"}) {
		t.Errorf("ran %q", calls)
	}
	// The watcher audits after it replies: wait for the record.
	if recs := f.a.wait(t, 1); len(recs) != 1 || recs[0].RequestID != out.RequestID {
		t.Errorf("audit %+v", recs)
	}
	// Every reply was taken off the client's queue.
	assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
}

func TestClientRefusal(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	out, err := f.newClient(nil).Do(context.Background(), []*sera.KnownWatcher{known(f.w)},
		sera.Target{Names: []string{"web1"}}, []string{"rm", "-rf", "/"}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Replies) != 1 || out.Replies[0].Reply.Status != sera.StatusRejected || out.Replies[0].Reply.Rejected == "" {
		t.Fatalf("outcome %+v", out)
	}
}

func TestClientSeveralWatchers(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		web2 := f.newWatcher("web2", "web")
		web3 := f.newWatcher("web3", "web") // never runs
		start(t, f.w)
		start(t, web2)
		ws := []*sera.KnownWatcher{known(f.w), known(web2), known(web3)}
		t0 := time.Now()
		out, err := f.newClient(nil).Do(context.Background(), ws, sera.Target{Groups: []string{"web"}}, []string{"ping"}, time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		// In fake time the live watchers answer at once: Do took the silent
		// one's timeout, and little more.
		if d := time.Since(t0); d < time.Second || d > 1500*time.Millisecond {
			t.Errorf("Do returned after %s with a 1 s timeout and a silent watcher", d)
		}
		var got []string
		for _, r := range out.Replies {
			got = append(got, r.Watcher.Name)
			if r.Reply.Status != 0 || r.Reply.Watcher != r.Watcher.Name {
				t.Errorf("reply %+v from %s", r.Reply, r.Watcher.Name)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, []string{"web1", "web2"}) || !slices.Equal(names(out.Missing), []string{"web3"}) {
			t.Errorf("replies from %v, missing %v; want web1 and web2, missing web3", got, names(out.Missing))
		}
		// The silent watcher's request waits on its queue.
		msgs, err := f.tr.Receive(context.Background(), web3.Queue(), 10, 0, time.Minute)
		if err != nil || len(msgs) != 1 {
			t.Errorf("web3's queue holds %d messages (%v)", len(msgs), err)
		}
	})
}

func TestClientIgnoresUnknownWatcherKey(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		// web9 is known to the client by its key, but the reply comes from an
		// impostor that read the request (here: the test, with web9's key)
		// and answers with its own key, claiming web9's name.
		web9 := newIdentity(t)
		impostor := newIdentity(t)
		kw := &sera.KnownWatcher{Name: "web9", Key: web9.Public()}
		ctx := context.Background()
		answered := make(chan error, 1)
		go func() {
			answered <- func() error {
				msgs, err := f.tr.Receive(ctx, transport.WatcherQueue(testPrefix, "web9"), 1, 5*time.Second, time.Minute)
				if err != nil || len(msgs) != 1 {
					return fmt.Errorf("no request: %v", err)
				}
				env, err := crypto.ParseEnvelope(msgs[0].Body)
				if err != nil {
					return err
				}
				payload, err := env.Open(web9)
				if err != nil {
					return err
				}
				req, err := sera.ParseRequest(payload)
				if err != nil {
					return err
				}
				body, _ := json.Marshal(&sera.Reply{ID: req.ID, Watcher: "web9", Status: 0, Stdout: []byte("trust me\n"), Started: time.Now(), Ended: time.Now()})
				sealed, err := crypto.SealReply(rand.Reader, impostor, f.client.Public(), sera.EncodePart(req.ID, 0, 1, body))
				if err != nil {
					return err
				}
				return f.tr.Send(ctx, req.ReplyTo, sealed)
			}()
		}()
		out, err := f.newClient(nil).Do(ctx, []*sera.KnownWatcher{kw}, sera.Target{Names: []string{"web9"}}, []string{"ping"}, 700*time.Millisecond, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-answered; err != nil {
			t.Fatal(err)
		}
		if len(out.Replies) != 0 || !slices.Equal(names(out.Missing), []string{"web9"}) {
			t.Errorf("impostor's reply accepted: %+v", out)
		}
		// The impostor's reply was seen and dropped.
		assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
	})
}

func TestClientReleasesForeignReplies(t *testing.T) {
	t.Parallel()
	// In fake time: the foreign reply comes back after its pause however
	// slow the machine.
	inFakeTime(t, func(t *testing.T, f *fixture) {
		start(t, f.w)
		ctx := context.Background()
		// A reply for a request another process of this identity waits for.
		otherID, err := sera.NewRequestID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(&sera.Reply{ID: otherID, Watcher: "web1", Started: time.Now(), Ended: time.Now()})
		foreign, err := crypto.SealReply(rand.Reader, f.wid, f.client.Public(), sera.EncodePart(otherID, 0, 1, body))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.tr.Send(ctx, f.clientQueue(f.client), foreign); err != nil {
			t.Fatal(err)
		}
		out, err := f.newClient(nil).Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 10*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Replies) != 1 || out.Replies[0].Reply.ID != out.RequestID {
			t.Fatalf("outcome %+v", out)
		}
		// The other process still gets its reply.
		msgs, err := f.tr.Receive(ctx, f.clientQueue(f.client), 10, 3*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 || !bytes.Equal(msgs[0].Body, foreign) {
			t.Fatalf("foreign reply not released: %d messages, %v", len(msgs), err)
		}
	})
}

func TestClientDropsStaleForeignReplies(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	ctx := context.Background()
	otherID, _ := sera.NewRequestID(rand.Reader)
	old := f.clock.Now().Add(-2 * time.Hour)
	body, _ := json.Marshal(&sera.Reply{ID: otherID, Watcher: "web1", Started: old, Ended: old})
	stale, err := crypto.SealReply(rand.Reader, f.wid, f.client.Public(), sera.EncodePart(otherID, 0, 1, body))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.tr.Send(ctx, f.clientQueue(f.client), stale); err != nil {
		t.Fatal(err)
	}
	if _, err := f.newClient(nil).Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 10*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	// An unclaimed reply that ended an hour ago is nobody's any more.
	assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
}

func TestClientBigReply(t *testing.T) {
	t.Parallel()
	const maxSize = 64 << 10
	f := newFixture(t, withMaxSize(maxSize))
	big := make([]byte, 3<<20+12345)
	rng := mrand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(big)
	f.h.Big = big
	wtr := &countingTransport{Transport: f.tr}
	f.w.Transport = wtr
	start(t, f.w)
	out, err := f.newClient(nil).Do(context.Background(), []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"big"}, 30*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Replies) != 1 {
		t.Fatalf("outcome %+v", out)
	}
	if got := out.Replies[0].Reply.Stdout; !bytes.Equal(got, big) {
		t.Fatalf("stdout of %d bytes reassembled to %d bytes, not byte-identical", len(big), len(got))
	}
	parts := wtr.Sent(f.clientQueue(f.client))
	if len(parts) < 4*len(big)/3/maxSize {
		t.Errorf("reply sent in %d messages", len(parts))
	}
	for i, p := range parts {
		if len(p) > maxSize {
			t.Errorf("part %d is %d bytes, more than %d", i, len(p), maxSize)
		}
	}
	assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
}

// Sent to each queue, a request carries its watcher's entry only, however
// many watchers it is for: a small message each, and every one reached.
func TestClientOneEntryPerQueue(t *testing.T) {
	t.Parallel()
	// Too small for an envelope naming all nine.
	const maxSize = 1200
	f := newFixture(t, withMaxSize(maxSize))
	ws := []*sera.Watcher{f.w}
	for i := 2; i <= 9; i++ {
		ws = append(ws, f.newWatcher(fmt.Sprintf("web%d", i), "web"))
	}
	var kws []*sera.KnownWatcher
	for _, w := range ws {
		start(t, w)
		kws = append(kws, known(w))
	}
	ctr := &countingTransport{Transport: f.tr}
	out, err := f.newClient(ctr).Do(context.Background(), kws, sera.Target{All: true}, []string{"ping"}, 20*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Replies) != len(ws) || len(out.Missing) != 0 {
		t.Fatalf("%d replies, missing %v", len(out.Replies), names(out.Missing))
	}
	for _, w := range ws {
		sent := ctr.Sent(w.Queue())
		if len(sent) != 1 {
			t.Fatalf("%s got %d messages", w.Name, len(sent))
		}
		env, err := crypto.ParseEnvelope(sent[0])
		if err != nil {
			t.Fatal(err)
		}
		if env.Recipients() != 1 || len(sent[0]) > maxSize {
			t.Errorf("%s's message names %d recipients in %d bytes", w.Name, env.Recipients(), len(sent[0]))
		}
		if _, err := env.Open(w.Identity); err != nil {
			t.Errorf("%s cannot open its message: %v", w.Name, err)
		}
		if fh := fakeOf(w.Handler); fh.Count() != 1 {
			t.Errorf("%s ran %d times", w.Name, fh.Count())
		}
	}
}

func TestClientTooLarge(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withMaxSize(300))
	_, err := f.newClient(nil).Do(context.Background(), []*sera.KnownWatcher{known(f.w)}, sera.Target{All: true}, []string{"ping"}, time.Second, nil)
	if err == nil {
		t.Error("a request larger than the transport takes was not refused")
	}
	if _, err := f.newClient(nil).Do(context.Background(), nil, sera.Target{All: true}, []string{"ping"}, time.Second, nil); err == nil {
		t.Error("Do with no watchers did not fail")
	}
}

// Anyone who can write to a client's reply queue must not be able to
// block it: parts sealed by keys outside known_watchers are deleted on
// sight, and a part for an id nobody waits for stops circulating after a
// bounded number of receives, counted by the queue.
func TestReplyQueueCannotBeJammed(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		start(t, f.w)
		ctx := context.Background()
		q := f.clientQueue(f.client)
		stranger := newIdentity(t)
		for range 500 {
			id, _ := sera.NewRequestID(rand.Reader)
			body, _ := json.Marshal(&sera.Reply{ID: id, Watcher: "web1", Started: time.Now(), Ended: time.Now()})
			junk, err := crypto.SealReply(rand.Reader, stranger, f.client.Public(), sera.EncodePart(id, 0, 1, body))
			if err != nil {
				t.Fatal(err)
			}
			if err := f.tr.Send(ctx, q, junk); err != nil {
				t.Fatal(err)
			}
		}
		// A known watcher's part for an id no process waits for, already
		// received as often as the bound allows.
		otherID, _ := sera.NewRequestID(rand.Reader)
		body, _ := json.Marshal(&sera.Reply{ID: otherID, Watcher: "web1", Started: time.Now(), Ended: time.Now()})
		orphan, _ := crypto.SealReply(rand.Reader, f.wid, f.client.Public(), sera.EncodePart(otherID, 0, 1, body))
		if err := f.tr.Send(ctx, q, orphan); err != nil {
			t.Fatal(err)
		}
		c := f.newClient(nil)
		c.Watchers = &sera.KnownWatchers{Watchers: []*sera.KnownWatcher{known(f.w)}}
		for i := range 3 {
			out, err := c.Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 10*time.Second, nil)
			if err != nil || len(out.Replies) != 1 {
				t.Fatalf("ping %d behind 500 junk parts: %+v, %v", i, out, err)
			}
		}
		// Only the known watcher's orphan may be left, released for a
		// process that might wait for it; the junk is gone.
		msgs, err := f.tr.Receive(ctx, q, 10, 3*time.Second, time.Minute) // after its pause
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 1 || !bytes.Equal(msgs[0].Body, orphan) {
			t.Fatalf("%d messages left on the reply queue, want only the orphan", len(msgs))
		}
		// Received past the bound, the orphan goes too.
		for msgs[0].Receives <= 200 {
			if err := f.tr.ChangeVisibility(ctx, q, msgs[0], 0); err != nil {
				t.Fatal(err)
			}
			if msgs, err = f.tr.Receive(ctx, q, 1, time.Second, time.Minute); err != nil || len(msgs) != 1 {
				t.Fatalf("receive: %d, %v", len(msgs), err)
			}
		}
		if err := f.tr.ChangeVisibility(ctx, q, msgs[0], 0); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 10*time.Second, nil); err != nil {
			t.Fatal(err)
		}
		assertQueueEmpty(t, f.tr, q)
	})
}
