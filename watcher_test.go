package sera_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
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
)

// checkAccepted checks that m ran argv exactly once, was audited as
// accepted with the redacted argv and exit status, answered with status
// and deleted. It returns the reply.
func (f *fixture) checkAccepted(t *testing.T, w *sera.Watcher, m *transport.Message, argv []string, status int) *sera.Reply {
	t.Helper()
	h := fakeOf(w.Handler)
	if calls := h.Calls(); len(calls) != 1 || !slices.Equal(calls[0], argv) {
		t.Errorf("handler ran %q, want %q once", calls, argv)
	}
	recs := w.Audit.(*memAudit).Records()
	if len(recs) != 1 {
		t.Fatalf("%d audit records, want 1: %+v", len(recs), recs)
	}
	rec := recs[0]
	if rec.Decision != sera.DecisionAccepted || rec.Rule != 0 || rec.Reason != "" || rec.Exit == nil || *rec.Exit != status {
		t.Errorf("audit %+v, want accepted with exit %d", rec, status)
	}
	if !slices.Equal(rec.Argv, h.Redact(argv)) {
		t.Errorf("audit argv %q, want %q", rec.Argv, h.Redact(argv))
	}
	if rec.Client != f.client.Public().Fingerprint() || rec.ClientName != "alice" {
		t.Errorf("audit client %s (%s), want alice", rec.Client, rec.ClientName)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.raw) != 1 || len(got.replies) != 1 {
		t.Fatalf("%d reply messages, want 1", len(got.raw))
	}
	r := got.replies[0]
	if r.Status != status || r.Rejected != "" || r.ID != rec.RequestID || r.Watcher != w.Name {
		t.Errorf("reply %+v, want status %d for %s from %s", r, status, rec.RequestID, w.Name)
	}
	if r.Started.IsZero() || r.Ended.Before(r.Started) {
		t.Errorf("reply times %s to %s", r.Started, r.Ended)
	}
	assertDeleted(t, f.tr, w.Queue(), m)
	return r
}

func TestRule1Envelope(t *testing.T) {
	t.Parallel()
	valid := func(f *fixture) []byte { return f.sealed(f.request("ping")) }
	tests := []struct {
		name   string
		body   func(f *fixture) []byte
		reason []string
	}{
		{"garbage", func(*fixture) []byte { return []byte("\x00\xffnot json at all") }, []string{"malformed envelope"}},
		{"empty", func(*fixture) []byte { return []byte{} }, []string{"malformed envelope"}},
		{"oversized", func(f *fixture) []byte {
			// A valid envelope, padded with JSON whitespace past the
			// limit: only the size is wrong.
			b := valid(f)
			return append(b, bytes.Repeat([]byte{' '}, crypto.MaxEnvelopeSize+1-len(b))...)
		}, []string{"malformed envelope", "1048577 bytes, at most 1048576"}},
		{"array", func(*fixture) []byte { return []byte(`[1, 2, 3]`) }, []string{"malformed envelope"}},
		{"unknown field", func(*fixture) []byte { return []byte(`{"hello": "world"}`) }, []string{"malformed envelope", "unknown field"}},
		{"empty object", func(*fixture) []byte { return []byte(`{}`) }, []string{"malformed envelope", "version"}},
		{"extra field", func(f *fixture) []byte {
			b := valid(f)
			return append([]byte(`{"extra":1,`), b[1:]...)
		}, []string{"malformed envelope", "unknown field"}},
		{"trailing data", func(f *fixture) []byte { return append(valid(f), []byte(`{}`)...) }, []string{"malformed envelope", "trailing data"}},
		{"two envelopes", func(f *fixture) []byte { return append(valid(f), valid(f)...) }, []string{"malformed envelope"}},
		{"version 2", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.V = 2 })
		}, []string{"malformed envelope", "version 2"}},
		{"bad sender", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.Sender = flipLast(e.Sender) })
		}, []string{"malformed envelope", "sender"}},
		{"short nonce", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.Nonce = e.Nonce[1:] })
		}, []string{"malformed envelope", "nonce"}},
		{"no recipients", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.Recipients = nil })
		}, []string{"malformed envelope", "0 recipients"}},
		{"duplicate recipient", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.Recipients = append(e.Recipients, e.Recipients[0]) })
		}, []string{"malformed envelope", "duplicate recipient"}},
		{"bad kid", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.Recipients[0].KID = "../../etc/passwd" })
		}, []string{"malformed envelope", "recipient"}},
		{"short box", func(f *fixture) []byte {
			return editEnvelope(t, valid(f), func(e *envelopeJSON) { e.Box = e.Box[:10] })
		}, []string{"malformed envelope", "too short"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The spool takes more than a sealed request may be, so
			// that the watcher's own limit is what is tested.
			f := newFixture(t, withMaxSize(2*crypto.MaxEnvelopeSize))
			m := f.deliver(f.w, tt.body(f))
			rec, _ := f.checkRefused(t, f.w, m, refusal{rule: 1, reason: tt.reason})
			if rec.RequestID != "" {
				t.Errorf("request id %q audited from an envelope that does not parse", rec.RequestID)
			}
		})
	}
}

func TestRule2UnknownSender(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	stranger := newIdentity(t)
	m := f.deliver(f.w, seal(t, stranger, f.requestFrom(stranger, "ping"), f.wid.Public()))
	rec, _ := f.checkRefused(t, f.w, m, refusal{rule: 2, reason: []string{"unknown client"}, from: stranger})
	if rec.ClaimedSender != stranger.Public().Fingerprint() || rec.Client != "" || rec.ClientName != "" {
		t.Errorf("audit client %q (%q), claimed %q; want the stranger's fingerprint as claimed, and no name", rec.Client, rec.ClientName, rec.ClaimedSender)
	}
	assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
}

func TestRule3Recipient(t *testing.T) {
	t.Parallel()
	t.Run("not a recipient", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		other := newIdentity(t)
		m := f.deliver(f.w, seal(t, f.client, f.request("ping"), other.Public()))
		f.checkRefused(t, f.w, m, refusal{rule: 3, reason: []string{"not a recipient"}})
	})
	t.Run("wrong recipient key", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		other := newIdentity(t)
		// Sealed to watcher B, then the entry relabelled as watcher A's.
		body := editEnvelope(t, seal(t, f.client, f.request("ping"), other.Public()), func(e *envelopeJSON) {
			if len(e.Recipients) != 1 || e.Recipients[0].KID != other.Public().Fingerprint() {
				t.Fatalf("recipients %+v", e.Recipients)
			}
			e.Recipients[0].KID = f.wid.Public().Fingerprint()
		})
		m := f.deliver(f.w, body)
		f.checkRefused(t, f.w, m, refusal{rule: 3, reason: []string{"recipient key does not open"}})
	})
	t.Run("sealed to several, not this one", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		m := f.deliver(f.w, seal(t, f.client, f.request("ping"), newIdentity(t).Public(), newIdentity(t).Public()))
		f.checkRefused(t, f.w, m, refusal{rule: 3, reason: []string{"not a recipient"}})
	})
}

