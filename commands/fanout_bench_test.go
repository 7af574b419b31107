package commands_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// fauxqsAccountID is the AWS account in every ARN of fauxqs.
const fauxqsAccountID = "000000000000"

// fanoutSpecEnv names the spec file of the watchers' process; only
// BenchmarkFanout sets it, for the process it starts.
const fanoutSpecEnv = "SERA_BENCH_FANOUT_SPEC"

// fanoutProfileEnv, if set when the benchmark runs, is a path prefix: the
// watchers' process of each sub-benchmark writes its CPU profile to
// PREFIX-direct-100.pprof and so on (-cpuprofile profiles the client
// only, since the watchers run in a process of their own).
const fanoutProfileEnv = "SERA_BENCH_FANOUT_WATCHER_CPUPROFILE"

// fanoutReady is the line the watchers' process prints once every watcher
// is in its first Receive.
const fanoutReady = "fanout-watchers: ready"

// BenchmarkFanout measures `sera ping --all` to 100 and 1,000 watchers
// through the real fauxqs: how long from the call of Client.Run to the
// last reply, replies per second, and what the client allocates and
// spends in CPU per run.
//
// The watchers are real sera.Watchers (real Handler, replay cache, audit
// log and known_clients file each, each with its own identity, queue and
// SQS client), all long-polling, in a child process: the test binary run
// again with fanoutSpecEnv set (see TestFanoutWatchers). So the client's
// memory and CPU figures are its own, and the watchers' and fauxqs's CPU
// are measured apart, from /proc. Queues, topic, subscriptions, starting
// the watchers and one untimed warm-up run are outside the timer, as is a
// pause of a second after each run for the watchers to finish their audit
// lines and deletes and poll again.
//
// direct sends the request to each watcher queue (32 sends at a time);
// sns publishes it once to the topic bench-all, to which every watcher
// queue subscribes with raw delivery, and fails if the client fell back
// to direct sends.
//
// Metrics, medians over the runs unless per run: s-to-last (the goal),
// replies/s (watchers over s-to-last), s-to-sent (sealed and every send
// or the publish done), s-all-received and s-all-replied (the last
// watcher's Receive returned the request, it started sending its reply),
// s-to-first (the first reply); client-B/run and client-allocs/run
// (runtime.MemStats TotalAlloc and Mallocs around Run), receives/run (the
// client's Receive calls); cpu-s-client/run, cpu-s-watchers/run and
// cpu-s-fauxqs/run (mean CPU time of each process per run). With -v it
// logs each run.
func BenchmarkFanout(b *testing.B) {
	for _, via := range []string{"direct", "sns"} {
		b.Run(via, func(b *testing.B) {
			for _, n := range []int{100, 1000} {
				b.Run(strconv.Itoa(n), func(b *testing.B) { benchFanout(b, n, via) })
			}
		})
	}
}

