package commands

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/firewall"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport/spool"
)

// fakeUFW behaves like ufw 0.36 for the commands sera runs (checked
// against the real one on the test hosts): "status", "show added", and
// "allow"/"delete allow" of rules of sera's shape, where re-adding a rule
// replaces its comment and deleting with a comment deletes only a rule
// with exactly that comment. Any other command line fails: the tests pin
// the exact argv.
type fakeUFW struct {
	mu       sync.Mutex
	missing  bool
	inactive bool
	// failAllow makes "ufw allow" fail.
	failAllow bool
	rules     []fakeRule
	calls     [][]string
}

type fakeRule struct{ spec, comment string }

func (f *fakeUFW) Calls() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeUFW) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// addHandMade adds a rule as an admin would, by hand.
func (f *fakeUFW) addHandMade(spec, comment string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, fakeRule{spec, comment})
}

// setComment re-adds a rule by hand with another comment: ufw replaces
// the comment.
func (f *fakeUFW) setComment(spec, comment string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.rules {
		if f.rules[i].spec == spec {
			f.rules[i].comment = comment
		}
	}
}

func (f *fakeUFW) showAdded() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.showAddedLocked()
}

func (f *fakeUFW) showAddedLocked() string {
	var b strings.Builder
	b.WriteString("Added user rules (see 'ufw status' for running firewall):\n")
	if len(f.rules) == 0 {
		b.WriteString("(None)\n")
	}
	for _, r := range f.rules {
		b.WriteString("ufw allow " + r.spec)
		if r.comment != "" {
			b.WriteString(" comment '" + r.comment + "'")
		}
		b.WriteString("\n")
	}
	return b.String()
}

var fakeSpecRE = regexp.MustCompile(`^from [0-9a-f.:/]+ to any port [0-9]+ proto (tcp|udp)$`)