func TestRule4Payload(t *testing.T) {
	t.Parallel()
	t.Run("tampered ciphertext", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		body := editEnvelope(t, f.sealed(f.request("ping")), func(e *envelopeJSON) { e.Box[len(e.Box)/2] ^= 0x01 })
		m := f.deliver(f.w, body)
		f.checkRefused(t, f.w, m, refusal{rule: 4, reason: []string{"payload does not open"}})
	})
	t.Run("bad signature", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		// Sealed by an identity that shares alice's box key but not her
		// signing key, then claimed to come from alice: the recipient
		// entry and the payload open, the signature does not verify.
		fake := frankenstein(t, f.client)
		body := editEnvelope(t, seal(t, fake, f.request("ping"), f.wid.Public()), func(e *envelopeJSON) {
			e.Sender = f.client.Public().String()
		})
		m := f.deliver(f.w, body)
		rec, _ := f.checkRefused(t, f.w, m, refusal{rule: 4, reason: []string{"signature does not verify"}})
		// Not authenticated: the key is recorded as claimed, never as a
		// known client's name.
		if rec.ClientName != "" || rec.Client != "" || rec.ClaimedSender != f.client.Public().Fingerprint() {
			t.Errorf("audit client %q name %q claimed %q, want only the claimed key", rec.Client, rec.ClientName, rec.ClaimedSender)
		}
	})
	t.Run("frankenstein as itself", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		// Unedited, it is simply an unknown client.
		fake := frankenstein(t, f.client)
		m := f.deliver(f.w, seal(t, fake, f.requestFrom(fake, "ping"), f.wid.Public()))
		f.checkRefused(t, f.w, m, refusal{rule: 2, reason: []string{"unknown client"}, from: fake})
	})
	payloads := []struct {
		name    string
		payload func(f *fixture) []byte
		reason  string
	}{
		{"not json", func(*fixture) []byte { return []byte("run ping please") }, "invalid request"},
		{"wrong shape", func(*fixture) []byte { return []byte(`{"hello":"world"}`) }, "unknown field"},
		{"empty", func(*fixture) []byte { return []byte{} }, "invalid request"},
		{"no argv", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.Argv = nil }))
		}, "argv"},
		{"bad id", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.ID = strings.ToUpper(r.ID) }))
		}, "id"},
		{"expires before issued", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.ExpiresAt = r.IssuedAt.Add(-time.Second) }))
		}, "issued_at must be before expires_at"},
		{"lifetime too long", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.ExpiresAt = r.IssuedAt.Add(25 * time.Hour) }))
		}, "lifetime"},
		{"empty target", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.Target = sera.Target{} }))
		}, "empty target"},
		{"bad glob", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.Target.Names = []string{"web["} }))
		}, "bad target name"},
		{"no reply queue", func(f *fixture) []byte {
			return mustMarshal(t, mod(f.request("ping"), func(r *sera.Request) { r.ReplyTo = "" }))
		}, "no reply queue"},
	}
	for _, tt := range payloads {
		t.Run("payload "+tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			m := f.deliver(f.w, sealPayload(t, f.client, tt.payload(f), f.wid.Public()))
			f.checkRefused(t, f.w, m, refusal{rule: 4, reason: []string{tt.reason}})
		})
	}
	replyTo := []struct {
		name  string
		queue func(f *fixture) string
	}{
		{"another client's queue", func(f *fixture) string { return f.clientQueue(newIdentity(t)) }},
		{"the watcher's own queue", func(f *fixture) string { return f.w.Queue() }},
		{"another prefix", func(f *fixture) string { return transport.ClientQueue("evil", f.client.Public().Fingerprint()) }},
		{"not a queue name", func(f *fixture) string { return "../../tmp/x" }},
		{"another client's reply queue 1", func(f *fixture) string {
			return transport.ReplyQueue(f.w.Prefix, newIdentity(t).Public().Fingerprint(), 1)
		}},
		{"its own, past the last", func(f *fixture) string {
			return transport.ReplyQueue(f.w.Prefix, f.client.Public().Fingerprint(), transport.MaxReplyQueues)
		}},
		{"its own, spelled 01", func(f *fixture) string { return f.clientQueue(f.client) + "-01" }},
		{"its own, with a suffix", func(f *fixture) string { return f.clientQueue(f.client) + "-x" }},
	}
	// Every process of a client identity has its own reply queue: the
	// reply goes to the one the request names, and only there.
	t.Run("reply_to its own reply queue 7", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		q := transport.ReplyQueue(f.w.Prefix, f.client.Public().Fingerprint(), 7)
		req := f.request("ping")
		req.ReplyTo = q
		f.deliver(f.w, f.sealed(req))
		if calls := fakeOf(f.w.Handler).Calls(); len(calls) != 1 {
			t.Fatalf("handler ran %v, want ping once", calls)
		}
		msgs, err := f.tr.Receive(context.Background(), q, 10, 5*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("reply queue 7 holds %d messages (%v), want the reply", len(msgs), err)
		}
		assertQueueEmpty(t, f.tr, f.clientQueue(f.client))
	})
	for _, tt := range replyTo {
		t.Run("reply_to "+tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			q := tt.queue(f)
			req := f.request("ping")
			req.ReplyTo = q
			m := f.deliver(f.w, f.sealed(req))
			f.checkRefused(t, f.w, m, refusal{rule: 4, reason: []string{"reply queue", "is not one of the sender's"}})
			if transport.ValidQueueName(q) && q != f.w.Queue() {
				assertQueueEmpty(t, f.tr, q)
			}
		})
	}
}

