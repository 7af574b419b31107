package sera_test

// The fixture shared by the watcher and client tests: real parts (a spool
// transport in a temporary directory, real identities, a real known_clients
// file behind a ClientFile, a real ReplayCache), with a fake Handler, an
// in-memory Auditor and an injectable clock.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
)

const testPrefix = "sera"

// ---- clock ----------------------------------------------------------------

// fakeClock follows the real clock shifted by an offset, or stands still at
// a fixed time once Set.
type fakeClock struct {
	mu     sync.Mutex
	offset time.Duration
	fixed  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fixed.IsZero() {
		return c.fixed
	}
	return time.Now().Add(c.offset)
}

// Set stops the clock at t.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fixed = t
}

// ---- audit ----------------------------------------------------------------

// memAudit is an Auditor that keeps every record in memory.
type memAudit struct {
	mu   sync.Mutex
	recs []sera.AuditRecord
	// running are the records written before a command runs, apart so
	// that recs holds one record a request.
	running []sera.AuditRecord
	// fail, if set, is returned by Audit, which then records nothing.
	fail error
	// added is closed, and replaced, when a record is added.
	added chan struct{}
}

func (a *memAudit) Audit(r sera.AuditRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return a.fail
	}
	if r.Decision == sera.DecisionRunning {
		a.running = append(a.running, r)
		return nil
	}
	a.recs = append(a.recs, r)
	if a.added != nil {
		close(a.added)
		a.added = nil
	}
	return nil
}

func (a *memAudit) Records() []sera.AuditRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.recs)
}

// wait returns the records once there are at least n. The deadline only
// guards against a watcher that never audits; under testing/synctest it
// is fake time and costs nothing.
func (a *memAudit) wait(t *testing.T, n int) []sera.AuditRecord {
	t.Helper()
	guard := time.NewTimer(time.Minute)
	defer guard.Stop()
	for {
		a.mu.Lock()
		if len(a.recs) >= n {
			recs := slices.Clone(a.recs)
			a.mu.Unlock()
			return recs
		}
		if a.added == nil {
			a.added = make(chan struct{})
		}
		added := a.added
		a.mu.Unlock()
		select {
		case <-added:
		case <-guard.C:
			recs := a.Records()
			t.Fatalf("timed out waiting for %d audit records; have %d: %+v", n, len(recs), recs)
		}
	}
}

// ---- handler --------------------------------------------------------------

var userNameRE = regexp.MustCompile(`^[a-z][-a-z0-9_]*$`)

// fakeHandler is a stateful stand-in for the host commands. It offers
// "ping", "echo ARGS…", "user add NAME [--password-hash=HASH]", and for the
// robustness tests "sleep" (blocks until Release), "panic" and "big"
// (prints Big), and for the execution timeout "block" (prints, then runs
// until its context ends or Release). Run records every call and the
// deadline of its context.
type fakeHandler struct {
	mu        sync.Mutex
	calls     [][]string
	deadlines []time.Time // zero when the context had none
	started   chan string
	release   chan struct{}
	once      sync.Once
	Big       []byte
}

func newFakeHandler() *fakeHandler {
	return &fakeHandler{started: make(chan string, 64), release: make(chan struct{})}
}

// Deadlines returns the deadline of each call's context, in order.
func (h *fakeHandler) Deadlines() []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.deadlines)
}

// Release lets every "sleep" and "block" finish, now and later.
func (h *fakeHandler) Release() { h.once.Do(func() { close(h.release) }) }

func (h *fakeHandler) Calls() [][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

func (h *fakeHandler) Count() int { return len(h.Calls()) }

func (h *fakeHandler) Resolve(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty command line")
	}
	switch argv[0] {
	case "ping", "sleep", "panic", "big", "block":
		if len(argv) != 1 {
			return argv[0], fmt.Errorf("%s takes no arguments", argv[0])
		}
		return argv[0], nil
	case "echo":
		return "echo", nil
	case "needs-visudo":
		// A command line the host cannot run: its program is missing.
		return "needs-visudo", &sera.HostFailure{Err: errors.New(`exec: "visudo": executable file not found in $PATH`)}
	case "user":
		if len(argv) < 2 || argv[1] != "add" {
			return "", fmt.Errorf("%q is not a command this watcher runs", strings.Join(argv[:min(2, len(argv))], " "))
		}
		if len(argv) < 3 {
			return "user add", errors.New("user add needs a NAME")
		}
		if !userNameRE.MatchString(argv[2]) {
			return "user add", fmt.Errorf("invalid user name %q", argv[2])
		}
		for _, a := range argv[3:] {
			v, ok := strings.CutPrefix(a, "--password-hash=")
			if !ok {
				return "user add", fmt.Errorf("unknown flag %q", a)
			}
			if !strings.HasPrefix(v, "$6$") {
				// Quotes the secret on purpose: the watcher must
				// keep it out of the audit log.
				return "user add", fmt.Errorf("invalid --password-hash %q: not a SHA-512 crypt hash", v)
			}
		}
		return "user add", nil
	}
	return "", fmt.Errorf("unknown command %q", argv[0])
}

