package commands

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sera-dev/sera/commands/cli"
)

// TestStatusHeartbeats: three watchers beat every minute; 'sera status'
// shows all three ok; one is stopped, and two intervals later it is shown
// missing while the others stay ok, and the status fails. In fake time:
// the watchers, the spool and the client all run in the bubble.
func TestStatusHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newKHFleetBeating(t, time.Minute, []string{"h1", "h2", "h3"})
		states := func(args ...string) (map[string]string, error) {
			t.Helper()
			stdout, stderr, err := f.sera(append([]string{"status", "--json"}, args...)...)
			got := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
				var r struct {
					Host, State string
					Version     string
					Interval    int64 `json:"interval_seconds"`
				}
				if err := json.Unmarshal([]byte(l), &r); err != nil {
					t.Fatalf("line %q: %v\nstderr:\n%s", l, err, stderr)
				}
				got[r.Host] = r.State
				if r.State == "ok" && r.Interval != 60 {
					t.Errorf("%s: interval %d", r.Host, r.Interval)
				}
			}
			return got, err
		}
		// Before any heartbeat: never seen, and the status says so.
		got, err := states()
		if code, _ := cli.ExitCode(err); code != cli.ExitFailure || got["h1"] != "never" {
			t.Fatalf("before heartbeats: %v, exit %d", got, code)
		}
		// The first heartbeat comes within one interval.
		advance(time.Minute + time.Second)
		got, err = states()
		if err != nil || !equalStates(got, "ok", "ok", "ok") {
			t.Fatalf("all running: %v (%v)", got, err)
		}
		f.stops["h2"]()
		advance(2*time.Minute + 2*time.Second)
		got, err = states()
		if code, _ := cli.ExitCode(err); code != cli.ExitFailure || !equalStates(got, "ok", "missing", "ok") {
			t.Fatalf("h2 stopped: %v, exit %d", got, code)
		}
		// watchers list shows what status last saw, without reading.
		stdout, _, err := f.sera("watchers", "list")
		if err != nil {
			t.Fatal(err)
		}
		for name, state := range map[string]string{"h1": "ok", "h2": "missing", "h3": "ok"} {
			if !slices.ContainsFunc(strings.Split(stdout, "\n"), func(l string) bool {
				fs := strings.Fields(l)
				return len(fs) > 2 && fs[0] == name && fs[2] == state
			}) {
				t.Errorf("watchers list lacks %s %s:\n%s", name, state, stdout)
			}
		}
	})
}

func equalStates(got map[string]string, h1, h2, h3 string) bool {
	return len(got) == 3 && got["h1"] == h1 && got["h2"] == h2 && got["h3"] == h3
}