func mod(r *sera.Request, edit func(*sera.Request)) *sera.Request {
	edit(r)
	return r
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRule5Target(t *testing.T) {
	t.Parallel()
	// The watcher is web1 in groups web and eu.
	tests := []struct {
		name   string
		target sera.Target
		ok     bool
	}{
		{"re-addressed", sera.Target{Names: []string{"web2"}}, false},
		{"name", sera.Target{Names: []string{"web1"}}, true},
		{"one of names", sera.Target{Names: []string{"db1", "web1"}}, true},
		{"glob", sera.Target{Names: []string{"web*"}}, true},
		{"glob class", sera.Target{Names: []string{"web[0-9]"}}, true},
		{"non-matching glob", sera.Target{Names: []string{"db*"}}, false},
		{"prefix is not a glob", sera.Target{Names: []string{"web"}}, false},
		{"longer name", sera.Target{Names: []string{"web10"}}, false},
		{"group", sera.Target{Groups: []string{"eu"}}, true},
		{"one of groups", sera.Target{Groups: []string{"us", "web"}}, true},
		{"other group", sera.Target{Groups: []string{"db"}}, false},
		{"group named like the host", sera.Target{Groups: []string{"web1"}}, false},
		{"all", sera.Target{All: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			req := f.request("ping")
			req.Target = tt.target
			m := f.deliver(f.w, f.sealed(req))
			if tt.ok {
				f.checkAccepted(t, f.w, m, []string{"ping"}, 0)
				return
			}
			reason := []string{"does not select watcher web1"}
			if len(tt.target.Groups) > 0 {
				// A group mismatch names both sides and the fix.
				reason = append(reason, "its own groups (SERA_GROUPS on web1) are web,eu", "known_watchers",
					"on web1 run 'sera config set SERA_GROUPS=web,eu,"+tt.target.Groups[0]+"'",
					"'sera watchers add web1 KEY --group …'")
			}
			_, r := f.checkRefused(t, f.w, m, refusal{rule: 5, reason: reason, reply: true})
			if r != nil && !strings.Contains(string(r.Stderr), "does not select") {
				t.Errorf("reply stderr %q does not say why", r.Stderr)
			}
		})
	}
}

func TestRule6Time(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name             string
		issued, lifetime time.Duration // issued relative to now
		reason           string        // empty: accepted
	}{
		{"now", 0, 5 * time.Minute, ""},
		{"expired", -10 * time.Minute, 5 * time.Minute, "expired 5m0s ago"},
		{"expired a second ago", -5*time.Minute - time.Second, 5 * time.Minute, "expired"},
		{"expires now", -5 * time.Minute, 5 * time.Minute, ""},
		{"beyond skew", 3 * time.Minute, 5 * time.Minute, "in the future, beyond the allowed clock skew of 2m0s"},
		{"just beyond skew", sera.MaxClockSkew + time.Nanosecond, 5 * time.Minute, "in the future"},
		{"at the skew", sera.MaxClockSkew, 5 * time.Minute, ""},
		{"within skew", time.Minute, 5 * time.Minute, ""},
		{"long lifetime", -23 * time.Hour, 24 * time.Hour, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.clock.Set(now)
			req := f.request("ping")
			req.IssuedAt = now.Add(tt.issued)
			req.ExpiresAt = req.IssuedAt.Add(tt.lifetime)
			m := f.deliver(f.w, f.sealed(req))
			if tt.reason == "" {
				f.checkAccepted(t, f.w, m, []string{"ping"}, 0)
				return
			}
			f.checkRefused(t, f.w, m, refusal{rule: 6, reason: []string{tt.reason}, reply: true})
			// A refused request is final: remembered, with its refusal,
			// until it expires.
			if prior, err := f.w.Replay.Begin(f.client.Public().Fingerprint(), req.ID, req.ExpiresAt); err != nil || prior == nil || !prior.Done {
				t.Errorf("replay cache does not hold the refused request: %+v, %v", prior, err)
			}
		})
	}
}

func TestRule7SameEnvelopeTwice(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	body := f.sealed(f.request("echo", "once"))
	m1 := f.deliver(f.w, body)
	m2 := f.deliver(f.w, body)
	if n := f.h.Count(); n != 1 {
		t.Errorf("handler ran %d times, want once", n)
	}
	recs := f.a.Records()
	if len(recs) != 2 || recs[0].Decision != sera.DecisionAccepted || recs[1].Decision != sera.DecisionDuplicate ||
		recs[1].Rule != 7 || !strings.Contains(recs[1].Reason, "already run") || recs[1].RequestID != recs[0].RequestID {
		t.Errorf("audit records %+v, want accepted then a rule 7 duplicate", recs)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.raw) != 2 || !bytes.Equal(got.raw[0], got.raw[1]) {
		t.Fatalf("client queue holds %d replies (identical: %v), want 2 byte-identical", len(got.raw), len(got.raw) == 2 && bytes.Equal(got.raw[0], got.raw[1]))
	}
	if r := got.replies[0]; r.Status != 0 || string(r.Stdout) != "once\n" {
		t.Errorf("reply %+v", r)
	}
	assertDeleted(t, f.tr, f.w.Queue(), m1)
	assertDeleted(t, f.tr, f.w.Queue(), m2)

	// After a restart: a new Watcher with a new ReplayCache on the same
	// directory, and a new handler.
	rc, err := sera.OpenReplayCache(filepath.Join(f.dir, "replay-web1"))
	if err != nil {
		t.Fatal(err)
	}
	w2 := *f.w
	w2.Replay, w2.Handler, w2.Audit = rc, newFakeHandler(), &memAudit{}
	m3 := f.deliver(&w2, body)
	if n := w2.Handler.(*fakeHandler).Count() + f.h.Count(); n != 1 {
		t.Errorf("ran %d times in all after the restart, want once", n)
	}
	if recs := w2.Audit.(*memAudit).Records(); len(recs) != 1 || recs[0].Decision != sera.DecisionDuplicate || recs[0].Rule != 7 {
		t.Errorf("audit after restart %+v, want a duplicate", recs)
	}
	again := drain(t, f.tr, f.client, 0)
	if len(again.raw) != 1 || !bytes.Equal(again.raw[0], got.raw[0]) {
		t.Errorf("after the restart the client got %d replies, want the stored one again", len(again.raw))
	}
	assertDeleted(t, f.tr, f.w.Queue(), m3)
}