func benchFanout(b *testing.B, n int, via string) {
	srv := sqstest.Start(b)
	ctx := context.Background()
	clientID := newIdentity(b)
	topic := ""
	if via == "sns" {
		topic = transport.AllTopic(benchPrefix)
	}

	// The watchers: identities and queues here, the rest in the child.
	dir := b.TempDir()
	spec := fanoutSpec{Endpoint: srv.Endpoint, Prefix: benchPrefix, Client: clientID.Public().String(), Dir: dir}
	if p := os.Getenv(fanoutProfileEnv); p != "" {
		spec.CPUProfile = fmt.Sprintf("%s-%s-%d.pprof", p, via, n)
	}
	known := make([]*sera.KnownWatcher, n)
	queues := []string{transport.ClientQueue(benchPrefix, clientID.Public().Fingerprint())}
	for i := range n {
		id := newIdentity(b)
		name := fmt.Sprintf("w%04d", i)
		spec.Watchers = append(spec.Watchers, fanoutWatcher{Name: name, Secret: id.SecretString()})
		known[i] = &sera.KnownWatcher{Name: name, Key: id.Public()}
		queues = append(queues, transport.WatcherQueue(benchPrefix, name))
	}
	parallel(b, queues, func(q string) error {
		_, err := sqs.CreateQueue(ctx, srv.Config, q)
		return err
	})
	if topic != "" {
		topics := sns.NewFromConfig(srv.Config)
		out, err := topics.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topic)})
		if err != nil {
			b.Fatal(err)
		}
		parallel(b, queues[1:], func(q string) error {
			_, err := topics.Subscribe(ctx, &sns.SubscribeInput{
				TopicArn: out.TopicArn, Protocol: aws.String("sqs"),
				Endpoint:   aws.String(fmt.Sprintf("arn:aws:sqs:%s:%s:%s", srv.Config.Region, fauxqsAccountID, q)),
				Attributes: map[string]string{"RawMessageDelivery": "true"},
			})
			return err
		})
	}
	fw := startFanoutWatchers(b, spec)

	tr, err := sqs.NewFromConfig(srv.Config).WithAccount(fauxqsAccountID)
	if err != nil {
		b.Fatal(err)
	}
	ct := &counted{Transport: tr}
	client := &sera.Client{Identity: clientID, Transport: ct, Prefix: benchPrefix, TTL: 5 * time.Minute}

	// One run, timed from the call of Run (start): when the first
	// EventSent came (every send or the publish is done: Run emits the
	// events after them), the first and the last reply; when the last
	// watcher received the request and started sending its reply (from
	// settle); what the client allocated and how often it called Receive.
	type sample struct {
		start                     time.Time
		sent, first, last         time.Duration
		lastReceived, lastReplied time.Duration
		alloc, mallocs            uint64
		receives                  int64
	}
	run := func() sample {
		var s sample
		job := &sera.Job{
			Watchers: known, Target: sera.Target{All: true}, Argv: []string{"ping"},
			Timeout: time.Minute, Topic: topic,
			OnEvent: func(e sera.Event) {
				switch {
				case e.Kind == sera.EventSent && s.sent == 0:
					s.sent = time.Since(s.start)
				case e.Kind == sera.EventReply:
					s.last = time.Since(s.start)
					if s.first == 0 {
						s.first = s.last
					}
				}
			},
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		receives := ct.receives.Load()
		s.start = time.Now()
		out, err := client.Run(ctx, job)
		runtime.ReadMemStats(&after)
		s.alloc, s.mallocs = after.TotalAlloc-before.TotalAlloc, after.Mallocs-before.Mallocs
		s.receives = ct.receives.Load() - receives
		if err != nil {
			b.Fatal(err)
		}
		if len(out.Replies) != n {
			b.Fatalf("%d of %d replied; %d missing, %d send errors (e.g. %v)", len(out.Replies), n, len(out.Missing), len(out.SendErrors), firstErr(out.SendErrors))
		}
		for _, r := range out.Replies {
			if r.Reply.Status != 0 {
				b.Fatalf("%s: ping exited %d: %s", r.Watcher.Name, r.Reply.Status, r.Reply.Stderr)
			}
		}
		if out.Published != topic {
			b.Fatalf("published to %q, want %q: the client fell back to direct sends", out.Published, topic)
		}
		return s
	}
	// settle lets the watchers finish the request (replay cache, audit
	// line, delete) and poll again, and adds when the last watcher
	// received it and started sending its reply, as they noted.
	settle := func(s *sample) {
		time.Sleep(time.Second)
		t := fw.takeTimes(b)
		if len(t.Received) != n || len(t.Replied) != n {
			b.Fatalf("watchers received %d requests and sent %d replies, want %d each", len(t.Received), len(t.Replied), n)
		}
		s.lastReceived = time.Unix(0, slices.Max(t.Received)).Sub(s.start)
		s.lastReplied = time.Unix(0, slices.Max(t.Replied)).Sub(s.start)
	}

	// Untimed: every watcher polls and answers, and the client has looked
	// up the queue URLs, which its transport keeps.
	warm := run()
	settle(&warm)

	var samples []sample
	// CPU time of the three processes, as /proc counts it (Linux).
	pids := [3]int{os.Getpid(), fw.cmd.Process.Pid, fauxqsPID()}
	var cpu [3]time.Duration
	cpuOK := true
	for b.Loop() {
		var before [3]time.Duration
		for i, pid := range pids {
			before[i] = procCPU(pid)
		}
		s := run()
		for i, pid := range pids {
			d := procCPU(pid)
			cpuOK = cpuOK && d >= 0 && before[i] >= 0
			cpu[i] += d - before[i]
		}
		b.StopTimer()
		settle(&s)
		if testing.Verbose() {
			b.Logf("sent %.3fs, received by all %.3fs, replied by all %.3fs, first reply %.3fs, last %.3fs, %d Receive calls, %.1f MB allocated",
				s.sent.Seconds(), s.lastReceived.Seconds(), s.lastReplied.Seconds(), s.first.Seconds(), s.last.Seconds(), s.receives, float64(s.alloc)/1e6)
		}
		samples = append(samples, s)
		b.StartTimer()
	}

	med := func(f func(sample) time.Duration) time.Duration {
		ds := make([]time.Duration, len(samples))
		for i, s := range samples {
			ds[i] = f(s)
		}
		return percentile(ds, 0.5)
	}
	medU := func(f func(sample) uint64) float64 {
		xs := make([]uint64, len(samples))
		for i, s := range samples {
			xs[i] = f(s)
		}
		slices.Sort(xs)
		return float64(xs[(len(xs)-1)/2])
	}
	last := med(func(s sample) time.Duration { return s.last })
	runs := time.Duration(len(samples))
	b.ReportMetric(last.Seconds(), "s-to-last")
	b.ReportMetric(med(func(s sample) time.Duration { return s.sent }).Seconds(), "s-to-sent")
	b.ReportMetric(med(func(s sample) time.Duration { return s.first }).Seconds(), "s-to-first")
	b.ReportMetric(med(func(s sample) time.Duration { return s.lastReceived }).Seconds(), "s-all-received")
	b.ReportMetric(med(func(s sample) time.Duration { return s.lastReplied }).Seconds(), "s-all-replied")
	b.ReportMetric(float64(n)/last.Seconds(), "replies/s")
	b.ReportMetric(medU(func(s sample) uint64 { return s.alloc }), "client-B/run")
	b.ReportMetric(medU(func(s sample) uint64 { return s.mallocs }), "client-allocs/run")
	b.ReportMetric(medU(func(s sample) uint64 { return uint64(s.receives) }), "receives/run")
	if cpuOK {
		for i, unit := range []string{"cpu-s-client/run", "cpu-s-watchers/run", "cpu-s-fauxqs/run"} {
			b.ReportMetric((cpu[i] / runs).Seconds(), unit)
		}
	}
}