func (h *fakeHandler) Redact(argv []string) []string {
	out := slices.Clone(argv)
	for i, a := range out {
		for _, flag := range []string{"--password-hash=", "--token="} {
			if strings.HasPrefix(a, flag) {
				out[i] = flag + "REDACTED"
			}
		}
	}
	return out
}

func (h *fakeHandler) Run(ctx context.Context, call *sera.Call) sera.Result {
	h.mu.Lock()
	h.calls = append(h.calls, slices.Clone(call.Argv))
	deadline, _ := ctx.Deadline()
	h.deadlines = append(h.deadlines, deadline)
	h.mu.Unlock()
	select {
	case h.started <- call.Command:
	default:
	}
	switch call.Command {
	case "ping":
		return sera.Result{Stdout: []byte("pong\n")}
	case "echo":
		return sera.Result{Stdout: []byte(strings.Join(call.Argv[1:], " ") + "\n")}
	case "sleep":
		<-h.release
		return sera.Result{Stdout: []byte("slept\n")}
	case "block":
		// Like a program killed when its context ends: what it
		// printed before stays.
		select {
		case <-ctx.Done():
			return sera.Result{Status: 137, Stdout: []byte("started\n"), Stderr: []byte("partial")}
		case <-h.release:
			return sera.Result{Status: 3, Stdout: []byte("started\n"), Stderr: []byte("released\n")}
		}
	case "panic":
		panic("boom")
	case "big":
		return sera.Result{Stdout: h.Big}
	case "user add":
		return sera.Result{Stdout: []byte("added " + call.Argv[2] + "\n")}
	}
	return sera.Result{Status: 1, Stderr: []byte("not implemented\n")}
}

// ---- transport wrapper ----------------------------------------------------

// countingTransport wraps a transport, counts calls and can fail Receive.
type countingTransport struct {
	transport.Transport
	failReceives atomic.Int64 // Receive fails while this is > 0
	receives     atomic.Int64
	changeVis    atomic.Int64
	mu           sync.Mutex
	receiveTimes []time.Time
	sent         map[string][][]byte // queue → bodies
}

var errFlaky = errors.New("transport is down (test)")

func (c *countingTransport) Receive(ctx context.Context, queue string, max int, wait, vis time.Duration) ([]*transport.Message, error) {
	c.receives.Add(1)
	c.mu.Lock()
	c.receiveTimes = append(c.receiveTimes, time.Now())
	c.mu.Unlock()
	if c.failReceives.Add(-1) >= 0 {
		return nil, errFlaky
	}
	return c.Transport.Receive(ctx, queue, max, wait, vis)
}

func (c *countingTransport) ChangeVisibility(ctx context.Context, queue string, m *transport.Message, d time.Duration) error {
	c.changeVis.Add(1)
	return c.Transport.ChangeVisibility(ctx, queue, m, d)
}

func (c *countingTransport) Send(ctx context.Context, queue string, body []byte) error {
	c.mu.Lock()
	if c.sent == nil {
		c.sent = map[string][][]byte{}
	}
	c.sent[queue] = append(c.sent[queue], slices.Clone(body))
	c.mu.Unlock()
	return c.Transport.Send(ctx, queue, body)
}

func (c *countingTransport) Sent(queue string) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sent[queue])
}

func (c *countingTransport) ReceiveTimes() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.receiveTimes)
}

// ---- fixture --------------------------------------------------------------

type fixture struct {
	t      *testing.T
	dir    string
	tr     *spool.Spool
	clock  *fakeClock
	kcPath string
	// clients is the ClientFile every watcher of the fixture consults.
	clients *sera.ClientFile
	known   *sera.KnownClients

	// client is "alice", allowed every command.
	client *crypto.Identity

	// The first watcher, "web1" in groups web and eu, and its parts.
	w   *sera.Watcher
	wid *crypto.Identity
	h   *fakeHandler
	a   *memAudit
}

type fixtureOption func(*fixtureConfig)

type fixtureConfig struct {
	maxSize int
	poll    bool
}

// withMaxSize sets the spool's largest message.
func withMaxSize(n int) fixtureOption { return func(c *fixtureConfig) { c.maxSize = n } }