func TestRule7Interrupted(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	req := f.request("user", "add", "bob")
	// The watcher recorded the request and died before it replied.
	if prior, err := f.w.Replay.Begin(f.client.Public().Fingerprint(), req.ID, req.ExpiresAt); err != nil || prior != nil {
		t.Fatalf("Begin: %+v, %v", prior, err)
	}
	body := f.sealed(req)
	m := f.deliver(f.w, body)
	rec, r := f.checkRefused(t, f.w, m, refusal{decision: sera.DecisionDuplicate, rule: 7, reason: []string{"interrupted"}, reply: true, status: sera.StatusInterrupted})
	if rec.RequestID != req.ID {
		t.Errorf("audit id %s, want %s", rec.RequestID, req.ID)
	}
	if r != nil && !strings.Contains(string(r.Stderr), "not run again") {
		t.Errorf("reply stderr %q", r.Stderr)
	}
	// A further delivery gets the same answer, and still does not run.
	f.deliver(f.w, body)
	f.deliver(f.w, body)
	if n := f.h.Count(); n != 0 {
		t.Errorf("handler ran %d times", n)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 2 || got.replies[0].Status != sera.StatusInterrupted || !bytes.Equal(got.raw[0], got.raw[1]) {
		t.Errorf("redeliveries got %d replies, want the stored status 125 reply twice", len(got.replies))
	}
}

func TestRule7PerClient(t *testing.T) {
	t.Parallel()
	// The replay cache is keyed by client: another client's request with
	// the same id is its own request.
	f := newFixture(t)
	bob := newIdentity(t)
	f.addClient(bob, "bob", "*")
	req := f.request("ping")
	f.deliver(f.w, f.sealed(req))
	req2 := *req
	req2.ReplyTo = f.clientQueue(bob)
	f.deliver(f.w, seal(t, bob, &req2, f.wid.Public()))
	if n := f.h.Count(); n != 2 {
		t.Errorf("handler ran %d times, want twice", n)
	}
}

func TestRule8Allowlist(t *testing.T) {
	t.Parallel()
	t.Run("not allowed", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		bob := newIdentity(t)
		f.addClient(bob, "bob", "")
		m := f.deliver(f.w, seal(t, bob, f.requestFrom(bob, "user", "add", "bob"), f.wid.Public()))
		rec, r := f.checkRefused(t, f.w, m, refusal{rule: 8, reason: []string{"bob", `may not run "user add"`}, reply: true, from: bob})
		if rec.ClientName != "bob" {
			t.Errorf("audit client %q", rec.ClientName)
		}
		if r != nil && !strings.Contains(string(r.Stderr), `may not run "user add"`) {
			t.Errorf("reply stderr %q", r.Stderr)
		}
		// Ping needs no permission.
		m = f.deliver(f.w, seal(t, bob, f.requestFrom(bob, "ping"), f.wid.Public()))
		if f.h.Count() != 1 {
			t.Errorf("ping did not run for bob")
		}
		assertDeleted(t, f.tr, f.w.Queue(), m)
	})
	t.Run("parent allowed", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		bob := newIdentity(t)
		f.addClient(bob, "bob", "user")
		f.deliver(f.w, seal(t, bob, f.requestFrom(bob, "user", "add", "bob"), f.wid.Public()))
		f.deliver(f.w, seal(t, bob, f.requestFrom(bob, "echo", "x"), f.wid.Public()))
		if calls := f.h.Calls(); len(calls) != 1 || calls[0][0] != "user" {
			t.Errorf("ran %q, want only user add", calls)
		}
		if recs := f.a.Records(); len(recs) != 2 || recs[1].Rule != 8 || !strings.Contains(recs[1].Reason, `"echo"`) {
			t.Errorf("audit %+v", recs)
		}
	})
	t.Run("invalid arguments", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		m := f.deliver(f.w, f.sealed(f.request("user", "add", "bob", "--password-hash=SECRETVALUE")))
		rec, r := f.checkRefused(t, f.w, m, refusal{rule: 8, reason: []string{"invalid command line", "user add"}, reply: true})
		line, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(line, []byte("SECRETVALUE")) {
			t.Errorf("audit record echoes the secret: %s", line)
		}
		if r != nil && !strings.Contains(string(r.Stderr), "SECRETVALUE") {
			t.Errorf("reply stderr %q does not carry the validation error", r.Stderr)
		}
		if r != nil && strings.Contains(r.Rejected, "SECRETVALUE") {
			t.Errorf("reply reason %q echoes the secret", r.Rejected)
		}
	})
	t.Run("unknown command", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		m := f.deliver(f.w, f.sealed(f.request("rm", "-rf", "/")))
		_, r := f.checkRefused(t, f.w, m, refusal{rule: 8, reason: []string{"invalid command line"}, reply: true})
		if r != nil && !strings.Contains(string(r.Stderr), `unknown command "rm"`) {
			t.Errorf("reply stderr %q", r.Stderr)
		}
	})
	t.Run("not allowed and invalid", func(t *testing.T) {
		t.Parallel()
		// A client that may not run a command learns nothing from the
		// command's validation: it is refused for the permission.
		f := newFixture(t)
		bob := newIdentity(t)
		f.addClient(bob, "bob", "echo")
		m := f.deliver(f.w, seal(t, bob, f.requestFrom(bob, "user", "add", "Bad!Name"), f.wid.Public()))
		_, r := f.checkRefused(t, f.w, m, refusal{rule: 8, reason: []string{`may not run "user add"`}, reply: true, from: bob})
		if r != nil && strings.Contains(string(r.Stderr), "Bad!Name") {
			t.Errorf("reply to a client without permission carries the validation error: %q", r.Stderr)
		}
	})
	t.Run("duplicate of a refusal", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		bob := newIdentity(t)
		f.addClient(bob, "bob", "")
		body := seal(t, bob, f.requestFrom(bob, "user", "add", "bob"), f.wid.Public())
		f.deliver(f.w, body)
		// Even once bob may run it, the id was answered already.
		f.removeClient("bob")
		f.addClient(bob, "bob", "*")
		f.deliver(f.w, body)
		if n := f.h.Count(); n != 0 {
			t.Errorf("handler ran %d times", n)
		}
		got := drain(t, f.tr, bob, 0)
		if len(got.raw) != 2 || !bytes.Equal(got.raw[0], got.raw[1]) || got.replies[0].Status != sera.StatusRejected {
			t.Errorf("got %d replies, want the refusal twice", len(got.raw))
		}
	})
}

