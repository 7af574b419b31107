package firewall

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera/host"
)

// These assert on the plan and the ufw argv it runs; that ufw does what
// the argv asks is proven on the real hosts of hosttest (cmd/sera's
// TestAllowOnRealHosts).

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func newTestFirewall(t *testing.T, showAdded string) (*Firewall, *host.Recorder, *host.FixedClock) {
	t.Helper()
	r := &host.Recorder{Respond: func(argv []string) ([]byte, error) {
		if slices.Equal(argv, []string{"ufw", "show", "added"}) {
			return []byte("Added user rules (see 'ufw status' for running firewall):\n" + showAdded), nil
		}
		return nil, nil
	}}
	clock := &host.FixedClock{T: t0}
	sys := host.ForTest(t.TempDir(), r, clock)
	sys.State = t.TempDir()
	return &Firewall{Sys: sys}, r, clock
}

func TestPlanAllowThenExpire(t *testing.T) {
	fw, r, _ := newTestFirewall(t, "")
	st, _ := fw.Load()
	s := Spec{Source: "203.0.113.7", Port: 22, Proto: "tcp"}
	p, noChange := fw.PlanAllow(st, nil, s, 20*time.Second, "admin")
	if noChange != "" || len(p.Steps) != 2 {
		t.Fatalf("plan %+v %q", p.Steps, noChange)
	}
	want := "ufw allow from 203.0.113.7 to any port 22 proto tcp comment 'sera "
	if !strings.HasPrefix(p.Steps[0].Desc, want) || !strings.HasSuffix(p.Steps[0].Desc, " until 2026-11-23T10:00:20Z'") {
		t.Errorf("step %q", p.Steps[0].Desc)
	}
	if calls := r.Calls(); len(calls) != 0 {
		t.Fatalf("planning ran %q", calls)
	}
	var out bytes.Buffer
	if err := p.Execute(context.Background(), &out, false, ""); err != nil {
		t.Fatal(err)
	}
	st, _ = fw.Load()
	if len(st.Openings) != 1 || !st.Openings[0].Owned || !st.Openings[0].Expires.Equal(t0.Add(20*time.Second)) {
		t.Fatalf("state %+v", st.Openings)
	}
	o := st.Openings[0]
	if calls := r.Calls(); len(calls) != 1 || calls[0] != "ufw allow from 203.0.113.7 to any port 22 proto tcp comment "+o.Comment() {
		t.Errorf("ran %q", calls)
	}

	// Not yet expired: housekeeping does nothing. Expired, with sera's
	// rule still in ufw: it is deleted with its exact comment.
	if done, err := fw.CloseExpired(context.Background(), false); err != nil || len(done) != 0 {
		t.Errorf("early close: %q %v", done, err)
	}
	fw2, r2, _ := newTestFirewall(t, "ufw allow from 203.0.113.7 to any port 22 proto tcp comment '"+o.Comment()+"'\n")
	fw2.Sys.State = fw.Sys.State
	fw2.Sys.Clock = host.FixedClock{T: t0.Add(time.Minute)}
	done, err := fw2.CloseExpired(context.Background(), false)
	if err != nil || len(done) != 1 {
		t.Fatalf("close: %q %v", done, err)
	}
	wantCalls := []string{"ufw show added", "ufw delete allow from 203.0.113.7 to any port 22 proto tcp comment " + o.Comment()}
	if calls := r2.Calls(); !slices.Equal(calls, wantCalls) {
		t.Errorf("ran %q, want %q", calls, wantCalls)
	}
	if st, _ := fw2.Load(); len(st.Openings) != 0 {
		t.Errorf("left %+v", st.Openings)
	}
}

func TestPlanAllowLeavesHandMadeRule(t *testing.T) {
	fw, _, _ := newTestFirewall(t, "")
	st, _ := fw.Load()
	s := Spec{Source: "203.0.113.0/28", Port: 22, Proto: "tcp"}
	rules := []Rule{{spec: s, comment: "office"}}
	p, _ := fw.PlanAllow(st, rules, s, time.Hour, "admin")
	for _, step := range p.Steps {
		if step.Do != nil && strings.HasPrefix(step.Desc, "ufw ") {
			t.Errorf("changes a rule sera did not add: %q", step.Desc)
		}
	}
	if q, noChange := fw.PlanDisallow(st, rules, s.Source, 0, ""); q.Changes() || !strings.Contains(noChange, "rules sera did not add, left alone") {
		t.Errorf("disallow: %+v %q", q.Steps, noChange)
	}
}

// FuzzParseSource: whatever the input, an accepted source is canonical
// (parsing it again gives itself) and never every address.
func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"203.0.113.7", "2001:db8::/48", "::ffff:10.0.0.1", "0.0.0.0/0", "10.0.0.0/8", "fe80::1%eth0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		src, err := ParseSource(s)
		if err != nil {
			return
		}
		if again, err := ParseSource(src); err != nil || again != src {
			t.Fatalf("%q: %q is not canonical (%q, %v)", s, src, again, err)
		}
		if strings.Contains(src, "/0") || src == "0.0.0.0" || src == "::" {
			t.Fatalf("%q accepted as %q", s, src)
		}
	})
}
