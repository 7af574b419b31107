package commands

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/safefile"
)

func watcherNames(ws []*sera.KnownWatcher) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name)
	}
	return out
}

// checkUsageErr checks err against want, the text of the usage error a
// case expects ("" for none), and reports whether the case goes on.
func checkUsageErr(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return true
	}
	if !errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want a usage error with %q", err, want)
	}
	return false
}

func TestTargetResolve(t *testing.T) {
	kw := &sera.KnownWatchers{}
	for _, w := range []struct {
		name   string
		groups []string
	}{{"web2", []string{"web", "eu"}}, {"web1", []string{"web"}}, {"db1", []string{"db", "eu"}}, {"lb1", nil}} {
		kw.Watchers = append(kw.Watchers, &sera.KnownWatcher{Name: w.name, Key: newKey(t), Groups: w.groups})
	}
	tests := []struct {
		name   string
		tf     cli.Targets
		want   []string
		target sera.Target
		err    string
	}{
		{name: "names and globs, sorted, once each", tf: cli.Targets{To: []string{"web*", "db1", "web1"}},
			want: []string{"db1", "web1", "web2"}, target: sera.Target{Names: []string{"web*", "db1", "web1"}}},
		{name: "one group", tf: cli.Targets{Groups: []string{"web"}},
			want: []string{"web1", "web2"}, target: sera.Target{Groups: []string{"web"}}},
		{name: "two groups", tf: cli.Targets{Groups: []string{"eu", "db", "eu"}},
			want: []string{"db1", "web2"}, target: sera.Target{Groups: []string{"eu", "db"}}},
		{name: "group and name", tf: cli.Targets{To: []string{"lb1"}, Groups: []string{"db"}},
			want: []string{"db1", "lb1"}, target: sera.Target{Names: []string{"lb1"}, Groups: []string{"db"}}},
		{name: "all", tf: cli.Targets{All: true},
			want: []string{"db1", "lb1", "web1", "web2"}, target: sera.Target{All: true}},
		{name: "unknown names and empty groups, all listed", tf: cli.Targets{To: []string{"web1", "nope", "x*"}, Groups: []string{"web", "mail"}},
			err: "unknown watcher nope, x*: not in known_watchers (add it with 'sera watchers add NAME PUBKEY'); no known watcher in group mail"},
		{name: "bad glob", tf: cli.Targets{To: []string{"web["}}, err: `invalid --to "web["`},
		{name: "bad group", tf: cli.Targets{Groups: []string{"Web/1"}}, err: `invalid --group "Web/1"`},
		{name: "all and more", tf: cli.Targets{All: true, Groups: []string{"web"}}, err: "--all excludes --to and --group"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, target, err := tt.tf.Resolve(kw)
			if !checkUsageErr(t, err, tt.err) {
				return
			}
			if !slices.Equal(watcherNames(got), tt.want) {
				t.Errorf("selected %v, want %v", watcherNames(got), tt.want)
			}
			// The target is the selector as typed: each watcher checks
			// that it selects itself.
			if !slices.Equal(target.Names, tt.target.Names) || !slices.Equal(target.Groups, tt.target.Groups) || target.All != tt.target.All {
				t.Errorf("target %+v, want %+v", target, tt.target)
			}
			// Every selected watcher is selected by the signed target,
			// and no other.
			for _, w := range kw.Watchers {
				if target.Selects(w.Name, w.Groups) != slices.Contains(tt.want, w.Name) {
					t.Errorf("target %+v and selection disagree on %s", target, w.Name)
				}
			}
		})
	}
	if _, _, err := (&cli.Targets{All: true}).Resolve(&sera.KnownWatchers{}); !errors.Is(err, cli.ErrUsage) {
		t.Errorf("--all with no known watchers: %v", err)
	}
}

func TestTargetShape(t *testing.T) {
	tests := []struct {
		tf     cli.Targets
		single bool
		topic  string
	}{
		{cli.Targets{To: []string{"web1"}}, true, ""},
		{cli.Targets{To: []string{"web*"}}, false, ""},
		{cli.Targets{To: []string{"web[12]"}}, false, ""},
		{cli.Targets{To: []string{"web1", "web2"}}, false, ""},
		{cli.Targets{Groups: []string{"web"}}, false, "sera-g-web"},
		{cli.Targets{Groups: []string{"web", "db"}}, false, ""},
		{cli.Targets{To: []string{"lb1"}, Groups: []string{"web"}}, false, ""},
		{cli.Targets{All: true}, false, "sera-all"},
	}
	for _, tt := range tests {
		if got := tt.tf.Single(); got != tt.single {
			t.Errorf("%+v: single %v", tt.tf, got)
		}
		if got := tt.tf.Topic("sera"); got != tt.topic {
			t.Errorf("%+v: topic %q, want %q", tt.tf, got, tt.topic)
		}
	}
}