func TestAllows(t *testing.T) {
	t.Parallel()
	tests := []struct {
		allow   string
		command string
		ok      bool
	}{
		{"", "ping", true},
		{"", "user add", false},
		{"", "user", false},
		{"user", "user add", true},
		{"user", "user", true},
		{"user", "useradd", false},
		{"user", "users", false},
		{"user", "user add extra", true},
		{"user.add", "user add", true},
		{"user.add", "user del", false},
		{"user.add", "user", false},
		{"user.add", "user addx", false},
		{"user.add", "user add x", true},
		{"*", "user add", true},
		{"*", "clients remove", true},
		{"*", "ping", true},
		{"key,group", "group del", true},
		{"key,group", "key add", true},
		{"key,group", "user add", false},
		{"ping", "user", false},
		{"key(alice)", "key add", true}, // the subject is Authorize's
		{"self", "key add", true},
		{"self", "key", false},
		{"self", "user add", false},
	}
	for _, tt := range tests {
		c := &sera.KnownClient{Name: "c", Allow: mustParseAllow(t, tt.allow), Account: "bob"}
		if got := c.Allows(tt.command); got != tt.ok {
			t.Errorf("allow %q: Allows(%q) = %v, want %v", tt.allow, tt.command, got, tt.ok)
		}
	}
	if _, err := sera.ParseAllow("us*"); err == nil {
		t.Error("a glob in a command path parsed")
	}
	// self without an account grants nothing.
	if c := (&sera.KnownClient{Name: "c", Allow: []string{sera.SelfGrant}}); c.Allows("key add") {
		t.Error("self without account= allows key add")
	}
}

func TestAllowsOn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		allow, command, subject string
		on, all                 bool
	}{
		{"key", "key add", "alice", true, true},
		{"key(alice|bob)", "key add", "alice", true, false},
		{"key(alice|bob)", "key add", "carol", false, false},
		{"key(alice|bob)", "key add", "alice2", false, false},
		{"key.add(ext-*)", "key add", "ext-joe", true, false},
		{"key.add(ext-*)", "key remove", "ext-joe", false, false},
		{"key.add(ext-*)", "key add", "extjoe", false, false},
		{"key(alice),key", "key add", "zed", true, true},
		{"self", "key sync", "bob", true, false},
		{"self", "key sync", "alice", false, false},
		{"allow(22|8000-8099)", "allow", "22", true, false},
		{"allow(22|8000-8099)", "allow", "8050", true, false},
		{"allow(22|8000-8099)", "allow", "8100", false, false},
		{"allow(22|8000-8099)", "allow", "", false, false},
		{"allow(22)", "allow", "022", false, false},
		{"*", "allow", "1", true, true},
	}
	for _, tt := range tests {
		c := &sera.KnownClient{Name: "c", Allow: mustParseAllow(t, tt.allow), Account: "bob"}
		if got := c.AllowsOn(tt.command, tt.subject); got != tt.on {
			t.Errorf("allow %q: AllowsOn(%q, %q) = %v, want %v", tt.allow, tt.command, tt.subject, got, tt.on)
		}
		if got := c.AllowsAll(tt.command); got != tt.all {
			t.Errorf("allow %q: AllowsAll(%q) = %v, want %v", tt.allow, tt.command, got, tt.all)
		}
	}
}

func TestRuleOrder(t *testing.T) {
	t.Parallel()
	// A request that breaks several rules is refused by the first.
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		make  func(f *fixture) []byte
		rule  int
		reply bool
	}{
		{"unknown and not recipient", func(f *fixture) []byte {
			s := newIdentity(t)
			return seal(t, s, f.requestFrom(s, "ping"), newIdentity(t).Public())
		}, 2, false},
		{"not recipient and bad payload", func(f *fixture) []byte {
			return sealPayload(t, f.client, []byte("junk"), newIdentity(t).Public())
		}, 3, false},
		{"bad reply_to and wrong target", func(f *fixture) []byte {
			return f.sealed(mod(f.request("ping"), func(r *sera.Request) { r.ReplyTo = "sera-c-x"; r.Target.Names = []string{"db"} }))
		}, 4, false},
		{"wrong target and expired", func(f *fixture) []byte {
			return f.sealed(mod(f.request("ping"), func(r *sera.Request) {
				r.Target.Names = []string{"db"}
				r.IssuedAt, r.ExpiresAt = now.Add(-time.Hour), now.Add(-time.Minute)
			}))
		}, 5, true},
		{"expired and not allowed", func(f *fixture) []byte {
			return f.sealed(mod(f.request("nope"), func(r *sera.Request) {
				r.IssuedAt, r.ExpiresAt = now.Add(-time.Hour), now.Add(-time.Minute)
			}))
		}, 6, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.clock.Set(now)
			m := f.deliver(f.w, tt.make(f))
			recs := f.a.Records()
			if len(recs) != 1 || recs[0].Rule != tt.rule {
				t.Fatalf("audit %+v, want rule %d", recs, tt.rule)
			}
			if f.h.Count() != 0 {
				t.Error("handler ran")
			}
			if got := drain(t, f.tr, f.client, 0); (len(got.raw) == 1) != tt.reply {
				t.Errorf("%d replies, want reply %v", len(got.raw), tt.reply)
			}
			assertDeleted(t, f.tr, f.w.Queue(), m)
		})
	}
}

func TestAccepted(t *testing.T) {
	t.Parallel()
	t.Run("ping", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		m := f.deliver(f.w, f.sealed(f.request("ping")))
		r := f.checkAccepted(t, f.w, m, []string{"ping"}, 0)
		if string(r.Stdout) != "pong\n" || len(r.Stderr) != 0 {
			t.Errorf("reply stdout %q stderr %q", r.Stdout, r.Stderr)
		}
	})
	t.Run("redacted", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		argv := []string{"echo", "--token=hunter2", "hello"}
		m := f.deliver(f.w, f.sealed(f.request(argv...)))
		r := f.checkAccepted(t, f.w, m, argv, 0)
		if string(r.Stdout) != "--token=hunter2 hello\n" {
			t.Errorf("stdout %q: the command did not get its real argv", r.Stdout)
		}
		line, _ := json.Marshal(f.a.Records()[0])
		if bytes.Contains(line, []byte("hunter2")) {
			t.Errorf("audit record holds the secret: %s", line)
		}
	})
	t.Run("call", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		req := f.request("user", "add", "carol", "--password-hash=$6$salt$hash")
		var call *sera.Call
		f.w.Handler = &spyHandler{fakeHandler: f.h, call: &call}
		m := f.deliver(f.w, f.sealed(req))
		f.checkAccepted(t, f.w, m, req.Argv, 0)
		if call == nil || call.Command != "user add" || call.RequestID != req.ID || call.Client == nil || call.Client.Name != "alice" {
			t.Errorf("call %+v", call)
		}
		if a := f.a.Records()[0].Argv; a[3] != "--password-hash=REDACTED" {
			t.Errorf("audit argv %q", a)
		}
	})
	t.Run("failing command", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		m := f.deliver(f.w, f.sealed(f.request("user", "add", "x")))
		f.checkAccepted(t, f.w, m, []string{"user", "add", "x"}, 0)
		m = f.deliver(f.w, f.sealed(f.request("panic")))
		rec := f.a.Records()[1]
		if rec.Decision != sera.DecisionAccepted || rec.Exit == nil || *rec.Exit != 70 {
			t.Errorf("audit after a panic %+v, want accepted, exit 70", rec)
		}
		got := drain(t, f.tr, f.client, 0)
		if len(got.replies) != 1 || got.replies[0].Status != 70 || !strings.Contains(string(got.replies[0].Stderr), "internal error in panic") {
			t.Errorf("replies %+v", got.replies)
		}
		assertDeleted(t, f.tr, f.w.Queue(), m)
	})
}