// inFakeTime runs test in a testing/synctest bubble, on a fixture made in
// it: every timer of the watchers, clients and spool then runs on the
// bubble's fake clock, which moves only when every goroutine of the test
// waits. A test of how long something takes, or of what happens at a
// limit, then gets the same answer however loaded the machine is, in no
// real time. The spool polls instead of waiting on inotify: a goroutine
// blocked on a file descriptor would keep the fake clock from moving.
func inFakeTime(t *testing.T, test func(t *testing.T, f *fixture), opts ...fixtureOption) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		test(t, newFixture(t, append(opts, func(c *fixtureConfig) { c.poll = true })...))
	})
}

func newIdentity(t testing.TB) *crypto.Identity {
	t.Helper()
	id, err := crypto.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newFixture(t *testing.T, opts ...fixtureOption) *fixture {
	t.Helper()
	cfg := fixtureConfig{maxSize: transport.DefaultMaxMessageSize}
	for _, o := range opts {
		o(&cfg)
	}
	dir := t.TempDir()
	spoolOpts := []spool.Option{spool.WithMaxMessageSize(cfg.maxSize)}
	if cfg.poll {
		spoolOpts = append(spoolOpts, spool.WithPolling())
	}
	tr, err := spool.New(filepath.Join(dir, "spool"), spoolOpts...)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{
		t: t, dir: dir, tr: tr, clock: &fakeClock{},
		kcPath: filepath.Join(dir, "known_clients"),
		known:  &sera.KnownClients{},
		client: newIdentity(t),
	}
	f.clients = &sera.ClientFile{Path: f.kcPath}
	f.addClient(f.client, "alice", "*")
	f.w = f.newWatcher("web1", "web", "eu")
	f.wid = f.w.Identity
	f.h = f.w.Handler.(*fakeHandler)
	f.a = f.w.Audit.(*memAudit)
	return f
}

// addClient adds id to known_clients as name with allow (FormatAllow form).
func (f *fixture) addClient(id *crypto.Identity, name, allow string) {
	f.t.Helper()
	f.known.Clients = append(f.known.Clients, &sera.KnownClient{Key: id.Public(), Name: name, Allow: mustParseAllow(f.t, allow)})
	f.writeKnownClients()
}

// removeClient removes name from known_clients.
func (f *fixture) removeClient(name string) {
	f.t.Helper()
	f.known.Clients = slices.DeleteFunc(f.known.Clients, func(c *sera.KnownClient) bool { return c.Name == name })
	f.writeKnownClients()
}

func (f *fixture) writeKnownClients() {
	f.t.Helper()
	if err := safefile.WriteAtomic(f.kcPath, f.known.Bytes(), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// newWatcher makes a watcher on the fixture's spool and known_clients,
// with its own identity, replay cache, fake handler and audit log.
func (f *fixture) newWatcher(name string, groups ...string) *sera.Watcher {
	f.t.Helper()
	rc, err := sera.OpenReplayCache(filepath.Join(f.dir, "replay-"+name))
	if err != nil {
		f.t.Fatal(err)
	}
	h := newFakeHandler()
	f.t.Cleanup(h.Release)
	return &sera.Watcher{
		Identity: newIdentity(f.t), Name: name, Groups: groups, Prefix: testPrefix,
		Transport: f.tr, Clients: f.clients, Handler: h, Replay: rc, Audit: &memAudit{},
		Now: f.clock.Now, PollWait: 100 * time.Millisecond, Visibility: 30 * time.Second,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
}

// start runs w in a goroutine; the returned stop cancels it and returns
// what Run returned. The test's cleanup stops it too.
func start(t *testing.T, w *sera.Watcher) (stop func() error, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-ch:
			case <-time.After(time.Minute):
				err = errors.New("Run did not return within a minute of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() {
		fakeOf(w.Handler).Release()
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop, ch
}

func (f *fixture) clientQueue(id *crypto.Identity) string {
	return transport.ClientQueue(testPrefix, id.Public().Fingerprint())
}

// request is a valid request from f.client to f.w for argv.
func (f *fixture) request(argv ...string) *sera.Request {
	return f.requestFrom(f.client, argv...)
}

func (f *fixture) requestFrom(from *crypto.Identity, argv ...string) *sera.Request {
	f.t.Helper()
	id, err := sera.NewRequestID(rand.Reader)
	if err != nil {
		f.t.Fatal(err)
	}
	now := f.clock.Now()
	return &sera.Request{
		ID: id, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute),
		Target: sera.Target{Names: []string{f.w.Name}}, Argv: argv,
		ReplyTo: f.clientQueue(from),
	}
}

// seal marshals req and seals it from from to the keys to.
func seal(t *testing.T, from *crypto.Identity, req *sera.Request, to ...*crypto.PublicKey) []byte {
	t.Helper()
	payload, err := req.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return sealPayload(t, from, payload, to...)
}

func sealPayload(t *testing.T, from *crypto.Identity, payload []byte, to ...*crypto.PublicKey) []byte {
	t.Helper()
	env, err := crypto.SealRequest(rand.Reader, from, to, payload)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// sealed is req from f.client sealed to f.w.
func (f *fixture) sealed(req *sera.Request) []byte {
	return seal(f.t, f.client, req, f.wid.Public())
}

// deliver puts body on w's queue, receives it and hands it to w.Handle. It
// returns the received message, for assertDeleted.
func (f *fixture) deliver(w *sera.Watcher, body []byte) *transport.Message {
	f.t.Helper()
	ctx := context.Background()
	if err := f.tr.Send(ctx, w.Queue(), body); err != nil {
		f.t.Fatal(err)
	}
	msgs, err := f.tr.Receive(ctx, w.Queue(), 1, 5*time.Second, 30*time.Second)
	if err != nil || len(msgs) != 1 {
		f.t.Fatalf("receive: %d messages, %v", len(msgs), err)
	}
	w.Handle(ctx, msgs[0])
	return msgs[0]
}

// assertDeleted checks that m is gone from queue and nothing else waits
// there.
func assertDeleted(t *testing.T, tr transport.Transport, queue string, m *transport.Message) {
	t.Helper()
	ctx := context.Background()
	if err := tr.ChangeVisibility(ctx, queue, m, 0); !errors.Is(err, transport.ErrStaleHandle) {
		t.Errorf("request is still on %s (ChangeVisibility: %v)", queue, err)
	}
	assertQueueEmpty(t, tr, queue)
}

func assertQueueEmpty(t *testing.T, tr transport.Transport, queue string) {
	t.Helper()
	msgs, err := tr.Receive(context.Background(), queue, 10, 0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 0 {
		t.Errorf("queue %s holds %d messages, want none", queue, len(msgs))
	}
}

// replies are what a client queue held.
type replies struct {
	raw     [][]byte      // every message body, in order
	replies []*sera.Reply // reassembled, in order of completion
	from    []*crypto.PublicKey
}

// drain takes every message from id's reply queue (waiting up to wait for
// the first), opens them as id and reassembles the replies.
func drain(t *testing.T, tr transport.Transport, id *crypto.Identity, wait time.Duration) replies {
	t.Helper()
	ctx := context.Background()
	q := transport.ClientQueue(testPrefix, id.Public().Fingerprint())
	type asm struct {
		parts [][]byte
		have  int
	}
	partial := map[string]*asm{}
	var out replies
	for {
		msgs, err := tr.Receive(ctx, q, 10, wait, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			return out
		}
		wait = 0
		for _, m := range msgs {
			if err := tr.Delete(ctx, q, m); err != nil {
				t.Fatal(err)
			}
			out.raw = append(out.raw, m.Body)
			sr, err := crypto.ParseReply(m.Body)
			if err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			plain, err := sr.Open(id)
			if err != nil {
				t.Fatalf("reply does not open: %v", err)
			}
			rid, part, parts, data, err := sera.ParsePart(plain)
			if err != nil {
				t.Fatal(err)
			}
			key := sr.From.Fingerprint() + "/" + rid
			a := partial[key]
			if a == nil || len(a.parts) != parts || a.parts[part] != nil {
				a = &asm{parts: make([][]byte, parts)}
				partial[key] = a
			}
			a.parts[part] = slices.Clone(data)
			a.have++
			if a.have < parts {
				continue
			}
			delete(partial, key)
			r, err := sera.ParseReplyBody(slices.Concat(a.parts...))
			if err != nil {
				t.Fatalf("reply body: %v", err)
			}
			out.replies = append(out.replies, r)
			out.from = append(out.from, sr.From)
		}
	}
}

// refusal is what a test expects of a request the watcher must not run.
type refusal struct {
	decision string // default rejected
	rule     int
	reason   []string // substrings of the audit reason
	reply    bool     // a reply is sent
	status   int      // its status, default StatusRejected
	// from is the client whose reply queue is checked; default f.client.
	from *crypto.Identity
}

// checkRefused checks what refusal says, and that nothing ran and the
// request left the queue. It returns the audit record and the reply, if
// any.
func (f *fixture) checkRefused(t *testing.T, w *sera.Watcher, m *transport.Message, want refusal) (sera.AuditRecord, *sera.Reply) {
	t.Helper()
	if want.decision == "" {
		want.decision = sera.DecisionRejected
	}
	if want.status == 0 {
		want.status = sera.StatusRejected
	}
	if calls := fakeOf(w.Handler).Calls(); len(calls) != 0 {
		t.Errorf("handler ran %v, want nothing run", calls)
	}
	recs := w.Audit.(*memAudit).Records()
	if len(recs) != 1 {
		t.Fatalf("%d audit records, want 1: %+v", len(recs), recs)
	}
	rec := recs[0]
	if rec.Decision != want.decision || rec.Rule != want.rule {
		t.Errorf("audit decision %q rule %d (%q), want %q rule %d", rec.Decision, rec.Rule, rec.Reason, want.decision, want.rule)
	}
	if rec.Reason == "" {
		t.Errorf("audit record has no reason")
	}
	for _, s := range want.reason {
		if !strings.Contains(rec.Reason, s) {
			t.Errorf("audit reason %q does not say %q", rec.Reason, s)
		}
	}
	if len(rec.Argv) != 0 {
		t.Errorf("refused request's argv %q is in the audit log", rec.Argv)
	}
	if rec.Time.IsZero() {
		t.Errorf("audit record has no time")
	}
	if want.from == nil {
		want.from = f.client
	}
	got := drain(t, f.tr, want.from, 0)
	var reply *sera.Reply
	switch {
	case want.reply && len(got.replies) != 1:
		t.Errorf("%d replies, want 1", len(got.raw))
	case want.reply:
		reply = got.replies[0]
		if reply.Status != want.status || reply.Rejected == "" || reply.ID != rec.RequestID || reply.Watcher != w.Name {
			t.Errorf("reply %+v, want status %d, Rejected set, id %s from %s", reply, want.status, rec.RequestID, w.Name)
		}
		if !got.from[0].Equal(w.Identity.Public()) {
			t.Errorf("reply sealed by %s, want the watcher", got.from[0].Fingerprint())
		}
	case len(got.raw) != 0:
		t.Errorf("%d replies sent, want none", len(got.raw))
	}
	assertDeleted(t, f.tr, w.Queue(), m)
	return rec, reply
}

// ---- envelope surgery -----------------------------------------------------

// envelopeJSON mirrors the wire form of a sealed request.
type envelopeJSON struct {
	V          int             `json:"v"`
	Sender     string          `json:"sender"`
	Recipients []recipientJSON `json:"recipients"`
	Nonce      []byte          `json:"nonce"`
	Box        []byte          `json:"box"`
}

type recipientJSON struct {
	KID string `json:"kid"`
	Key []byte `json:"key"`
}

func editEnvelope(t *testing.T, b []byte, edit func(*envelopeJSON)) []byte {
	t.Helper()
	var e envelopeJSON
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	edit(&e)
	out, err := json.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var keyB32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// frankenstein returns an identity with id's Curve25519 key and a fresh
// Ed25519 key: it opens and seals boxes as id does but cannot sign as id.
func frankenstein(t *testing.T, id *crypto.Identity) *crypto.Identity {
	t.Helper()
	data, err := keyB32.DecodeString(strings.TrimPrefix(id.SecretString(), crypto.SecretPrefix))
	if err != nil || len(data) != 68 {
		t.Fatalf("secret key does not decode: %d bytes, %v", len(data), err)
	}
	if _, err := rand.Read(data[:32]); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append([]byte(crypto.SecretPrefix), data[:64]...))
	copy(data[64:], sum[:4])
	fid, err := crypto.ParseIdentity(crypto.SecretPrefix + keyB32.EncodeToString(data))
	if err != nil {
		t.Fatal(err)
	}
	// Same box key, other signing key.
	pub := func(p *crypto.PublicKey) []byte {
		b, err := keyB32.DecodeString(strings.TrimPrefix(p.String(), crypto.PublicPrefix))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := pub(id.Public()), pub(fid.Public())
	if string(a[32:64]) != string(b[32:64]) || string(a[:32]) == string(b[:32]) {
		t.Fatal("frankenstein identity is not what it should be")
	}
	return fid
}

// advance moves the fake clock of an inFakeTime test on by d and returns
// once everything due by then has run and the rest waits. It is how such a
// test lets time pass: the sleep is on the bubble's clock, so it takes no
// real time and nothing the machine does can stretch it.
func advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// mustParseAllow is sera.ParseAllow for allow lists a test writes.
func mustParseAllow(t testing.TB, allow string) []string {
	t.Helper()
	a, err := sera.ParseAllow(allow)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
