package admin

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
)

// TestHealthGroupsDiffer: a watcher whose own groups (from its heartbeat)
// are not those known_watchers gives it is said on stderr, with both
// sides; one whose groups agree, in another order, is not; a heartbeat
// sealed by a key the watcher no longer has counts for nothing.
func TestHealthGroupsDiffer(t *testing.T) {
	now := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	key := func() *crypto.PublicKey {
		id, err := crypto.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return id.Public()
	}
	web1, web2, db1 := key(), key(), key()
	kw := &sera.KnownWatchers{Watchers: []*sera.KnownWatcher{
		{Name: "web1", Key: web1, Groups: []string{"web"}},
		{Name: "web2", Key: web2, Groups: []string{"web", "eu"}},
		{Name: "db1", Key: db1},
	}}
	beat := func(name string, k *crypto.PublicKey, groups ...string) *sera.FleetHost {
		return &sera.FleetHost{Heartbeat: sera.Heartbeat{Watcher: name, Groups: groups, Time: now.Add(-time.Minute), IntervalSeconds: 300}, Fingerprint: k.Fingerprint()}
	}
	fleet := map[string]*sera.FleetHost{
		"web1": beat("web1", web1),              // its own SERA_GROUPS empty
		"web2": beat("web2", web2, "eu", "web"), // the same, in another order
		"db1":  beat("db1", key()),              // an old key's
	}
	rows := health(kw, fleet, now)
	var out, errOut bytes.Buffer
	printHealth(&out, &errOut, rows, false)
	if want := `sera: warning: web1's own groups (SERA_GROUPS) are "", known_watchers says "web": groups are set on both sides` + "\n"; errOut.String() != want {
		t.Errorf("stderr %q, want %q", errOut.String(), want)
	}
	states := map[string]string{}
	for _, r := range rows {
		states[r.Host] = r.State
	}
	if states["web1"] != stateOK || states["web2"] != stateOK || states["db1"] != stateNever {
		t.Errorf("states %v", states)
	}
	if !strings.Contains(out.String(), "db1 ") {
		t.Errorf("table:\n%s", out.String())
	}
}