// fakeOf returns the fakeHandler in h.
func fakeOf(h sera.Handler) *fakeHandler {
	switch h := h.(type) {
	case *fakeHandler:
		return h
	case *spyHandler:
		return h.fakeHandler
	}
	panic("not a fake handler")
}

// spyHandler records the last Call.
type spyHandler struct {
	*fakeHandler
	call **sera.Call
}

func (s *spyHandler) Run(ctx context.Context, c *sera.Call) sera.Result {
	*s.call = c
	return s.fakeHandler.Run(ctx, c)
}

func TestKnownClientsReload(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	carol := newIdentity(t)
	send := func(from *crypto.Identity, argv ...string) {
		t.Helper()
		if err := f.tr.Send(context.Background(), f.w.Queue(), seal(t, from, f.requestFrom(from, argv...), f.wid.Public())); err != nil {
			t.Fatal(err)
		}
	}
	send(carol, "echo", "1")
	recs := f.a.wait(t, 1)
	if recs[0].Rule != 2 || f.h.Count() != 0 {
		t.Fatalf("carol before she is added: %+v", recs[0])
	}
	f.addClient(carol, "carol", "echo")
	send(carol, "echo", "2")
	recs = f.a.wait(t, 2)
	if recs[1].Decision != sera.DecisionAccepted || recs[1].ClientName != "carol" {
		t.Fatalf("carol once added: %+v", recs[1])
	}
	f.removeClient("alice")
	send(f.client, "echo", "3")
	recs = f.a.wait(t, 3)
	if recs[2].Rule != 2 || !strings.Contains(recs[2].Reason, "unknown client") {
		t.Fatalf("alice once removed: %+v", recs[2])
	}
	if calls := f.h.Calls(); len(calls) != 1 || calls[0][1] != "2" {
		t.Errorf("ran %q, want only carol's echo 2", calls)
	}
}

func TestKnownClientsUnparseable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	send := func() {
		t.Helper()
		if err := f.tr.Send(context.Background(), f.w.Queue(), f.sealed(f.request("ping"))); err != nil {
			t.Fatal(err)
		}
	}
	send()
	f.a.wait(t, 1)
	// A half-edited file: a good line and a broken one. Nobody is known
	// until it is fixed, not even alice on her good line.
	broken := append(f.known.Bytes(), []byte("sera1garbage mallory *\n")...)
	if err := safefile.WriteAtomic(f.kcPath, broken, 0o600); err != nil {
		t.Fatal(err)
	}
	send()
	recs := f.a.wait(t, 2)
	if recs[1].Decision != sera.DecisionRejected || recs[1].Rule != 2 || !strings.Contains(recs[1].Reason, "known clients unreadable") {
		t.Errorf("with a broken known_clients: %+v", recs[1])
	}
	if n := f.h.Count(); n != 1 {
		t.Errorf("handler ran %d times, want only before the file broke", n)
	}
	f.writeKnownClients()
	send()
	if recs := f.a.wait(t, 3); recs[2].Decision != sera.DecisionAccepted {
		t.Errorf("after the fix: %+v", recs[2])
	}
	assertQueueEmpty(t, f.tr, f.w.Queue())
}

func TestRunSurvivesMalformed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	ctx := context.Background()
	for _, b := range [][]byte{[]byte("garbage"), []byte(`{"v":1}`), f.sealed(f.request("ping"))} {
		if err := f.tr.Send(ctx, f.w.Queue(), b); err != nil {
			t.Fatal(err)
		}
	}
	recs := f.a.wait(t, 3)
	if recs[0].Rule != 1 || recs[1].Rule != 1 || recs[2].Decision != sera.DecisionAccepted {
		t.Errorf("audit %+v", recs)
	}
	if got := drain(t, f.tr, f.client, time.Second); len(got.replies) != 1 || got.replies[0].Status != 0 {
		t.Errorf("replies %+v", got.replies)
	}
}

func TestRunSurvivesPanic(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start(t, f.w)
	ctx := context.Background()
	for _, argv := range [][]string{{"panic"}, {"ping"}} {
		if err := f.tr.Send(ctx, f.w.Queue(), f.sealed(f.request(argv...))); err != nil {
			t.Fatal(err)
		}
	}
	recs := f.a.wait(t, 2)
	if recs[0].Exit == nil || *recs[0].Exit != 70 || recs[1].Exit == nil || *recs[1].Exit != 0 {
		t.Errorf("audit %+v", recs)
	}
	got := drain(t, f.tr, f.client, time.Second)
	if len(got.replies) != 2 || got.replies[0].Status != 70 || got.replies[1].Status != 0 {
		t.Errorf("replies %+v", got.replies)
	}
	assertQueueEmpty(t, f.tr, f.w.Queue())
}

func TestRunSetupErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	w := *f.w
	w.Replay = nil
	if err := w.Run(context.Background()); err == nil {
		t.Error("Run without a replay cache did not fail")
	}
	w = *f.w
	w.Name = "bad name"
	if err := w.Run(context.Background()); err == nil {
		t.Error("Run with a bad name did not fail")
	}
}

func TestRunStopsWhenIdle(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		f.w.PollWait = 20 * time.Second
		tr := &countingTransport{Transport: f.tr}
		f.w.Transport = tr
		stop, _ := start(t, f.w)
		advance(time.Second) // well inside the long poll
		if n := tr.receives.Load(); n != 1 {
			t.Fatalf("%d receives, want 1 long poll", n)
		}
		t0 := time.Now()
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		// In fake time any wait on a timer would show.
		if d := time.Since(t0); d != 0 {
			t.Errorf("Run took %s to return after cancel, want at once", d)
		}
	})
}

