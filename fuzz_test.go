package sera_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
)

func equalRequest(a, b *sera.Request) bool {
	return a.ID == b.ID && a.IssuedAt.Equal(b.IssuedAt) && a.ExpiresAt.Equal(b.ExpiresAt) &&
		slices.Equal(a.Target.Names, b.Target.Names) && slices.Equal(a.Target.Groups, b.Target.Groups) &&
		a.Target.All == b.Target.All && slices.Equal(a.Argv, b.Argv) && a.ReplyTo == b.ReplyTo
}

func FuzzParseRequest(f *testing.F) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range []*sera.Request{
		{ID: strings.Repeat("ab", 16), IssuedAt: t0, ExpiresAt: t0.Add(5 * time.Minute), Target: sera.Target{Names: []string{"web1"}}, Argv: []string{"ping"}, ReplyTo: "sera-c-abcdefghijklmnop"},
		{ID: strings.Repeat("0f", 16), IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), Target: sera.Target{Names: []string{"web*", "db[12]"}, Groups: []string{"eu"}}, Argv: []string{"user", "add", "bob", "--password-hash=$6$x$y"}, ReplyTo: "q"},
		{ID: strings.Repeat("12", 16), IssuedAt: t0.In(time.FixedZone("", 3600)), ExpiresAt: t0.Add(24 * time.Hour), Target: sera.Target{All: true}, Argv: []string{"echo", "ünï", ""}, ReplyTo: "q"},
	} {
		b, err := r.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id":"abababababababababababababababab","issued_at":"2030-01-01T00:00:00.123456789+05:30","expires_at":"2030-01-01T00:00:01+05:30","target":{"names":null,"groups":[],"all":true},"argv":["ping"],"reply_to":"x"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := sera.ParseRequest(b)
		if err != nil {
			return
		}
		b2, err := r.Marshal()
		if err != nil {
			t.Fatalf("accepted request does not marshal: %v", err)
		}
		r2, err := sera.ParseRequest(b2)
		if err != nil {
			t.Fatalf("re-marshalled request %s does not parse: %v", b2, err)
		}
		if !equalRequest(r, r2) {
			t.Fatalf("request changed in a round trip:\n%+v\n%+v", r, r2)
		}
		if b3, _ := r2.Marshal(); !bytes.Equal(b2, b3) {
			t.Fatalf("encoding not stable:\n%s\n%s", b2, b3)
		}
		// What the watcher relies on, checked again.
		if len(r.ID) != 32 || len(r.Argv) == 0 || len(r.Argv) > sera.MaxArgs || !r.ExpiresAt.After(r.IssuedAt) ||
			r.ExpiresAt.Sub(r.IssuedAt) > sera.MaxRequestLifetime || r.ReplyTo == "" ||
			!r.Target.All && len(r.Target.Names)+len(r.Target.Groups) == 0 {
			t.Fatalf("accepted an invalid request: %+v", r)
		}
		_ = r.Target.Selects("web1", []string{"eu"})
		_ = r.Target.String()
	})
}

func FuzzParsePart(f *testing.F) {
	id := strings.Repeat("c3", 16)
	f.Add(sera.EncodePart(id, 0, 1, []byte(`{"id":"x"}`)))
	f.Add(sera.EncodePart(id, 3, 4, nil))
	f.Add(sera.EncodePart(id, sera.MaxReplyParts-1, sera.MaxReplyParts, []byte("data")))
	f.Add(sera.EncodePart(id, 1, 1, nil))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, part, parts, data, err := sera.ParsePart(b)
		if err != nil {
			return
		}
		if parts < 1 || parts > sera.MaxReplyParts || part < 0 || part >= parts || len(id) != 32 {
			t.Fatalf("accepted part %d of %d, id %q", part, parts, id)
		}
		if enc := sera.EncodePart(id, part, parts, data); !bytes.Equal(enc, b) {
			t.Fatalf("part re-encodes as %x, was %x", enc, b)
		}
	})
}

func FuzzSplitReply(f *testing.F) {
	f.Add([]byte("hello"), 1)
	f.Add([]byte{}, 10)
	f.Add(bytes.Repeat([]byte("x"), 1000), 7)
	f.Fuzz(func(t *testing.T, body []byte, size int) {
		if size < 1 || size > 1<<20 {
			return
		}
		parts, err := sera.SplitReply(body, size)
		if err != nil {
			if (len(body)+size-1)/size <= sera.MaxReplyParts {
				t.Fatalf("split into %d parts refused: %v", (len(body)+size-1)/size, err)
			}
			return
		}
		if len(parts) < 1 || len(parts) > sera.MaxReplyParts {
			t.Fatalf("%d parts", len(parts))
		}
		for i, p := range parts {
			if len(p) > size || len(p) == 0 && len(body) > 0 {
				t.Fatalf("part %d of %d bytes, size %d", i, len(p), size)
			}
		}
		if !bytes.Equal(bytes.Join(parts, nil), body) {
			t.Fatal("parts do not join to the body")
		}
	})
}