// parallel calls f for every item, 16 at a time, and fails b if any
// call failed.
func parallel(b *testing.B, items []string, f func(string) error) {
	b.Helper()
	errs := make([]error, len(items))
	next := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range next {
				errs[i] = f(items[i])
			}
		})
	}
	for i := range items {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

func firstErr(m map[string]error) error {
	for _, err := range m {
		return err
	}
	return nil
}

// counted is the client's transport, counting its Receive calls. It
// publishes too, or the client could not.
type counted struct {
	*sqs.Transport
	receives atomic.Int64
}

func (c *counted) Receive(ctx context.Context, queue string, maxMsgs int, wait, visibility time.Duration) ([]*transport.Message, error) {
	c.receives.Add(1)
	return c.Transport.Receive(ctx, queue, maxMsgs, wait, visibility)
}

var _ transport.Publisher = (*counted)(nil)

// fanoutSpec is what the watchers' process is told, as a JSON file.
type fanoutSpec struct {
	Endpoint, Prefix string
	// Client is the public key every watcher trusts.
	Client string
	// Dir holds a directory per watcher: known_clients, replay cache,
	// audit log.
	Dir        string
	Watchers   []fanoutWatcher
	CPUProfile string `json:",omitempty"`
}

type fanoutWatcher struct{ Name, Secret string }

// fanoutTimesLine starts the line with which the watchers' process
// answers "times" on its stdin: a JSON fanoutTimes.
const fanoutTimesLine = "fanout-times: "

// fanoutTimes are the moments, in Unix nanoseconds, at which each watcher's
// Receive returned a request and it started sending the reply, since the
// last "times".
type fanoutTimes struct{ Received, Replied []int64 }

// fanoutWatchers is the watchers' process.
type fanoutWatchers struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	times chan fanoutTimes
}