func TestRunFinishesRunningCommand(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		stop, done := start(t, f.w)
		ctx := context.Background()
		slow := f.request("sleep")
		if err := f.tr.Send(ctx, f.w.Queue(), f.sealed(slow)); err != nil {
			t.Fatal(err)
		}
		<-f.h.started
		// A request that arrives while the command runs, then the cancel.
		next := f.sealed(f.request("ping"))
		if err := f.tr.Send(ctx, f.w.Queue(), next); err != nil {
			t.Fatal(err)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		// All that runs on the cancel alone has run.
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("Run returned while a command ran")
		case <-stopped:
			t.Fatal("Run returned while a command ran")
		default:
		}
		f.h.Release()
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
		// Run has returned: the reply is already there.
		got := drain(t, f.tr, f.client, 0)
		if len(got.replies) != 1 || got.replies[0].ID != slow.ID || string(got.replies[0].Stdout) != "slept\n" {
			t.Errorf("replies %+v, want the slow command's", got.replies)
		}
		if calls := f.h.Calls(); len(calls) != 1 {
			t.Errorf("ran %q, want only the slow command", calls)
		}
		// The ping was not taken: it is still there, never received.
		msgs, err := f.tr.Receive(ctx, f.w.Queue(), 10, 0, time.Minute)
		if err != nil || len(msgs) != 1 || !bytes.Equal(msgs[0].Body, next) || msgs[0].Receives != 1 {
			t.Errorf("queue after stop: %d messages, %v", len(msgs), err)
		}
	})
}

func TestRunBacksOff(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		tr := &countingTransport{Transport: f.tr}
		tr.failReceives.Store(1 << 30)
		f.w.Transport = tr
		const minB, maxB = 20 * time.Millisecond, 80 * time.Millisecond
		f.w.MinBackoff, f.w.MaxBackoff = minB, maxB
		var mu sync.Mutex
		var polls, failed int
		f.w.OnPoll = func(s sera.WatcherStatus) {
			mu.Lock()
			defer mu.Unlock()
			polls++
			if !s.PollOK {
				failed++
			}
		}
		if err := f.tr.Send(context.Background(), f.w.Queue(), f.sealed(f.request("ping"))); err != nil {
			t.Fatal(err)
		}
		stop, _ := start(t, f.w)
		advance(time.Second)
		// Each wait after a failure is between half and all of a backoff
		// that doubles from MinBackoff up to MaxBackoff.
		times := tr.ReceiveTimes()
		if len(times) < 1000/80 || len(times) > 1+1000/10 {
			t.Errorf("%d receives in 1s with a backoff of 20 to 80 ms", len(times))
		}
		backoff := minB
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < backoff/2 || gap > backoff {
				t.Errorf("receive %d came %s after the one before, want %s to %s", i, gap, backoff/2, backoff)
			}
			backoff = min(2*backoff, maxB)
		}
		if f.h.Count() != 0 {
			t.Error("ran with the transport down")
		}
		// The transport recovers: the waiting request is served.
		tr.failReceives.Store(0)
		f.a.wait(t, 1)
		if f.h.Count() != 1 {
			t.Error("ping not served after the transport recovered")
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if failed != len(times) || polls <= failed {
			t.Errorf("OnPoll saw %d polls, %d failed; want %d failed and then some", polls, failed, len(times))
		}
	})
}

func TestRunExtendsVisibility(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		tr := &countingTransport{Transport: f.tr}
		f.w.Transport = tr
		f.w.Visibility = 300 * time.Millisecond
		start(t, f.w)
		if err := f.tr.Send(context.Background(), f.w.Queue(), f.sealed(f.request("sleep"))); err != nil {
			t.Fatal(err)
		}
		<-f.h.started
		// Extended every third of the visibility timeout.
		advance(450 * time.Millisecond)
		if n := tr.changeVis.Load(); n != 4 {
			t.Fatalf("visibility extended %d times in 450ms, want 4", n)
		}
		// Well past the first visibility timeout, no one else can take it.
		if msgs, err := f.tr.Receive(context.Background(), f.w.Queue(), 10, 0, time.Minute); err != nil || len(msgs) != 0 {
			t.Fatalf("a second receiver got %d messages while the command ran (%v)", len(msgs), err)
		}
		f.h.Release()
		recs := f.a.wait(t, 1)
		if recs[0].Decision != sera.DecisionAccepted || f.h.Count() != 1 {
			t.Errorf("audit %+v", recs)
		}
		if got := drain(t, f.tr, f.client, time.Second); len(got.replies) != 1 {
			t.Errorf("%d replies", len(got.replies))
		}
		assertQueueEmpty(t, f.tr, f.w.Queue())
		// No extension after the command ended, however long one waits.
		n := tr.changeVis.Load()
		advance(time.Second)
		if m := tr.changeVis.Load(); m != n {
			t.Errorf("visibility still extended after the command: %d then %d", n, m)
		}
	})
}

func TestHandleReplyFailure(t *testing.T) {
	t.Parallel()
	// When the reply cannot be sent, the request stays on the queue and a
	// redelivery resends the stored reply without running again.
	f := newFixture(t)
	tr := &failSendTransport{Transport: f.tr}
	f.w.Transport = tr
	tr.fail.Store(true)
	body := f.sealed(f.request("echo", "x"))
	m := f.deliver(f.w, body)
	if err := f.tr.ChangeVisibility(context.Background(), f.w.Queue(), m, 0); err != nil {
		t.Fatalf("request left the queue although no reply was sent: %v", err)
	}
	tr.fail.Store(false)
	msgs, err := f.tr.Receive(context.Background(), f.w.Queue(), 1, time.Second, time.Minute)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("redelivery: %d, %v", len(msgs), err)
	}
	f.w.Handle(context.Background(), msgs[0])
	if n := f.h.Count(); n != 1 {
		t.Errorf("ran %d times", n)
	}
	got := drain(t, f.tr, f.client, 0)
	if len(got.replies) != 1 || string(got.replies[0].Stdout) != "x\n" {
		t.Errorf("replies %+v", got.replies)
	}
	assertDeleted(t, f.tr, f.w.Queue(), msgs[0])
}

type failSendTransport struct {
	transport.Transport
	fail atomic.Bool
}

func (t *failSendTransport) Send(ctx context.Context, queue string, body []byte) error {
	if t.fail.Load() {
		return errors.New("send failed (test)")
	}
	return t.Transport.Send(ctx, queue, body)
}

// smallTransport claims a smaller message size than it takes.
type smallTransport struct {
	transport.Transport
	max int
}