func TestFanoutJob(t *testing.T) {
	ten := make([]*sera.KnownWatcher, 10)
	tests := []struct {
		name                   string
		ff                     fanoutFlags
		timeout                time.Duration
		concurrency, stopAfter int
		err                    string
	}{
		{name: "defaults", timeout: time.Minute},
		{name: "timeout", ff: fanoutFlags{timeout: 5 * time.Second}, timeout: 5 * time.Second},
		{name: "exec timeout stretches the wait", ff: fanoutFlags{execTimeout: 2 * time.Minute}, timeout: 150 * time.Second},
		{name: "short exec timeout keeps it", ff: fanoutFlags{execTimeout: time.Second}, timeout: time.Minute},
		{name: "explicit timeout wins", ff: fanoutFlags{execTimeout: 2 * time.Minute, timeout: 10 * time.Second}, timeout: 10 * time.Second},
		{name: "concurrency", ff: fanoutFlags{maxConcurrency: "2"}, timeout: time.Minute, concurrency: 2},
		{name: "concurrency percent", ff: fanoutFlags{maxConcurrency: "25%"}, timeout: time.Minute, concurrency: 2},
		{name: "concurrency percent at least one", ff: fanoutFlags{maxConcurrency: "1%"}, timeout: time.Minute, concurrency: 1},
		{name: "max errors 1", ff: fanoutFlags{maxConcurrency: "2", maxErrors: "1"}, timeout: time.Minute, concurrency: 2, stopAfter: 2},
		{name: "max errors 0", ff: fanoutFlags{maxConcurrency: "2", maxErrors: "0"}, timeout: time.Minute, concurrency: 2, stopAfter: 1},
		{name: "max errors percent", ff: fanoutFlags{maxConcurrency: "3", maxErrors: "30%"}, timeout: time.Minute, concurrency: 3, stopAfter: 4},
		{name: "max errors without concurrency", ff: fanoutFlags{maxErrors: "1"}, err: "--max-errors needs --max-concurrency"},
		{name: "zero concurrency", ff: fanoutFlags{maxConcurrency: "0"}, err: "at least one host"},
		{name: "bad concurrency", ff: fanoutFlags{maxConcurrency: "two"}, err: `invalid --max-concurrency "two"`},
		{name: "over 100%", ff: fanoutFlags{maxConcurrency: "150%"}, err: `invalid --max-concurrency "150%"`},
		{name: "negative errors", ff: fanoutFlags{maxConcurrency: "1", maxErrors: "-1"}, err: `invalid --max-errors "-1"`},
		{name: "negative timeout", ff: fanoutFlags{timeout: -time.Second}, err: "invalid --timeout"},
		{name: "exec timeout too long", ff: fanoutFlags{execTimeout: 25 * time.Hour}, err: "invalid --exec-timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, err := tt.ff.job(ten, time.Minute)
			if !checkUsageErr(t, err, tt.err) {
				return
			}
			if job.Timeout != tt.timeout || job.MaxConcurrency != tt.concurrency || job.StopAfter != tt.stopAfter || job.ExecTimeout != tt.ff.execTimeout {
				t.Errorf("job: timeout %s, concurrency %d, stop after %d, exec %s", job.Timeout, job.MaxConcurrency, job.StopAfter, job.ExecTimeout)
			}
		})
	}
}