// takeTimes asks the watchers' process for the moments noted since the
// last call.
func (fw *fanoutWatchers) takeTimes(b *testing.B) fanoutTimes {
	b.Helper()
	if _, err := io.WriteString(fw.stdin, "times\n"); err != nil {
		b.Fatal(err)
	}
	select {
	case t, ok := <-fw.times:
		if !ok {
			b.Fatal("the watchers' process ended")
		}
		return t
	case <-time.After(time.Minute):
		b.Fatal("the watchers' process did not say its times")
	}
	return fanoutTimes{}
}

// startFanoutWatchers starts the watchers' process and waits until every
// watcher is polling; b's cleanup stops it (closing its stdin) and fails b
// if a watcher failed.
func startFanoutWatchers(b *testing.B, spec fanoutSpec) *fanoutWatchers {
	b.Helper()
	specPath := filepath.Join(spec.Dir, "spec.json")
	js, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(specPath, js, 0o600); err != nil {
		b.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestFanoutWatchers$", "-test.count=1")
	cmd.Env = append(os.Environ(), fanoutSpecEnv+"="+specPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	fw := &fanoutWatchers{cmd: cmd, stdin: stdin, times: make(chan fanoutTimes, 1)}
	// Anything else it says is kept for the report of a failure.
	var mu sync.Mutex
	var said []string
	// Buffered, so that the reader never blocks on a reader that gave
	// up: it must reach the end of the output for stop to return.
	ready := make(chan bool, 2)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(fw.times)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if line == fanoutReady {
				ready <- true
				continue
			}
			if js, ok := strings.CutPrefix(line, fanoutTimesLine); ok {
				var t fanoutTimes
				if json.Unmarshal([]byte(js), &t) == nil {
					select {
					case fw.times <- t:
					default: // nobody asked: takeTimes gave up
					}
					continue
				}
			}
			mu.Lock()
			said = append(said, line)
			mu.Unlock()
		}
		ready <- false
	}()
	exited := false
	stop := func() error {
		if exited {
			return nil
		}
		exited = true
		stdin.Close()
		done := make(chan error, 1)
		go func() {
			<-readDone
			done <- cmd.Wait()
		}()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			return errors.New("did not stop within 30s of its stdin closing; killed")
		}
	}
	report := func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("output: %s\nstderr: %s", strings.Join(said, "\n"), stderr.String())
	}
	b.Cleanup(func() {
		if err := stop(); err != nil {
			b.Errorf("watchers' process: %v\n%s", err, report())
		}
	})
	select {
	case ok := <-ready:
		if !ok {
			err := stop()
			b.Fatalf("watchers' process ended before it was ready: %v\n%s", err, report())
		}
	case <-time.After(2 * time.Minute):
		b.Fatalf("watchers not ready after 2 minutes\n%s", report())
	}
	return fw
}

