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

// foreignPart seals a one-part reply from `from` to `to` for a random
// request id; ended is what its body says about when the command ended.
func foreignPart(t *testing.T, from *crypto.Identity, to *crypto.PublicKey, ended time.Time) []byte {
	t.Helper()
	id, err := sera.NewRequestID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(&sera.Reply{ID: id, Watcher: "web1", Started: ended, Ended: ended})
	b, err := crypto.SealReply(rand.Reader, from, to, sera.EncodePart(id, 0, 1, body))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// queued receives every message of queue q, hides each for an hour, and
// returns them; release hands them back.
func queued(t *testing.T, tr transport.Transport, q string) []*transport.Message {
	t.Helper()
	var all []*transport.Message
	for {
		msgs, err := tr.Receive(context.Background(), q, 10, 0, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			return all
		}
		all = append(all, msgs...)
	}
}

func release(t *testing.T, tr transport.Transport, q string, msgs []*transport.Message) {
	t.Helper()
	for _, m := range msgs {
		if err := tr.ChangeVisibility(context.Background(), q, m, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// Whether a part for another request is still someone's is judged by the
// queue's record (when it was sent, how often received), never by its body:
// a body that says it ended hours ago is handed back, a part queued longer
// than the bound ago is deleted whatever its body says.
func TestClientDropsStaleForeignReplies(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		q := f.clientQueue(f.client)
		stale := foreignPart(t, f.wid, f.client.Public(), time.Now())
		if err := f.tr.Send(ctx, q, stale); err != nil {
			t.Fatal(err)
		}
		advance(sera.ForeignMaxAge + time.Second)
		oldBody := foreignPart(t, f.wid, f.client.Public(), time.Now().Add(-2*time.Hour))
		if err := f.tr.Send(ctx, q, oldBody); err != nil {
			t.Fatal(err)
		}
		start(t, f.w)
		if _, err := f.newClient(nil).Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 10*time.Second, nil); err != nil {
			t.Fatal(err)
		}
		advance(time.Minute)
		left := queued(t, f.tr, q)
		if len(left) != 1 || !bytes.Equal(left[0].Body, oldBody) {
			t.Fatalf("reply queue holds %d messages, want only the recent part whose body says it is old", len(left))
		}
	})
}

// A part for another request is handed back until the queue has delivered
// it ForeignMaxReceives times, to whichever processes; then it is deleted.
func TestClientBoundsForeignReceives(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		q := f.clientQueue(f.client)
		worn := foreignPart(t, f.wid, f.client.Public(), time.Now())
		if err := f.tr.Send(ctx, q, worn); err != nil {
			t.Fatal(err)
		}
		// Other processes received it and handed it back.
		for range sera.ForeignMaxReceives - 1 {
			release(t, f.tr, q, queued(t, f.tr, q))
		}
		fresh := foreignPart(t, f.wid, f.client.Public(), time.Now())
		if err := f.tr.Send(ctx, q, fresh); err != nil {
			t.Fatal(err)
		}
		start(t, f.w)
		if _, err := f.newClient(nil).Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 10*time.Second, nil); err != nil {
			t.Fatal(err)
		}
		advance(time.Minute)
		left := queued(t, f.tr, q)
		if len(left) != 1 || !bytes.Equal(left[0].Body, fresh) {
			t.Fatalf("reply queue holds %d messages, want only the part received less often", len(left))
		}
	})
}

// Anyone who can write to a client's reply queue can fill it. Thousands of
// parts sealed by keys outside known_watchers, parts that do not open, and
// parts of a known watcher for requests nobody waits for: a ping still gets
// its reply; what no process can want is deleted at once, a known watcher's
// parts once the queue's record says nobody waits for them; a known
// watcher's part (web2, not in the job) for another process is handed back.
func TestClientJammedReplyQueue(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		const junk = 250 // each kind; 1,000 took 12 s under -race and proved no more
		ctx := context.Background()
		q := f.clientQueue(f.client)
		web2 := f.newWatcher("web2")
		stranger, other := newIdentity(t), newIdentity(t)
		send := func(b []byte) {
			if err := f.tr.Send(ctx, q, b); err != nil {
				t.Fatal(err)
			}
		}
		for range junk {
			send(foreignPart(t, stranger, f.client.Public(), time.Now()))
			send(foreignPart(t, f.wid, f.client.Public(), time.Now()))
		}
		for range 10 {
			send(foreignPart(t, f.wid, other.Public(), time.Now())) // sealed for another client
			send([]byte("not a reply"))
		}
		sibling := foreignPart(t, web2.Identity, f.client.Public(), time.Now())
		send(sibling)
		// The spool hands out the oldest first, by send time; in fake time
		// the junk and the reply would share one instant and their order
		// would be the ids' random part. A second later, the reply comes
		// after every part already queued, as it does on a real clock.
		advance(time.Second)
		start(t, f.w)
		ping := func() {
			t.Helper()
			c := f.newClient(nil)
			c.Known = &sera.KnownWatchers{Watchers: []*sera.KnownWatcher{known(f.w), known(web2)}}
			out, err := c.Do(ctx, []*sera.KnownWatcher{known(f.w)}, sera.Target{Names: []string{"web1"}}, []string{"ping"}, 30*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Replies) != 1 || out.Replies[0].Reply.Status != 0 || string(out.Replies[0].Reply.Stdout) != "pong\n" {
				t.Fatalf("ping through a jammed reply queue: %d replies, missing %v", len(out.Replies), names(out.Missing))
			}
		}
		ping()
		advance(time.Minute)
		left := queued(t, f.tr, q)
		count := map[string]int{}
		for _, m := range left {
			sr, err := crypto.ParseReply(m.Body)
			if err != nil {
				t.Fatalf("a message that is no reply is still queued: %.40q", m.Body)
			}
			count[sr.From.Fingerprint()]++
		}
		if n := count[stranger.Public().Fingerprint()]; n != 0 {
			t.Errorf("%d parts sealed by an unknown key are still queued", n)
		}
		if n := count[f.wid.Public().Fingerprint()]; n != junk {
			// Parts sealed for another client would be counted here too.
			t.Errorf("%d parts of web1 are queued, want the %d for other requests", n, junk)
		}
		if n := count[web2.Identity.Public().Fingerprint()]; n != 1 {
			t.Errorf("web2's part for another process: %d queued, want it handed back", n)
		}
		release(t, f.tr, q, left)
		// Once the queue says nobody can be waiting for them, the next
		// ping deletes them.
		advance(sera.ForeignMaxAge)
		ping()
		advance(time.Minute)
		if left := queued(t, f.tr, q); len(left) != 0 {
			t.Errorf("reply queue holds %d messages after the bound, want none", len(left))
		}
	})
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