func FuzzParseReplyBody(f *testing.F) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range []*sera.Reply{
		{ID: strings.Repeat("ab", 16), Watcher: "web1", Status: 0, Stdout: []byte("pong\n"), Started: t0, Ended: t0.Add(time.Second)},
		{ID: strings.Repeat("cd", 16), Watcher: "web2", Status: 126, Stderr: []byte("refused\n"), Rejected: "target", Started: t0, Ended: t0},
		{ID: strings.Repeat("01", 16), Status: -1, Stdout: []byte{0, 0xff, 0x80}},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id":"abababababababababababababababab","watcher":"w","status":1,"stdout":null,"started":"2030-01-01T00:00:00+01:00","ended":"2030-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := sera.ParseReplyBody(b)
		if err != nil {
			return
		}
		b2, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("accepted reply does not marshal: %v", err)
		}
		r2, err := sera.ParseReplyBody(b2)
		if err != nil {
			t.Fatalf("re-marshalled reply %s does not parse: %v", b2, err)
		}
		if r.ID != r2.ID || r.Watcher != r2.Watcher || r.Status != r2.Status || !bytes.Equal(r.Stdout, r2.Stdout) ||
			!bytes.Equal(r.Stderr, r2.Stderr) || !r.Started.Equal(r2.Started) || !r.Ended.Equal(r2.Ended) || r.Rejected != r2.Rejected {
			t.Fatalf("reply changed in a round trip:\n%+v\n%+v", r, r2)
		}
	})
}

func FuzzParseKnownClients(f *testing.F) {
	keys := []string{"sera1notakey"}
	// Real keys, so that the corpus reaches past the key check.
	for range 2 {
		id, err := crypto.GenerateIdentity(fuzzRand{})
		if err != nil {
			f.Fatal(err)
		}
		keys = append(keys, id.Public().String())
	}
	f.Add([]byte("# c\n" + keys[1] + " alice *\n" + keys[2] + " bob user,key.add\n"))
	f.Add([]byte(keys[1] + " alice\n\n  " + keys[2] + "\tbob\tping,ping\r\n"))
	f.Add([]byte(keys[1] + " alice\n" + keys[1] + " bob\n"))
	f.Add([]byte(keys[0] + " x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		kc, err := sera.ParseKnownClients(b)
		if err != nil {
			return
		}
		out := kc.Bytes()
		kc2, err := sera.ParseKnownClients(out)
		if err != nil {
			t.Fatalf("formatted file does not parse: %v\n%s", err, out)
		}
		if !equalClients(kc, kc2) {
			t.Fatalf("clients changed in a round trip:\n%s", out)
		}
		if !bytes.Equal(kc2.Bytes(), out) {
			t.Fatal("formatting is not stable")
		}
		for i, c := range kc.Clients {
			if sera.CheckName(c.Name) != nil || kc.ByKey(c.Key) != c || kc.ByName(c.Name) != c || slices.Contains(c.Allow, sera.PingCommand) {
				t.Fatalf("client %d: %+v", i, c)
			}
		}
	})
}

// fuzzRand is a fixed, non-random byte source for seed identities.
type fuzzRand struct{}

func (fuzzRand) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return len(b), nil
}

// FuzzParseHeartbeat: whatever a watcher's heartbeat says, once opened, is
// either refused or a heartbeat whose name and groups are names, with a
// time and an interval a client can count on.
func FuzzParseHeartbeat(f *testing.F) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 3
	for _, h := range []sera.Heartbeat{
		{Watcher: "web1", Groups: []string{"web", "eu"}, Version: "v1.2.3", Time: t0, Started: t0.Add(-time.Hour), IntervalSeconds: 300, QueueDepth: &n, Openings: &n},
		{Watcher: "db1", Groups: []string{}, Time: t0, IntervalSeconds: 1},
	} {
		b, err := json.Marshal(h)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"watcher":"../x","time":"2030-01-01T00:00:00Z","interval_seconds":5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := sera.ParseHeartbeat(b)
		if err != nil {
			return
		}
		if sera.CheckName(h.Watcher) != nil || h.Time.IsZero() || h.Interval() < time.Second || h.Interval() > sera.MaxHeartbeatInterval {
			t.Fatalf("accepted %+v", h)
		}
		for _, g := range h.Groups {
			if sera.CheckName(g) != nil {
				t.Fatalf("accepted group %q", g)
			}
		}
	})
}