func (s *smallTransport) MaxMessageSize() int { return s.max }

func TestReplySizes(t *testing.T) {
	t.Parallel()
	t.Run("too small for any reply", func(t *testing.T) {
		t.Parallel()
		// A transport too small for a reply is an error, not a panic
		// that takes the watcher down; the request stays queued.
		f := newFixture(t)
		f.w.Transport = &smallTransport{Transport: f.tr, max: 300}
		m := f.deliver(f.w, f.sealed(f.request("ping")))
		if recs := f.a.Records(); len(recs) != 1 {
			t.Fatalf("audit %+v", recs)
		}
		if err := f.tr.ChangeVisibility(context.Background(), f.w.Queue(), m, 0); err != nil {
			t.Errorf("unanswered request was deleted: %v", err)
		}
	})
	for _, max := range []int{crypto.MaxReplyOverhead + 100, 1000, 4096} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			t.Parallel()
			// Every part fits the transport, at any size that can hold
			// one.
			f := newFixture(t)
			f.h.Big = bytes.Repeat([]byte("0123456789abcdef"), 300)
			ctr := &countingTransport{Transport: &smallTransport{Transport: f.tr, max: max}}
			f.w.Transport = ctr
			f.deliver(f.w, f.sealed(f.request("big")))
			sent := ctr.Sent(f.clientQueue(f.client))
			for i, b := range sent {
				if len(b) > max {
					t.Errorf("part %d of %d is %d bytes, more than %d", i, len(sent), len(b), max)
				}
			}
			got := drain(t, f.tr, f.client, 0)
			if len(got.replies) != 1 || !bytes.Equal(got.replies[0].Stdout, f.h.Big) {
				t.Errorf("%d replies from %d parts", len(got.replies), len(sent))
			}
		})
	}
}

func TestRefusalsNeverEchoArgv(t *testing.T) {
	t.Parallel()
	// Whatever rule refuses a request, its audit record holds no argument.
	secret := []string{"user", "add", "bob", "--password-hash=SECRETVALUE"}
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		edit func(f *fixture, r *sera.Request)
		rule int
	}{
		{"lifetime", func(f *fixture, r *sera.Request) { r.ExpiresAt = r.IssuedAt.Add(48 * time.Hour) }, 4},
		{"bad time", func(f *fixture, r *sera.Request) { r.IssuedAt = time.Time{} }, 4},
		{"target", func(f *fixture, r *sera.Request) { r.Target.Names = []string{"db1"} }, 5},
		{"expired", func(f *fixture, r *sera.Request) {
			r.ExpiresAt = now.Add(-time.Second)
			r.IssuedAt = now.Add(-time.Minute)
		}, 6},
		{"future", func(f *fixture, r *sera.Request) {
			r.IssuedAt = now.Add(time.Hour)
			r.ExpiresAt = now.Add(2 * time.Hour)
		}, 6},
		{"not allowed", func(f *fixture, r *sera.Request) {
			f.removeClient("alice")
			f.addClient(f.client, "alice", "echo")
		}, 8},
		{"invalid", func(f *fixture, r *sera.Request) {}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.clock.Set(now)
			req := f.request(secret...)
			tt.edit(f, req)
			f.deliver(f.w, f.sealed(req))
			recs := f.a.Records()
			if len(recs) != 1 || recs[0].Rule != tt.rule || f.h.Count() != 0 {
				t.Fatalf("audit %+v, want rule %d", recs, tt.rule)
			}
			line, _ := json.Marshal(recs[0])
			if bytes.Contains(line, []byte("SECRETVALUE")) {
				t.Errorf("audit record echoes an argument: %s", line)
			}
		})
	}
}

// Housekeeping (closing expired firewall openings) runs at start, then
// again every period even when no request arrives, and never while a
// request is being handled.
func TestWatcherHousekeeping(t *testing.T) {
	t.Parallel()
	inFakeTime(t, func(t *testing.T, f *fixture) {
		w := f.newWatcher("web1")
		w.Now = nil // the loop's own clock: its timing is what is tested
		w.PollWait = time.Minute
		const every = 100 * time.Millisecond
		w.HousekeepingEvery = every
		var mu sync.Mutex
		var calls []time.Time
		w.Housekeeping = func(ctx context.Context) {
			mu.Lock()
			calls = append(calls, time.Now())
			mu.Unlock()
		}
		begin := time.Now()
		stop, _ := start(t, w)
		advance(550 * time.Millisecond)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(calls) < 5 {
			t.Fatalf("housekeeping ran %d times in 550 ms with a 100 ms period (poll wait 1 min), want 5 or more", len(calls))
		}
		if first := calls[0].Sub(begin); first != 0 {
			t.Errorf("first housekeeping %s after start, want at once", first)
		}
		for i := 1; i < len(calls); i++ {
			if gap := calls[i].Sub(calls[i-1]); gap > every {
				t.Errorf("housekeeping %d came %s after the one before, want at most %s", i, gap, every)
			}
		}
	})
}

// flipLast changes the last character of s to a different one of the
// same alphabet, so the edit is never a no-op (a fixed replacement
// leaves s unchanged whenever it already ends in that character).
func flipLast(s string) string {
	last := s[len(s)-1]
	repl := byte('a')
	if last == 'a' {
		repl = 'b'
	}
	return s[:len(s)-1] + string(repl)
}

// A host that cannot run a valid command line (a program missing) fails
// it, with the cause: status 1, audited as accepted with exit 1 and the
// cause, not as a refusal. Nothing runs.
func TestWatcherHostFailure(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	m := f.deliver(f.w, f.sealed(f.request("needs-visudo")))
	if calls := f.h.Calls(); len(calls) != 0 {
		t.Errorf("ran %q, want nothing", calls)
	}
	r := drain(t, f.tr, f.client, 0)
	if len(r.replies) != 1 || r.replies[0].Status != 1 || r.replies[0].Rejected != "" ||
		!strings.Contains(string(r.replies[0].Stderr), `"visudo": executable file not found`) {
		t.Fatalf("replies %+v, want one failed with the cause", r.replies)
	}
	recs := f.a.Records()
	if len(recs) != 1 || recs[0].Decision != sera.DecisionAccepted || recs[0].Rule != 0 || recs[0].Exit == nil || *recs[0].Exit != 1 ||
		!strings.Contains(recs[0].Reason, `failed on this host before it ran: exec: "visudo"`) {
		t.Errorf("audit %+v, want accepted, exit 1, the cause", recs)
	}
	assertDeleted(t, f.tr, f.w.Queue(), m)
}