func TestSingleOutcome(t *testing.T) {
	w1 := &sera.KnownWatcher{Name: "web1"}
	tests := []struct {
		name   string
		out    *sera.Outcome
		code   int
		stderr string
	}{
		{"ok", &sera.Outcome{Replies: []sera.HostReply{{Watcher: w1, Reply: &sera.Reply{}}}}, 0, ""},
		{"remote status", &sera.Outcome{Replies: []sera.HostReply{{Watcher: w1, Reply: &sera.Reply{Status: 126}}}}, 126, ""},
		{"timed out", &sera.Outcome{Missing: []*sera.KnownWatcher{w1}}, 1, "sera: web1: no reply within 1s; the request was sent, so the command may have run\n"},
		{"receiving failed", &sera.Outcome{Missing: []*sera.KnownWatcher{w1}, ReceiveErr: errors.New("connection refused")}, 1,
			"sera: web1: no reply within 1s: receiving failed: connection refused; the request was sent, so the command may have run\n"},
		{"unsendable", &sera.Outcome{SendErrors: map[string]error{"web1": errors.New("no queue")}}, 1, "sera: web1: failed to send: no queue\n"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		code, _ := cli.ExitCode(singleOutcome(&stderr, tt.out, time.Second))
		if code != tt.code || stderr.String() != tt.stderr {
			t.Errorf("%s: exit %d, stderr %q; want %d, %q", tt.name, code, stderr.String(), tt.code, tt.stderr)
		}
	}
}

// fanoutRun feeds a printer the events of a job of h1…h6: h1 and h2
// succeed, h3 fails, h4 is refused, h5 times out, h6 is never sent.
func fanoutRun(p *fanoutPrinter) {
	w := func(n string) *sera.KnownWatcher { return &sera.KnownWatcher{Name: n} }
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	reply := func(status int, stdout, stderr, rejected string) *sera.Reply {
		return &sera.Reply{Status: status, Stdout: []byte(stdout), Stderr: []byte(stderr), Rejected: rejected, Started: t0, Ended: t0.Add(time.Second)}
	}
	for _, n := range []string{"h1", "h2", "h3", "h4", "h5"} {
		p.event(sera.Event{Kind: sera.EventSent, Watcher: w(n)})
	}
	p.event(sera.Event{Kind: sera.EventReply, Watcher: w("h2"), Reply: reply(0, "{\"n\":2}\n", "", "")})
	p.event(sera.Event{Kind: sera.EventReply, Watcher: w("h1"), Reply: reply(0, "{\"n\":1}\n", "note\n", "")})
	p.event(sera.Event{Kind: sera.EventReply, Watcher: w("h3"), Reply: reply(3, "", "boom\n", "")})
	p.event(sera.Event{Kind: sera.EventReply, Watcher: w("h4"), Reply: reply(126, "", "client alice may not run \"user add\"\n", "client alice may not run \"user add\"")})
	p.event(sera.Event{Kind: sera.EventTimedOut, Watcher: w("h5")})
	p.event(sera.Event{Kind: sera.EventSkipped, Watcher: w("h6")})
	p.summary("1")
}

func TestFanoutPrinterText(t *testing.T) {
	var stdout, stderr bytes.Buffer
	p := newFanoutPrinter(&stdout, &stderr, 6, 30*time.Second, time.Now)
	fanoutRun(p)
	if want := "h2: {\"n\":2}\nh1: {\"n\":1}\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	want := `h1: note
h3: boom
h4: client alice may not run "user add"
sera: h5: no reply within 30s; the request was sent, so the command may have run
sera: 2 of 6 hosts succeeded
sera: failed: h3 (exit 3), h4 (refused)
sera: no reply within 30s: h5
sera: skipped, not sent the request: more than 1 hosts failed (--max-errors): h6
`
	if stderr.String() != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr.String(), want)
	}
	if p.succeeded() {
		t.Error("a run with failures succeeded")
	}
}

func TestFanoutPrinterJSON(t *testing.T) {
	for _, embed := range []bool{false, true} {
		var stdout, stderr bytes.Buffer
		p := newFanoutPrinter(&stdout, &stderr, 6, 30*time.Second, time.Now)
		p.asJSON, p.embedJSON = true, embed
		fanoutRun(p)
		raw := stdout.String()
		var got []hostResult
		dec := json.NewDecoder(&stdout)
		dec.DisallowUnknownFields()
		for dec.More() {
			var r hostResult
			if err := dec.Decode(&r); err != nil {
				t.Fatal(err)
			}
			got = append(got, r)
		}
		var hosts, results []string
		for _, r := range got {
			hosts = append(hosts, r.Host)
			results = append(results, r.Status)
		}
		// One object per host, in the order the results came.
		if want := []string{"h2", "h1", "h3", "h4", "h5", "h6"}; !slices.Equal(hosts, want) {
			t.Fatalf("hosts %v, want %v", hosts, want)
		}
		if want := []string{"ok", "ok", "failed", "refused", "timeout", "skipped"}; !slices.Equal(results, want) {
			t.Errorf("results %v, want %v", results, want)
		}
		h1 := got[1]
		if h1.Exit == nil || *h1.Exit != 0 || h1.Stderr != "note\n" || h1.Started == nil || h1.Changed == nil {
			t.Errorf("h1: %+v", h1)
		}
		if embed {
			if h1.Stdout != nil || len(h1.Data) != 1 || string(h1.Data[0]) != `{"n":1}` {
				t.Errorf("h1 data %s, stdout %v: want the command's JSON embedded", h1.Data, h1.Stdout)
			}
		} else if h1.Stdout == nil || *h1.Stdout != "{\"n\":1}\n" || h1.Data != nil {
			t.Errorf("h1 stdout %v, data %s", h1.Stdout, h1.Data)
		}
		if got[3].Refused == "" || *got[3].Exit != 126 || got[3].Data != nil {
			t.Errorf("h4: %+v", got[3])
		}
		if got[4].Exit != nil || got[4].Changed != nil || got[4].Error != "no reply within 30s; the request was sent, so the command may have run" {
			t.Errorf("h5: %+v", got[4])
		}
		if got[5].Changed == nil || *got[5].Changed {
			t.Errorf("h6, skipped: changed %v, want false", got[5].Changed)
		}
		// Every record has every key of the shape, null or not.
		for _, k := range []string{`"host":`, `"status":`, `"exit":`, `"changed":`, `"data":`} {
			if n := strings.Count(raw, k); n != 6 {
				t.Errorf("%d records have %s, want 6", n, k)
			}
		}
		// The summary is for people: on stderr, never mixed into the
		// objects.
		if !strings.Contains(stderr.String(), "sera: 2 of 6 hosts succeeded") || strings.Contains(stderr.String(), "h5: no reply") {
			t.Errorf("stderr %q", stderr.String())
		}
	}
}

func TestFanoutPrinterProgress(t *testing.T) {
	var stdout, stderr bytes.Buffer
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	p := newFanoutPrinter(&stdout, &stderr, 6, 30*time.Second, clock)
	p.progress = true
	fanoutRun(p)
	out := stderr.String()
	// What a terminal shows in the end: each "\r\x1b[K" erases the line
	// so far. It must be the output without progress, so the progress
	// line never ends up mixed with output or left behind.
	var screen, line strings.Builder
	for i := 0; i < len(out); i++ {
		switch {
		case strings.HasPrefix(out[i:], "\r\x1b[K"):
			line.Reset()
			i += len("\r\x1b[K") - 1
		case out[i] == '\n':
			screen.WriteString(line.String() + "\n")
			line.Reset()
		default:
			line.WriteByte(out[i])
		}
	}
	var plain bytes.Buffer
	fanoutRun(newFanoutPrinter(&bytes.Buffer{}, &plain, 6, 30*time.Second, clock))
	if screen.String()+line.String() != plain.String() {
		t.Errorf("the terminal shows\n%s\nwant\n%s", screen.String()+line.String(), plain.String())
	}
	for _, want := range []string{"sera: 0 replied ok, 0 failed, 6 waiting, 0s", "sera: 2 replied ok, 3 failed, 0 waiting"} {
		if !strings.Contains(out, want) {
			t.Errorf("no progress line %q in %q", want, out)
		}
	}
	// The progress line is cleared before the summary.
	if !strings.Contains(out, "\r\x1b[Ksera: 2 of 6 hosts succeeded\n") {
		t.Errorf("summary not on a cleared line: %q", out)
	}
	if strings.Contains(stdout.String(), "\r") {
		t.Errorf("progress on stdout: %q", stdout.String())
	}
}

// The case, through the CLI: three failing hosts of ten,
// --max-concurrency 2 --max-errors 1. Sending stops after the second
// failure; the summary and the exit status say so, and the hosts it
// calls skipped never saw the request.
func TestFanoutMaxErrorsCLI(t *testing.T) {
	var names []string
	for i := 1; i <= 10; i++ {
		names = append(names, fmt.Sprintf("h%02d", i))
	}
	inKHFleet(t, names, nil, func(t *testing.T, f *khFleet) { testFanoutMaxErrorsCLI(t, f, names) })
}

func testFanoutMaxErrorsCLI(t *testing.T, f *khFleet, names []string) {
	failing := []string{"h02", "h04", "h06"}
	for _, n := range failing {
		// The admin may run ping only there: 'hostkey list' is refused.
		kc := &sera.KnownClients{Clients: []*sera.KnownClient{{Key: f.clientID.Public(), Name: "admin"}}}
		if err := safefile.WriteAtomic(filepath.Join(f.dir, "w-"+n, "known_clients"), kc.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stdout, stderr, err := f.sera("hostkey", "list", "--all", "--max-concurrency", "2", "--max-errors", "1", "--timeout", "20s")
	if code, _ := cli.ExitCode(err); code != cli.ExitFailure {
		t.Fatalf("exit %d (%v), want 1; stderr:\n%s", code, err, stderr)
	}
	// A watcher audits a request just after it replies, and one sent
	// the request takes it at its next poll (every 15ms). A second of
	// the fleet's fake clock lets every watcher poll many times over:
	// then every request sent is audited, and a host with no audit
	// was never sent one.
	advance(time.Second)
	saw := map[string]bool{}
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(f.dir, "w-"+name, "audit.log"))
		saw[name] = err == nil && len(b) > 0
	}
	var sent, skipped, failed []string
	for _, n := range names {
		if saw[n] {
			sent = append(sent, n)
			if slices.Contains(failing, n) {
				failed = append(failed, n+" (refused)")
			}
		} else {
			skipped = append(skipped, n)
		}
	}
	// The second failure is h04 at the latest: h07 on are never sent it,
	// whatever order the replies come in.
	for _, n := range []string{"h07", "h08", "h09", "h10"} {
		if saw[n] {
			t.Errorf("%s was sent the request", n)
		}
	}
	if len(failed) < 2 {
		t.Fatalf("failed hosts %v; stderr:\n%s", failed, stderr)
	}
	lines := strings.Split(stderr, "\n")
	for _, want := range []string{
		fmt.Sprintf("sera: %d of 10 hosts succeeded", len(sent)-len(failed)),
		"sera: failed: " + strings.Join(failed, ", "),
		"sera: skipped, not sent the request: more than 1 hosts failed (--max-errors): " + strings.Join(skipped, ", "),
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	// Every host sent the request answered, with its output prefixed.
	for _, n := range sent {
		if !slices.Contains(failing, n) && !strings.Contains(stdout, n+": ") {
			t.Errorf("no output from %s", n)
		}
	}
}

// TestJSONShape: --json prints the same per-host record for one host by
// name and for many, and "changed" says whether the command changed the
// host: true the first time, false when it was already so.
func TestJSONShape(t *testing.T) {
	names := []string{"h1", "h2"}
	inKHFleet(t, names, nil, func(t *testing.T, f *khFleet) {
		key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
		records := func(args ...string) []map[string]json.RawMessage {
			t.Helper()
			stdout, stderr, err := f.sera(append(args, "--json", "--timeout", "20s")...)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			var out []map[string]json.RawMessage
			for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
				var r map[string]json.RawMessage
				if err := json.Unmarshal([]byte(l), &r); err != nil {
					t.Fatalf("line %q: %v", l, err)
				}
				for _, k := range []string{"host", "status", "exit", "changed", "data"} {
					if _, ok := r[k]; !ok {
						t.Errorf("record %s lacks %q", l, k)
					}
				}
				out = append(out, r)
			}
			return out
		}
		changed := func(rs []map[string]json.RawMessage) []string {
			var c []string
			for _, r := range rs {
				c = append(c, string(r["host"])+"="+string(r["changed"]))
			}
			slices.Sort(c)
			return c
		}
		trust := []string{"hostkey", "trust", "gw.example", key}
		if got := changed(records(append(trust, "--all")...)); !slices.Equal(got, []string{`"h1"=true`, `"h2"=true`}) {
			t.Errorf("first trust: changed %v", got)
		}
		if got := changed(records(append(trust, "--all")...)); !slices.Equal(got, []string{`"h1"=false`, `"h2"=false`}) {
			t.Errorf("second trust: changed %v", got)
		}
		// One host by name: the same record, not the command's own
		// output bare; a command with its own JSON has it under data.
		one := records("hostkey", "list", "--to", "h1")
		many := records("hostkey", "list", "--to", "h*")
		if len(one) != 1 || len(many) != 2 {
			t.Fatalf("%d and %d records", len(one), len(many))
		}
		for _, r := range append(one, many...) {
			if string(r["status"]) != `"ok"` || string(r["exit"]) != "0" || string(r["changed"]) != "false" || !strings.HasPrefix(string(r["data"]), "[{") {
				t.Errorf("hostkey list record: %v", r)
			}
		}
		var keys1, keysMany []string
		for k := range one[0] {
			keys1 = append(keys1, k)
		}
		for k := range many[0] {
			keysMany = append(keysMany, k)
		}
		slices.Sort(keys1)
		slices.Sort(keysMany)
		if !slices.Equal(keys1, keysMany) {
			t.Errorf("one host's record has %v, many hosts' %v", keys1, keysMany)
		}
	})
}