func (f *fakeUFW) Run(_ context.Context, argv ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, slices.Clone(argv))
	if f.missing {
		return nil, fmt.Errorf("%s failed: %w", argv[0], &exec.Error{Name: argv[0], Err: exec.ErrNotFound})
	}
	if len(argv) == 0 || argv[0] != "ufw" {
		return nil, fmt.Errorf("fake runner: unexpected command %q", argv)
	}
	args := argv[1:]
	switch {
	case slices.Equal(args, []string{"status"}):
		if f.inactive {
			return []byte("Status: inactive\n"), nil
		}
		return []byte("Status: active\n\nTo                         Action      From\n--                         ------      ----\n"), nil
	case slices.Equal(args, []string{"show", "added"}):
		return []byte(f.showAddedLocked()), nil
	}
	del := len(args) > 0 && args[0] == "delete"
	if del {
		args = args[1:]
	}
	var comment string
	hasComment := false
	if n := len(args); n >= 2 && args[n-2] == "comment" {
		comment, hasComment = args[n-1], true
		args = args[:n-2]
	}
	if len(args) < 1 || args[0] != "allow" || !fakeSpecRE.MatchString(strings.Join(args[1:], " ")) {
		return nil, fmt.Errorf("fake runner: unexpected command %q", argv)
	}
	spec := strings.Join(args[1:], " ")
	i := slices.IndexFunc(f.rules, func(r fakeRule) bool { return r.spec == spec })
	if del {
		if i < 0 || (hasComment && f.rules[i].comment != comment) {
			return []byte("Could not delete non-existent rule\n"), nil
		}
		f.rules = slices.Delete(f.rules, i, i+1)
		return []byte("Rule deleted\n"), nil
	}
	if f.failAllow {
		return nil, fmt.Errorf("ufw failed: exit status 1: ERROR: problem running iptables")
	}
	switch {
	case i < 0:
		f.rules = append(f.rules, fakeRule{spec, comment})
		return []byte("Rule added\n"), nil
	case f.rules[i].comment == comment:
		return []byte("Skipping adding existing rule\n"), nil
	default:
		f.rules[i].comment = comment
		return []byte("Rule updated\n"), nil
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var allowT0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func newAllowHost(t *testing.T) (*Host, *fakeUFW, *fakeClock) {
	t.Helper()
	f := &fakeUFW{}
	clock := &fakeClock{now: allowT0}
	return &Host{Name: "web1", Sys: &host.System{Exec: f, Clock: host.ClockFunc(clock.Now), Net: host.NoNet{}, State: t.TempDir()}}, f, clock
}

// runAllow runs argv as the watcher does, for client "admin".
func runAllow(h *Host, argv ...string) sera.Result {
	ctx := context.Background()
	hd := &Handler{Host: h}
	if _, err := hd.Resolve(argv); err != nil {
		code, _ := cli.ExitCode(err)
		return sera.Result{Status: code, Stderr: []byte("sera: " + err.Error() + "\n")}
	}
	return hd.Run(ctx, &sera.Call{Argv: argv, Client: &sera.KnownClient{Name: "admin", Allow: []string{sera.AllowAll}}})
}

func mustAllow(t *testing.T, h *Host, argv ...string) string {
	t.Helper()
	res := runAllow(h, argv...)
	if res.Status != 0 {
		t.Fatalf("%q: status %d\nstdout: %s\nstderr: %s", argv, res.Status, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

func readAllowState(t *testing.T, h *Host) *firewall.State {
	t.Helper()
	st, err := firewallOf(h).Load()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func joinCalls(calls [][]string) []string {
	var out []string
	for _, c := range calls {
		out = append(out, strings.Join(c, " "))
	}
	return out
}

func checkUFWCalls(t *testing.T, f *fakeUFW, want ...string) {
	t.Helper()
	got := joinCalls(f.Calls())
	if !slices.Equal(got, want) {
		t.Errorf("ufw calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseSource(t *testing.T) {
	good := map[string]string{
		"203.0.113.7":         "203.0.113.7",
		"203.0.113.0/28":      "203.0.113.0/28",
		"203.0.113.7/32":      "203.0.113.7",
		"10.1.0.0/16":         "10.1.0.0/16",
		"::ffff:203.0.113.7":  "203.0.113.7",
		"::ffff:10.1.0.0/112": "10.1.0.0/16",
		"2001:db8:0:0::1":     "2001:db8::1",
		"2001:DB8::1/128":     "2001:db8::1",
		"2001:db8:7::/48":     "2001:db8:7::/48",
		"2001:db8:7:1::/64":   "2001:db8:7:1::/64",
		"127.0.0.1":           "127.0.0.1",
	}
	for in, want := range good {
		got, err := parseSource(in)
		if err != nil || got != want {
			t.Errorf("parseSource(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                  "no address",
		"any":               "never to every address",
		"ANY":               "never to every address",
		"0.0.0.0/0":         "never to every address",
		"::/0":              "never to every address",
		"::ffff:0.0.0.0/96": "never to every address",
		"0.0.0.0":           "every address",
		"::":                "every address",
		"10.0.0.5/24":       "host bits are set; the network is 10.0.0.0/24",
		"2001:db8::1/64":    "the network is 2001:db8::/64",
		"10.0.0.0/8":        "wider than /16",
		"10.0.0.0/15":       "wider than /16",
		"2001:db8::/32":     "wider than /48",
		"1.2.3":             "not an IP address",
		"1.2.3.4.5":         "not an IP address",
		"01.2.3.4":          "not an IP address",
		" 1.2.3.4":          "not an IP address",
		"1.2.3.4/33":        "not an IP address",
		"1.2.3.4/":          "not an IP address",
		"example.com":       "not an IP address",
		"-1.2.3.4":          "not an IP address",
		"1.2.3.4;reboot":    "not an IP address",
		"fe80::1%eth0":      "zone",
		"224.0.0.1":         "not a unicast address",
		"255.255.255.255":   "not a unicast address",
		"ff02::1":           "not a unicast address",
		"::ffff:1.2.3.4/64": "IPv4-mapped",
	}
	for in, want := range bad {
		got, err := parseSource(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "nothing was changed") {
			t.Errorf("parseSource(%q) = %q, %v; want an error containing %q", in, got, err, want)
			continue
		}
		if code, _ := cli.ExitCode(err); code != cli.ExitUsage {
			t.Errorf("parseSource(%q): exit %d, want usage", in, code)
		}
	}
}

// Every bad input is refused by the watcher's own validation (Resolve),
// before anything runs.
func TestAllowResolve(t *testing.T) {
	h, f, _ := newAllowHost(t)
	env := map[string]string{"SERA_HOME": t.TempDir(), settings.KeyAllowMax: "2h", settings.KeyAllowDefault: "30m"}
	cfg, err := settings.Load(settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: t.TempDir()}, false)
	if err != nil {
		t.Fatal(err)
	}
	h.Config = cfg
	hd := &Handler{Host: h}
	tests := []struct {
		argv    []string
		wantErr string
	}{
		{[]string{"allow", "--", "203.0.113.7"}, ""},
		{[]string{"allow", "--port=443", "--proto=udp", "--for=2h", "--", "2001:db8::/64"}, ""},
		{[]string{"allow", "--list"}, ""},
		{[]string{"allow", "--list", "--json"}, ""},
		{[]string{"disallow", "--", "203.0.113.7"}, ""},
		{[]string{"disallow", "--port=443", "--proto=udp", "--", "203.0.113.7"}, ""},

		{[]string{"allow"}, "no address"},
		{[]string{"disallow"}, "no address"},
		{[]string{"allow", "--", "203.0.113.7", "203.0.113.8"}, "give one address"},
		{[]string{"allow", "--", "0.0.0.0/0"}, "never to every address"},
		{[]string{"allow", "--", "::/0"}, "never to every address"},
		{[]string{"allow", "--", "any"}, "never to every address"},
		{[]string{"allow", "--", "10.0.0.5/24"}, "the network is 10.0.0.0/24"},
		{[]string{"allow", "--", "10.0.0.0/8"}, "wider than /16"},
		{[]string{"allow", "--", "nonsense"}, "not an IP address"},
		{[]string{"allow", "--for=3h", "--", "203.0.113.7"}, "SERA_ALLOW_MAX (2h)"},
		{[]string{"allow", "--for=0s", "--", "203.0.113.7"}, "must be positive"},
		{[]string{"allow", "--for=-5m", "--", "203.0.113.7"}, "must be positive"},
		{[]string{"allow", "--for=soon", "--", "203.0.113.7"}, "invalid argument"},
		{[]string{"allow", "--port=0", "--", "203.0.113.7"}, "invalid --port 0"},
		{[]string{"allow", "--port=65536", "--", "203.0.113.7"}, "invalid --port 65536"},
		{[]string{"allow", "--proto=icmp", "--", "203.0.113.7"}, "invalid --proto"},
		{[]string{"allow", "--proto=TCP", "--", "203.0.113.7"}, "invalid --proto"},
		{[]string{"allow", "--json", "--", "203.0.113.7"}, "--json goes with --list"},
		{[]string{"allow", "--list", "--", "203.0.113.7"}, "--list takes no address"},
		{[]string{"allow", "--list", "--for=1h"}, "takes no --for"},
		{[]string{"allow", "--ip=203.0.113.7"}, "unknown flag: --ip"},
		{[]string{"disallow", "--port=99999", "--", "203.0.113.7"}, "invalid --port"},
		{[]string{"disallow", "--", "0.0.0.0/0"}, "never to every address"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.argv, " "), func(t *testing.T) {
			_, err := hd.Resolve(tt.argv)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
			// (Flag syntax errors are cobra's own; Run makes them usage
			// errors.)
			if tt.wantErr != "" && !strings.Contains(tt.wantErr, "flag") && !strings.Contains(tt.wantErr, "invalid argument") {
				if code, _ := cli.ExitCode(err); code != cli.ExitUsage {
					t.Errorf("exit %d, want %d (usage)", code, cli.ExitUsage)
				}
			}
		})
	}
	if c := f.Calls(); len(c) != 0 {
		t.Errorf("Resolve ran %q", c)
	}
	// Run checks too, for callers that skip Resolve (--local).
	res := hd.Run(context.Background(), &sera.Call{Argv: []string{"allow", "--for=3h", "--", "203.0.113.7"}})
	if res.Status != cli.ExitUsage || !strings.Contains(string(res.Stderr), "SERA_ALLOW_MAX") {
		t.Errorf("run with --for over the max: status %d, stderr %s", res.Status, res.Stderr)
	}
	if _, err := os.Stat(firewallOf(h).StatePath()); !os.IsNotExist(err) {
		t.Errorf("state file written by refused requests: %v", err)
	}
}

// The life of one opening: dry run, open, extend, no duplicate, list,
// expiry by the housekeeper on a fake clock.
func TestAllowOpenExtendExpire(t *testing.T) {
	h, f, clock := newAllowHost(t)
	spec := "from 203.0.113.7 to any port 22 proto tcp"
	until := allowT0.Add(20 * time.Second).Format(time.RFC3339)

	// --dry-run: the exact ufw command, nothing done.
	out := mustAllow(t, h, "allow", "--for=20s", "--dry-run", "--", "203.0.113.7")
	dryRE := regexp.MustCompile(`(?m)^would: ufw allow from 203\.0\.113\.7 to any port 22 proto tcp comment 'sera [0-9a-f]{16} until ` + until + `'$`)
	if !dryRE.MatchString(out) || !strings.Contains(out, "note: 203.0.113.7 to port 22/tcp open until "+until+" (for 20s)") {
		t.Errorf("dry run:\n%s", out)
	}
	checkUFWCalls(t, f, "ufw status", "ufw show added")
	if _, err := os.Stat(firewallOf(h).StatePath()); !os.IsNotExist(err) {
		t.Errorf("dry run wrote the state: %v", err)
	}
	if len(f.rules) != 0 {
		t.Fatalf("dry run added rules: %v", f.rules)
	}

	// Open.
	f.reset()
	out = mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.7")
	st := readAllowState(t, h)
	if len(st.Openings) != 1 {
		t.Fatalf("state: %+v", st)
	}
	o := st.Openings[0]
	comment := "sera " + o.ID + " until " + until
	checkUFWCalls(t, f, "ufw status", "ufw show added", "ufw allow "+spec+" comment "+comment)
	if !strings.Contains(out, "done: ufw allow "+spec+" comment '"+comment+"'\n") {
		t.Errorf("stdout:\n%s", out)
	}
	if o.Source != "203.0.113.7" || o.Port != 22 || o.Proto != "tcp" || !o.Owned || !o.Expires.Equal(allowT0.Add(20*time.Second)) || o.By != "admin" {
		t.Errorf("opening %+v", o)
	}
	if fi, err := os.Stat(firewallOf(h).StatePath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file: %v, %v", fi.Mode(), err)
	}
	if got := f.showAdded(); !strings.Contains(got, "ufw allow "+spec+" comment '"+comment+"'\n") {
		t.Errorf("ufw rules:\n%s", got)
	}

	// Again 5 s later, as long: extended, the comment follows, one rule.
	clock.advance(5 * time.Second)
	f.reset()
	out = mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.7")
	until2 := allowT0.Add(25 * time.Second).Format(time.RFC3339)
	comment2 := "sera " + o.ID + " until " + until2
	checkUFWCalls(t, f, "ufw status", "ufw show added", "ufw allow "+spec+" comment "+comment2)
	if !strings.Contains(out, "note: extends opening "+o.ID+": open until "+until2+" (was until "+until+")") {
		t.Errorf("extension:\n%s", out)
	}
	if len(f.rules) != 1 || f.rules[0].comment != comment2 {
		t.Errorf("ufw rules after extension: %+v", f.rules)
	}
	if st := readAllowState(t, h); len(st.Openings) != 1 || !st.Openings[0].Expires.Equal(allowT0.Add(25*time.Second)) || st.Openings[0].ID != o.ID {
		t.Errorf("state after extension: %+v", st.Openings[0])
	}

	// A shorter one changes nothing: sera never shortens.
	f.reset()
	before := readAllowState(t, h)
	out = mustAllow(t, h, "allow", "--for=5s", "--", "203.0.113.7")
	if !strings.Contains(out, "already open until "+until2+" (20s left); nothing was changed") {
		t.Errorf("shorter allow:\n%s", out)
	}
	checkUFWCalls(t, f, "ufw status", "ufw show added")
	if after := readAllowState(t, h); !slices.EqualFunc(before.Openings, after.Openings, func(a, b *firewall.Opening) bool { return *a == *b }) {
		t.Errorf("state changed: %+v", after.Openings[0])
	}

	// list, text and JSON.
	out = mustAllow(t, h, "allow", "--list")
	if !regexp.MustCompile(`(?m)^203\.0\.113\.7 +22/tcp +` + until2 + ` +20s +sera +admin +` + o.ID + `$`).MatchString(out) {
		t.Errorf("list:\n%s", out)
	}
	out = mustAllow(t, h, "allow", "--list", "--json")
	var info firewall.OpeningInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.SecondsLeft != 20 || info.Rule != "sera" || info.ID != o.ID || !info.Owned {
		t.Errorf("list --json: %s (%v)", out, err)
	}

	// Housekeeping before the expiry reads the state only.
	var logBuf bytes.Buffer
	hk := Housekeeper(h, slog.New(slog.NewTextHandler(&logBuf, nil)))
	hk(context.Background()) // first run: looks for lost records too
	clock.advance(19 * time.Second)
	f.reset()
	hk(context.Background())
	checkUFWCalls(t, f)
	// At the expiry: exactly sera's rule goes, with its comment.
	clock.advance(time.Second)
	hk(context.Background())
	checkUFWCalls(t, f, "ufw show added", "ufw delete allow "+spec+" comment "+comment2)
	if len(f.rules) != 0 {
		t.Errorf("rules after expiry: %+v", f.rules)
	}
	if st := readAllowState(t, h); len(st.Openings) != 0 {
		t.Errorf("state after expiry: %+v", st.Openings)
	}
	if !strings.Contains(logBuf.String(), "expired at "+until2) {
		t.Errorf("log:\n%s", logBuf.String())
	}
	f.reset()
	hk(context.Background())
	checkUFWCalls(t, f)
	if out := mustAllow(t, h, "allow", "--list"); out != "no open rules\n" {
		t.Errorf("list after expiry: %q", out)
	}
}

// The default lifetime is the watcher's SERA_ALLOW_DEFAULT, cut to its
// SERA_ALLOW_MAX.
func TestAllowDefaultLifetime(t *testing.T) {
	for _, tt := range []struct {
		def, max string
		want     time.Duration
	}{
		{"", "", time.Hour},
		{"10m", "", 10 * time.Minute},
		{"48h", "2h", 2 * time.Hour},
	} {
		h, _, _ := newAllowHost(t)
		env := map[string]string{"SERA_HOME": t.TempDir(), settings.KeyAllowDefault: tt.def, settings.KeyAllowMax: tt.max}
		cfg, err := settings.Load(settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: t.TempDir()}, false)
		if err != nil {
			t.Fatal(err)
		}
		h.Config = cfg
		mustAllow(t, h, "allow", "--", "203.0.113.7")
		if st := readAllowState(t, h); !st.Openings[0].Expires.Equal(allowT0.Add(tt.want)) {
			t.Errorf("default %q max %q: expires %s, want +%s", tt.def, tt.max, st.Openings[0].Expires, tt.want)
		}
	}
}

// A rule that was in ufw before sera is recorded, never changed or
// deleted: not by disallow, not at expiry.
func TestAllowHandMadeRule(t *testing.T) {
	h, f, clock := newAllowHost(t)
	spec := "from 203.0.113.0/28 to any port 22 proto tcp"
	f.addHandMade(spec, "office")
	f.reset()
	out := mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.0/28")
	checkUFWCalls(t, f, "ufw status", "ufw show added")
	if !strings.Contains(out, `ufw already has a rule 203.0.113.0/28 to port 22/tcp that sera did not add (comment "office")`) {
		t.Errorf("stdout:\n%s", out)
	}
	st := readAllowState(t, h)
	if len(st.Openings) != 1 || st.Openings[0].Owned {
		t.Fatalf("state: %+v", st.Openings)
	}
	out = mustAllow(t, h, "allow", "--for=10s", "--", "203.0.113.0/28")
	if !strings.Contains(out, "already allowed by a ufw rule sera did not add") {
		t.Errorf("second allow:\n%s", out)
	}
	if out := mustAllow(t, h, "allow", "--list"); !strings.Contains(out, " not-sera ") {
		t.Errorf("list:\n%s", out)
	}

	// disallow forgets the record, leaves the rule.
	f.reset()
	out = mustAllow(t, h, "disallow", "--", "203.0.113.0/28")
	checkUFWCalls(t, f, "ufw show added")
	if !strings.Contains(out, "its rule is not sera's and stays in place") {
		t.Errorf("disallow:\n%s", out)
	}
	// Expiry: the same.
	mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.0/28")
	clock.advance(time.Minute)
	f.reset()
	Housekeeper(h, nil)(context.Background())
	checkUFWCalls(t, f, "ufw show added")
	if len(f.rules) != 1 || f.rules[0] != (fakeRule{spec, "office"}) {
		t.Errorf("hand-made rule changed: %+v", f.rules)
	}
	if st := readAllowState(t, h); len(st.Openings) != 0 {
		t.Errorf("state: %+v", st.Openings)
	}
	// And when nothing of sera's is left, disallow says what is there.
	out = mustAllow(t, h, "disallow", "--", "203.0.113.0/28")
	if !strings.Contains(out, "no opening from 203.0.113.0/28 on this host; nothing was changed (ufw has rules sera did not add, left alone: 203.0.113.0/28 to port 22/tcp)") {
		t.Errorf("disallow:\n%s", out)
	}
}

// An admin who adds sera's rule again by hand (ufw then drops sera's
// comment) takes it over: sera does not delete it at expiry.
func TestAllowRuleTakenOverByHand(t *testing.T) {
	h, f, clock := newAllowHost(t)
	spec := "from 203.0.113.7 to any port 22 proto tcp"
	mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.7")
	f.setComment(spec, "")
	clock.advance(time.Minute)
	var logBuf bytes.Buffer
	f.reset()
	Housekeeper(h, slog.New(slog.NewTextHandler(&logBuf, nil)))(context.Background())
	checkUFWCalls(t, f, "ufw show added")
	if len(f.rules) != 1 {
		t.Errorf("rules: %+v", f.rules)
	}
	if !strings.Contains(logBuf.String(), "no longer sera's") {
		t.Errorf("log:\n%s", logBuf.String())
	}
	// The rule sera recorded is gone from ufw: allow adds it again.
	h2, f2, _ := newAllowHost(t)
	mustAllow(t, h2, "allow", "--for=20s", "--", "203.0.113.7")
	id := readAllowState(t, h2).Openings[0].ID
	f2.rules = nil
	f2.reset()
	out := mustAllow(t, h2, "allow", "--for=20s", "--", "203.0.113.7")
	checkUFWCalls(t, f2, "ufw status", "ufw show added", "ufw allow "+spec+" comment sera "+id+" until "+allowT0.Add(20*time.Second).Format(time.RFC3339))
	if !strings.Contains(out, "done: ufw allow") {
		t.Errorf("re-add:\n%s", out)
	}
}

// The watcher was stopped over the expiry: its first housekeeping pass
// closes the opening. Rules of sera's whose record was lost are closed
// at the time in their comment, or recorded again.
func TestHousekeeperAfterRestart(t *testing.T) {
	h, f, clock := newAllowHost(t)
	mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.7")
	lost := "sera 00000000000000aa until " + allowT0.Add(10*time.Second).Format(time.RFC3339)
	kept := "sera 00000000000000bb until " + allowT0.Add(time.Hour).Format(time.RFC3339)
	f.addHandMade("from 198.51.100.1 to any port 22 proto tcp", lost)
	f.addHandMade("from 198.51.100.2 to any port 443 proto tcp", kept)
	f.addHandMade("from 198.51.100.3 to any port 22 proto tcp", "")
	clock.advance(5 * time.Minute) // the watcher was stopped
	f.reset()
	var logBuf bytes.Buffer
	Housekeeper(h, slog.New(slog.NewTextHandler(&logBuf, nil)))(context.Background())
	calls := joinCalls(f.Calls())
	if len(calls) != 3 || calls[0] != "ufw show added" ||
		!strings.HasPrefix(calls[1], "ufw delete allow from 203.0.113.7 to any port 22 proto tcp comment sera ") ||
		calls[2] != "ufw delete allow from 198.51.100.1 to any port 22 proto tcp comment "+lost {
		t.Errorf("calls:\n%s", strings.Join(calls, "\n"))
	}
	wantRules := []fakeRule{{"from 198.51.100.2 to any port 443 proto tcp", kept}, {"from 198.51.100.3 to any port 22 proto tcp", ""}}
	if !slices.Equal(f.rules, wantRules) {
		t.Errorf("rules: %+v", f.rules)
	}
	st := readAllowState(t, h)
	if len(st.Openings) != 1 || st.Openings[0].ID != "00000000000000bb" || !st.Openings[0].Owned || !st.Openings[0].Expires.Equal(allowT0.Add(time.Hour)) {
		t.Errorf("state: %+v", st.Openings)
	}
	if logBuf.Len() == 0 || strings.Contains(logBuf.String(), "WARN") {
		t.Errorf("log:\n%s", logBuf.String())
	}
}

// A corrupt state file does not keep ports open: sera's rules close at
// the time in their comment; the file is left for the admin.
func TestHousekeeperCorruptState(t *testing.T) {
	h, f, clock := newAllowHost(t)
	mustAllow(t, h, "allow", "--for=20s", "--", "203.0.113.7")
	if err := os.WriteFile(firewallOf(h).StatePath(), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	hk := Housekeeper(h, nil)
	hk(context.Background()) // not yet expired: nothing
	if len(f.rules) != 1 {
		t.Fatalf("rules: %+v", f.rules)
	}
	clock.advance(21 * time.Second)
	var logBuf bytes.Buffer
	Housekeeper(h, slog.New(slog.NewTextHandler(&logBuf, nil)))(context.Background())
	if len(f.rules) != 0 {
		t.Errorf("rules: %+v", f.rules)
	}
	if b, _ := os.ReadFile(firewallOf(h).StatePath()); string(b) != "{not json" {
		t.Errorf("corrupt state rewritten: %q", b)
	}
	if !strings.Contains(logBuf.String(), "is corrupt") {
		t.Errorf("log:\n%s", logBuf.String())
	}
	res := runAllow(h, "allow", "--", "203.0.113.7")
	if res.Status == 0 || !strings.Contains(string(res.Stderr), "is corrupt") {
		t.Errorf("allow with a corrupt state: %d %s", res.Status, res.Stderr)
	}
}

func TestAllowUFWNotUsable(t *testing.T) {
	h, f, _ := newAllowHost(t)
	f.inactive = true
	res := runAllow(h, "allow", "--", "203.0.113.7")
	if res.Status != cli.ExitFailure || !strings.Contains(string(res.Stderr), "ufw is inactive on this host (sera never enables ufw") ||
		!strings.Contains(string(res.Stderr), "sera never enables ufw") {
		t.Errorf("inactive: %d %s", res.Status, res.Stderr)
	}
	checkUFWCalls(t, f, "ufw status")
	if _, err := os.Stat(firewallOf(h).StatePath()); !os.IsNotExist(err) {
		t.Errorf("state written: %v", err)
	}

	f.inactive, f.missing = false, true
	for _, argv := range [][]string{{"allow", "--", "203.0.113.7"}, {"disallow", "--", "203.0.113.7"}} {
		res = runAllow(h, argv...)
		if res.Status != cli.ExitFailure || !strings.Contains(string(res.Stderr), "ufw is not installed on this host (apt-get install ufw); nothing was changed") {
			t.Errorf("%q with ufw missing: %d %s", argv, res.Status, res.Stderr)
		}
	}
	// The watcher's housekeeping on a host without ufw stays quiet.
	var logBuf bytes.Buffer
	Housekeeper(h, slog.New(slog.NewTextHandler(&logBuf, nil)))(context.Background())
	if logBuf.Len() != 0 {
		t.Errorf("log:\n%s", logBuf.String())
	}

	// ufw fails to add: the record is undone.
	f.missing, f.failAllow = false, true
	res = runAllow(h, "allow", "--", "203.0.113.7")
	if res.Status != cli.ExitFailure || !strings.Contains(string(res.Stderr), "problem running iptables") || !strings.Contains(string(res.Stderr), "nothing was changed") {
		t.Errorf("failing ufw: %d %s", res.Status, res.Stderr)
	}
	if st := readAllowState(t, h); len(st.Openings) != 0 {
		t.Errorf("state after a failed add: %+v", st.Openings)
	}
}

func TestDisallow(t *testing.T) {
	h, f, _ := newAllowHost(t)
	mustAllow(t, h, "allow", "--for=1h", "--", "203.0.113.7")
	mustAllow(t, h, "allow", "--for=1h", "--port=443", "--", "203.0.113.7")
	mustAllow(t, h, "allow", "--for=1h", "--port=53", "--proto=udp", "--", "203.0.113.7")
	mustAllow(t, h, "allow", "--for=1h", "--", "198.51.100.9")
	st := readAllowState(t, h)
	comment443 := st.Find(firewall.Spec{Source: "203.0.113.7", Port: 443, Proto: "tcp"}).Comment()

	// --dry-run: the exact command, nothing done.
	f.reset()
	out := mustAllow(t, h, "disallow", "--port=443", "--dry-run", "--", "203.0.113.7")
	if out != "would: ufw delete allow from 203.0.113.7 to any port 443 proto tcp comment '"+comment443+"'\n" {
		t.Errorf("dry run: %q", out)
	}
	checkUFWCalls(t, f, "ufw show added")
	if len(f.rules) != 4 {
		t.Fatalf("dry run changed the rules: %+v", f.rules)
	}

	out = mustAllow(t, h, "disallow", "--port=443", "--", "203.0.113.7")
	if out != "done: ufw delete allow from 203.0.113.7 to any port 443 proto tcp comment '"+comment443+"'\n" {
		t.Errorf("disallow --port: %q", out)
	}
	out = mustAllow(t, h, "disallow", "--port=443", "--", "203.0.113.7")
	if out != "no opening from 203.0.113.7 to port 443 on this host; nothing was changed\n" {
		t.Errorf("disallow again: %q", out)
	}
	out = mustAllow(t, h, "disallow", "--proto=tcp", "--", "203.0.113.7")
	if strings.Count(out, "done: ufw delete") != 1 || !strings.Contains(out, "port 22 proto tcp") {
		t.Errorf("disallow --proto tcp: %q", out)
	}
	out = mustAllow(t, h, "disallow", "--", "203.0.113.7")
	if strings.Count(out, "done: ufw delete") != 1 || !strings.Contains(out, "port 53 proto udp") {
		t.Errorf("disallow: %q", out)
	}
	if len(f.rules) != 1 || !strings.HasPrefix(f.rules[0].spec, "from 198.51.100.9 ") {
		t.Errorf("rules left: %+v", f.rules)
	}
	if st := readAllowState(t, h); len(st.Openings) != 1 || st.Openings[0].Source != "198.51.100.9" {
		t.Errorf("state left: %+v", st.Openings)
	}
}

// ipServer answers the address look-up; hits counts its requests.
func ipServer(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestFetchPublicAddr(t *testing.T) {
	srv, _ := ipServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v4":
			fmt.Fprint(w, "203.0.113.9\n")
		case "/v6":
			fmt.Fprint(w, "  2001:db8::9 \r\n")
		case "/mapped":
			fmt.Fprint(w, "::ffff:203.0.113.9")
		case "/html":
			fmt.Fprint(w, "<html>203.0.113.9</html>")
		case "/any":
			fmt.Fprint(w, "0.0.0.0")
		case "/cidr":
			fmt.Fprint(w, "203.0.113.0/24")
		case "/long":
			fmt.Fprint(w, strings.Repeat(" ", 300)+"203.0.113.9")
		case "/down":
			http.Error(w, "down", http.StatusServiceUnavailable)
		case "/to-http":
			http.Redirect(w, r, "http://"+r.Host+"/v4", http.StatusFound)
		case "/to-https":
			http.Redirect(w, r, "/v4", http.StatusFound)
		}
	})
	good := map[string]string{"/v4": "203.0.113.9", "/v6": "2001:db8::9", "/mapped": "203.0.113.9", "/to-https": "203.0.113.9"}
	for p, want := range good {
		if got, err := fetchPublicAddr(context.Background(), srv.Client().Transport, srv.URL+p); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", p, got, err, want)
		}
	}
	bad := map[string]string{
		"/html":    "is not an IP address",
		"/any":     "every address",
		"/cidr":    "is not an IP address",
		"/long":    "too long",
		"/down":    "503 Service Unavailable",
		"/to-http": "not https",
	}
	for p, want := range bad {
		if got, err := fetchPublicAddr(context.Background(), srv.Client().Transport, srv.URL+p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q, %v; want an error containing %q", p, got, err, want)
		}
	}
	for _, u := range []string{"http://" + strings.TrimPrefix(srv.URL, "https://") + "/v4", "", "ftp://x/"} {
		if _, err := fetchPublicAddr(context.Background(), srv.Client().Transport, u); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

// The client resolves "no address" before it sends: against a real
// watcher over a spool, with the look-up on a TLS server on loopback.
func TestAllowClientEndToEnd(t *testing.T) {
	srv, hits := ipServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "203.0.113.9\n") })
	dir := t.TempDir()
	env := map[string]string{
		"SERA_HOME": filepath.Join(dir, "client"), "SERA_STATE": filepath.Join(dir, "client-state"),
		"SERA_SPOOL": filepath.Join(dir, "spool"), settings.KeyIPURL: srv.URL + "/ip",
	}
	senv := settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: dir, Hostname: "laptop"}
	// The laptop trusts the test's TLS server for the look-up.
	laptop := host.Real(env["SERA_STATE"])
	laptop.HTTP = srv.Client()
	client := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		root := NewRoot(&cli.Options{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, Env: senv, Host: laptop})
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		return stdout.String(), stderr.String(), err
	}
	if _, errOut, err := client("keygen"); err != nil {
		t.Fatal(err, errOut)
	}
	b, err := os.ReadFile(filepath.Join(dir, "client", "key"))
	if err != nil {
		t.Fatal(err)
	}
	clientID, err := crypto.ParseIdentityFile(b)
	if err != nil {
		t.Fatal(err)
	}
	watcherID, err := crypto.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := client("watchers", "add", "web1", watcherID.Public().String()); err != nil {
		t.Fatal(err, errOut)
	}

	h, f, _ := newAllowHost(t)
	h.Sys.Clock = host.ClockFunc(time.Now) // the request's lifetime is checked on the real clock
	knownClients := filepath.Join(dir, "known_clients")
	kc := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: clientID.Public(), Name: "admin", Allow: []string{sera.AllowAll}}}}
	if err := os.WriteFile(knownClients, kc.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	replay, err := sera.OpenReplayCache(filepath.Join(dir, "replay"))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := spool.New(env["SERA_SPOOL"])
	if err != nil {
		t.Fatal(err)
	}
	w := &sera.Watcher{
		Identity: watcherID, Name: "web1", Prefix: "sera", Transport: tr,
		Clients: &sera.ClientFile{Path: knownClients}, Handler: &Handler{Host: h}, Replay: replay,
		Audit: &sera.AuditLog{Path: filepath.Join(dir, "audit.log")}, PollWait: 100 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	out, errOut, err := client("allow", "--for=20s", "--to", "web1")
	if err != nil {
		t.Fatalf("allow: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	if want := "using your address 203.0.113.9 (from " + srv.URL + "/ip)\n"; !strings.HasPrefix(errOut, want) {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
	if !strings.Contains(out, "done: ufw allow from 203.0.113.9 to any port 22 proto tcp comment 'sera ") {
		t.Errorf("stdout:\n%s", out)
	}
	if hits.Load() != 1 {
		t.Errorf("%d look-ups", hits.Load())
	}
	// --ip and an argument are not looked up; --list neither.
	out, _, err = client("allow", "--ip", "198.51.100.4", "--for=20s", "--to", "web1")
	if err != nil || !strings.Contains(out, "done: ufw allow from 198.51.100.4 ") {
		t.Errorf("allow --ip: %v\n%s", err, out)
	}
	out, _, err = client("allow", "--list", "--to", "web1")
	if err != nil || !strings.Contains(out, "203.0.113.9") || !strings.Contains(out, "198.51.100.4") {
		t.Errorf("allow --list: %v\n%s", err, out)
	}
	out, errOut, err = client("disallow", "--to", "web1")
	if err != nil || !strings.Contains(out, "done: ufw delete allow from 203.0.113.9 ") || !strings.Contains(errOut, "using your address 203.0.113.9") {
		t.Errorf("disallow: %v\n%s%s", err, out, errOut)
	}
	if hits.Load() != 2 {
		t.Errorf("%d look-ups, want 2", hits.Load())
	}
	if len(f.rules) != 1 || !strings.HasPrefix(f.rules[0].spec, "from 198.51.100.4 ") {
		t.Errorf("rules: %+v", f.rules)
	}

	// Client-side errors: nothing is sent.
	before := len(f.Calls())
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"allow", "203.0.113.1", "--ip", "203.0.113.2", "--to", "web1"}, "not both"},
		{[]string{"allow", "--ip", "any", "--to", "web1"}, "never to every address"},
		{[]string{"allow", "0.0.0.0/0", "--to", "web1"}, "never to every address"},
		{[]string{"allow", "--for", "800h", "--to", "web1"}, "longer than the longest opening"},
		{[]string{"allow", "--ip", "203.0.113.1"}, "no target"},
	} {
		_, _, err := client(tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want %q", tt.args, err, tt.want)
		}
	}
	if len(f.Calls()) != before || hits.Load() != 2 {
		t.Errorf("refused commands reached the host or the look-up")
	}
	// An address service that fails: a clear error, nothing sent.
	srvBad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "nope") }))
	defer srvBad.Close()
	laptop.HTTP = srvBad.Client()
	env[settings.KeyIPURL] = srvBad.URL
	_, _, err = client("allow", "--to", "web1")
	if err == nil || !strings.Contains(err.Error(), "failed to find your public address at "+srvBad.URL+" (SERA_IP_URL)") ||
		!strings.Contains(err.Error(), `"nope" is not an IP address`) {
		t.Errorf("bad look-up: %v", err)
	}
	if len(f.Calls()) != before {
		t.Errorf("a failed look-up reached the host")
	}
}

// --ip never reaches the watcher, the address does.
func TestAllowRemoteArgv(t *testing.T) {
	o := &cli.Options{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}, Env: testEnv(t)}
	root := NewRoot(o)
	c, rest, err := root.Find([]string{"allow", "--ip", "203.0.113.7", "--for", "20s", "--to", "web1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ParseFlags(rest); err != nil {
		t.Fatal(err)
	}
	if got, want := remoteArgv(c, []string{"203.0.113.7"}), []string{"allow", "--for=20s", "--", "203.0.113.7"}; !slices.Equal(got, want) {
		t.Errorf("argv = %q, want %q", got, want)
	}
}