// TestFanoutWatchers is the watchers' process of BenchmarkFanout, which
// starts the test binary again with fanoutSpecEnv set; otherwise it is
// skipped. It runs every watcher of the spec until its stdin closes.
func TestFanoutWatchers(t *testing.T) {
	path := os.Getenv(fanoutSpecEnv)
	if path == "" {
		t.Skip("the watchers' process of BenchmarkFanout, which starts it")
	}
	js, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec fanoutSpec
	if err := json.Unmarshal(js, &spec); err != nil {
		t.Fatal(err)
	}
	if err := serveFanout(&spec, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// serveFanout runs the watchers of spec until stdin reaches its end,
// saying fanoutReady on out once each is in its first Receive, and
// answering each line "times" on stdin with the moments noted since.
//
// Each watcher has an SQS client of its own, as each host's watcher
// process has: the SDK gives every client its own HTTP transport, so each
// watcher holds one keep-alive connection to fauxqs (its long poll, then
// its reply and delete on the same connection) and no watcher waits for
// another's connection. One shared client would need MaxConnsPerHost and
// MaxIdleConnsPerHost above the number of watchers (the SDK's defaults are
// 2,048 and 10), or the connections beyond 10 would be closed after every
// poll and dialled again.
func serveFanout(spec *fanoutSpec, stdin io.Reader, out io.Writer) error {
	clientKey, err := crypto.ParsePublicKey(spec.Client)
	if err != nil {
		return err
	}
	kc := (&sera.KnownClients{Clients: []*sera.KnownClient{{Key: clientKey, Name: "admin"}}}).Bytes()
	cfg := aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		BaseEndpoint: aws.String(spec.Endpoint),
	}
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var polling, running sync.WaitGroup
	var times timesNoted
	errs := make([]error, len(spec.Watchers))
	started := time.Now()
	for i, sw := range spec.Watchers {
		id, err := crypto.ParseIdentity(sw.Secret)
		if err != nil {
			cancel()
			running.Wait()
			return fmt.Errorf("watcher %s: %w", sw.Name, err)
		}
		dir := filepath.Join(spec.Dir, sw.Name)
		knownClients := filepath.Join(dir, "known_clients")
		replay, err := sera.OpenReplayCache(filepath.Join(dir, "replay"))
		if err == nil {
			err = os.WriteFile(knownClients, kc, 0o600)
		}
		if err != nil {
			cancel()
			running.Wait()
			return fmt.Errorf("watcher %s: %w", sw.Name, err)
		}
		polling.Add(1)
		w := &sera.Watcher{
			Identity: id, Name: sw.Name, Prefix: spec.Prefix,
			Transport: &watcherTransport{Transport: sqs.NewFromConfig(cfg), polling: polling.Done, times: &times},
			Clients:   &sera.ClientFile{Path: knownClients},
			Handler: &commands.Handler{Host: &commands.Host{
				Name: sw.Name, Version: "bench", Fingerprint: id.Public().Fingerprint(),
				Started: started, KnownClients: knownClients, Sys: host.Real(filepath.Join(dir, "state")),
			}},
			Replay: replay,
			Audit:  &sera.AuditLog{Path: filepath.Join(dir, "audit.log")},
		}
		running.Go(func() { errs[i] = w.Run(ctx) })
	}
	polling.Wait()
	fmt.Fprintln(out, fanoutReady)
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		if sc.Text() == "times" {
			js, _ := json.Marshal(times.take())
			fmt.Fprintf(out, "%s%s\n", fanoutTimesLine, js)
		}
	}
	cancel()
	running.Wait()
	return errors.Join(errs...)
}

// timesNoted collects the watchers' moments.
type timesNoted struct {
	mu sync.Mutex
	t  fanoutTimes
}

func (n *timesNoted) note(to *[]int64) {
	now := time.Now().UnixNano()
	n.mu.Lock()
	*to = append(*to, now)
	n.mu.Unlock()
}

func (n *timesNoted) take() fanoutTimes {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := n.t
	n.t = fanoutTimes{}
	return t
}

// watcherTransport is a watcher's transport that calls polling when its
// first Receive starts and notes when a Receive returns a request and
// when a Send starts (the reply).
type watcherTransport struct {
	transport.Transport
	once    sync.Once
	polling func()
	times   *timesNoted
}

func (w *watcherTransport) Receive(ctx context.Context, queue string, maxMsgs int, wait, visibility time.Duration) ([]*transport.Message, error) {
	w.once.Do(w.polling)
	msgs, err := w.Transport.Receive(ctx, queue, maxMsgs, wait, visibility)
	if len(msgs) > 0 {
		w.times.note(&w.times.t.Received)
	}
	return msgs, err
}

func (w *watcherTransport) Send(ctx context.Context, queue string, body []byte) error {
	w.times.note(&w.times.t.Replied)
	return w.Transport.Send(ctx, queue, body)
}

// procCPU is the user and system CPU time process pid has used, from
// /proc (Linux); -1 where it cannot be read.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count the fields after its closing one. utime and stime are fields
	// 14 and 15, in clock ticks of 1/100 s (USER_HZ).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(u+s) * 10 * time.Millisecond
}

// fauxqsPID finds the fauxqs that sqstest started: this process's child
// whose command line names fauxqs. It returns 0 unless there is exactly
// one.
func fauxqsPID() int {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := strconv.Itoa(os.Getpid())
	found := 0
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || !bytes.Contains(status, []byte("\nPPid:\t"+self+"\n")) {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(cmdline, []byte("fauxqs")) {
			continue
		}
		if found != 0 {
			return 0
		}
		found = pid
	}
	return found
}
