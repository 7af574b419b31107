package commands

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
)

// targetsHelp ends the help of every host command.
const targetsHelp = `Targets: --to NAME or GLOB (comma-separated or repeated), --group GROUP
(repeatable), --all; or --local to run it on this machine. One host named
exactly prints the command's own output; any other selector prints each
host's lines prefixed "HOST: " as they arrive (--json: one object per host),
then a summary on stderr. --max-concurrency and --max-errors pace a large
fleet; --timeout is each host's time to answer, --exec-timeout the command's
time to run.`

// fanoutFlags steer how a request goes out to several watchers and how
// their results come back.
type fanoutFlags struct {
	timeout        time.Duration
	execTimeout    time.Duration
	maxConcurrency string
	maxErrors      string
	direct         bool
	json           bool
}

func (ff *fanoutFlags) add(fs *pflag.FlagSet) []string {
	fs.DurationVar(&ff.timeout, "timeout", 0, "how long to wait for each host's reply after it was sent the request (default SERA_TIMEOUT, 60s; at least --exec-timeout plus 30s)")
	fs.DurationVar(&ff.execTimeout, "exec-timeout", 0, "kill the command on a host when it runs longer than this (the watcher's SERA_EXEC_TIMEOUT caps it)")
	fs.StringVar(&ff.maxConcurrency, "max-concurrency", "", "at most N hosts (or N% of them) with the request in flight; the next is sent when one answers")
	fs.StringVar(&ff.maxErrors, "max-errors", "", "with --max-concurrency: once more than N hosts (or N% of them) failed, send no further host the request")
	fs.BoolVar(&ff.direct, "direct", false, "send to each watcher's queue even when SERA_FANOUT=sns")
	return []string{"timeout", "exec-timeout", "max-concurrency", "max-errors", "direct"}
}

// parseLimit reads N or N% of total. A percentage is rounded down, and
// to at least floor.
func parseLimit(flag, s string, total, floor int) (int, error) {
	v, pct := strings.CutSuffix(s, "%")
	n, err := strconv.Atoi(v)
	switch {
	case err != nil || n < 0 || (pct && n > 100):
		return 0, cli.UsageErr("invalid --%s %q: want a whole number N or a percentage N%% (0 to 100)", flag, s)
	case pct:
		return max(n*total/100, floor), nil
	}
	return n, nil
}

// job turns the flags into a sera.Job for the selected watchers. wait is
// the default per-host wait (SERA_TIMEOUT).
func (ff *fanoutFlags) job(selected []*sera.KnownWatcher, wait time.Duration) (*sera.Job, error) {
	job := &sera.Job{Watchers: selected, Timeout: wait, ExecTimeout: ff.execTimeout}
	if ff.execTimeout < 0 || ff.execTimeout > sera.MaxRequestLifetime {
		return nil, cli.UsageErr("invalid --exec-timeout %s: want more than 0 and at most %s", ff.execTimeout, sera.MaxRequestLifetime)
	}
	switch {
	case ff.timeout < 0:
		return nil, cli.UsageErr("invalid --timeout %s: want more than 0", ff.timeout)
	case ff.timeout > 0:
		job.Timeout = ff.timeout
	case ff.execTimeout > 0:
		// Waiting less than the command may run would call a slow
		// success a failure.
		job.Timeout = max(wait, ff.execTimeout+30*time.Second)
	}
	if ff.maxConcurrency != "" {
		n, err := parseLimit("max-concurrency", ff.maxConcurrency, len(selected), 1)
		if err != nil {
			return nil, err
		}
		if n < 1 {
			return nil, cli.UsageErr("invalid --max-concurrency %q: at least one host must be sent the request", ff.maxConcurrency)
		}
		job.MaxConcurrency = n
	}
	if ff.maxErrors != "" {
		if job.MaxConcurrency == 0 {
			return nil, cli.UsageErr("--max-errors needs --max-concurrency: without it every host is sent the request at once, and there is nothing left to stop")
		}
		n, err := parseLimit("max-errors", ff.maxErrors, len(selected), 0)
		if err != nil {
			return nil, err
		}
		job.StopAfter = n + 1
	}
	return job, nil
}

// isTerminal reports whether w is a terminal, for the progress line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// fanoutPrinter shows a job's results as they arrive: each host's output
// with its name before every line (or one JSON object per host), a
// progress line on a terminal, and a summary at the end.
type fanoutPrinter struct {
	stdout, stderr io.Writer
	// asJSON prints one object per host; embedJSON says the remote
	// command printed JSON lines, which the object then carries parsed.
	asJSON, embedJSON bool
	// progress redraws a status line on stderr (a terminal).
	progress bool
	timeout  time.Duration
	now      func() time.Time

	mu       sync.Mutex
	started  time.Time
	total    int
	ok       []string
	failed   []string // name (exit N)
	noReply  []string
	notSent  []string // name: error
	skipped  []string
	shown    bool
	lastDraw time.Time
}

func newFanoutPrinter(stdout, stderr io.Writer, total int, timeout time.Duration, now func() time.Time) *fanoutPrinter {
	return &fanoutPrinter{stdout: stdout, stderr: stderr, total: total, timeout: timeout, now: now, started: now()}
}

// hostResult is the --json form of one host's result, the same for every
// command and target (docs/json.md).
type hostResult struct {
	Host string `json:"host"`
	// Status is ok, failed (a non-zero exit status), refused (the
	// watcher would not run it), timeout (no reply in time), unsent (the
	// send failed) or skipped (--max-errors was exceeded first).
	Status string `json:"status"`
	// Exit is the command's exit status; null without a reply.
	Exit *int `json:"exit"`
	// Changed says the command changed the host; null when that is not
	// known (no reply: it may have run).
	Changed *bool `json:"changed"`
	// Data is what a command with JSON of its own printed, one value per
	// line; null for the others, whose output is Stdout.
	Data    []json.RawMessage `json:"data"`
	Stdout  *string           `json:"stdout,omitempty"`
	Stderr  string            `json:"stderr,omitempty"`
	Started *time.Time        `json:"started,omitempty"`
	Ended   *time.Time        `json:"ended,omitempty"`
	// Refused is the watcher's reason for refusing it.
	Refused string `json:"refused,omitempty"`
	Error   string `json:"error,omitempty"`
}

// jsonLines parses b as JSON values, one per line; ok is false if any
// line is not one.
func jsonLines(b []byte) (out []json.RawMessage, ok bool) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if !json.Valid(line) {
			return nil, false
		}
		out = append(out, json.RawMessage(line))
	}
	return out, true
}

// event handles one event of the job. It is called from the job's
// goroutine; the progress ticker calls tick from another.
func (p *fanoutPrinter) event(e sera.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Kind == sera.EventSent {
		p.redraw(50 * time.Millisecond)
		return
	}
	p.clear()
	name := e.Watcher.Name
	res := hostResult{Host: name}
	switch e.Kind {
	case sera.EventReply:
		r := e.Reply
		res.Exit, res.Started, res.Ended, res.Refused = &r.Status, &r.Started, &r.Ended, r.Rejected
		res.Changed = &r.Changed
		res.Stderr = string(r.Stderr)
		switch {
		case r.Status == 0:
			res.Status = "ok"
			p.ok = append(p.ok, name)
		case r.Rejected != "":
			res.Status = "refused"
			p.failed = append(p.failed, fmt.Sprintf("%s (refused)", name))
		default:
			res.Status = "failed"
			p.failed = append(p.failed, fmt.Sprintf("%s (exit %d)", name, r.Status))
		}
		if p.asJSON {
			if lines, ok := jsonLines(r.Stdout); ok && p.embedJSON && r.Rejected == "" {
				res.Data = lines
				if res.Data == nil {
					res.Data = []json.RawMessage{}
				}
			} else {
				s := string(r.Stdout)
				res.Stdout = &s
			}
		} else {
			cli.PrefixLines(p.stdout, name, r.Stdout)
			cli.PrefixLines(p.stderr, name, r.Stderr)
		}
	case sera.EventTimedOut:
		res.Status, res.Error = "timeout", noReply(p.timeout, e.Err)
		p.noReply = append(p.noReply, name)
		if !p.asJSON {
			fmt.Fprintf(p.stderr, "sera: %s: %s\n", name, res.Error)
		}
	case sera.EventSendFailed:
		res.Status, res.Error, res.Changed = "unsent", e.Err.Error(), new(false)
		p.notSent = append(p.notSent, name)
		if !p.asJSON {
			fmt.Fprintf(p.stderr, "sera: %s: failed to send: %v\n", name, e.Err)
		}
	case sera.EventSkipped:
		res.Status, res.Error, res.Changed = "skipped", "not sent: too many hosts failed (--max-errors)", new(false)
		p.skipped = append(p.skipped, name)
	}
	if p.asJSON {
		json.NewEncoder(p.stdout).Encode(res)
	}
	p.redraw(0)
}

// tick redraws the progress line, for the elapsed time.
func (p *fanoutPrinter) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.redraw(100 * time.Millisecond)
}

func (p *fanoutPrinter) clear() {
	if p.progress && p.shown {
		io.WriteString(p.stderr, "\r\x1b[K")
		p.shown = false
	}
}

// redraw shows the progress line again, unless it is on screen and was
// drawn less than minGap ago: thousands of replies a second must not make
// the terminal the bottleneck.
func (p *fanoutPrinter) redraw(minGap time.Duration) {
	if !p.progress {
		return
	}
	now := p.now()
	if p.shown && now.Sub(p.lastDraw) < minGap {
		return
	}
	p.clear()
	failed := len(p.failed) + len(p.noReply) + len(p.notSent)
	waiting := p.total - len(p.ok) - failed - len(p.skipped)
	fmt.Fprintf(p.stderr, "sera: %d replied ok, %d failed, %d waiting, %s", len(p.ok), failed, waiting, now.Sub(p.started).Truncate(100*time.Millisecond))
	p.shown = true
	p.lastDraw = now
}

// note says something about the job as a whole on stderr.
func (p *fanoutPrinter) note(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clear()
	fmt.Fprintf(p.stderr, "sera: %s\n", msg)
	p.redraw(0)
}

// summary ends the progress line and says how the job went, on stderr.
func (p *fanoutPrinter) summary(maxErrors string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clear()
	p.progress = false
	fmt.Fprintf(p.stderr, "sera: %d of %d hosts succeeded\n", len(p.ok), p.total)
	list := func(what string, names []string) {
		if len(names) > 0 {
			fmt.Fprintf(p.stderr, "sera: %s: %s\n", what, strings.Join(slices.Sorted(slices.Values(names)), ", "))
		}
	}
	list("failed", p.failed)
	list(fmt.Sprintf("no reply within %s", p.timeout), p.noReply)
	list("could not be sent the request", p.notSent)
	list(fmt.Sprintf("skipped, not sent the request: more than %s hosts failed (--max-errors)", maxErrors), p.skipped)
}

// succeeded reports whether every host ran the command with status 0.
func (p *fanoutPrinter) succeeded() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ok) == p.total
}
