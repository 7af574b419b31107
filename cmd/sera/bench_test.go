//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// BenchmarkWatcherIdleRSS measures what an idle watcher costs its host: the
// real binary, `sera watch`, left alone for SERA_BENCH_IDLE (default 60s),
// then its resident memory (VmRSS), peak resident memory (VmHWM) and the
// CPU time it used, from /proc. The sqs watcher polls fauxqs, a local SQS
// server.
//
// Each sub-benchmark measures once, whatever b.N is, and reports the same
// figures if the framework calls it again: run it with -benchtime=1x. The
// two run one after the other, so neither watcher shares the CPUs with the
// other's start-up; that costs a second idle period.
func BenchmarkWatcherIdleRSS(b *testing.B) {
	idle := 60 * time.Second
	if s := os.Getenv("SERA_BENCH_IDLE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("invalid SERA_BENCH_IDLE %q: want a positive duration such as 60s", s)
		}
		idle = d
	}
	bin := buildSera(b)
	var spoolFig, sqsFig *idleFigures
	b.Run("spool", func(b *testing.B) {
		if spoolFig == nil {
			spoolFig = measureIdle(b, startWatcher(b, bin, nil), idle)
		}
		spoolFig.report(b)
	})
	b.Run("sqs", func(b *testing.B) {
		if sqsFig == nil {
			srv := sqstest.Start(b)
			// The default prefix; provisioning creates the queue,
			// not the watcher.
			if _, err := sqs.CreateQueue(context.Background(), srv.Config, transport.WatcherQueue("sera", "web1")); err != nil {
				b.Fatal(err)
			}
			w := startWatcher(b, bin, sqsEnv(srv, nil))
			sqsFig = measureIdle(b, w, idle)
		}
		sqsFig.report(b)
	})
}

// buildSera builds the binary as a user would, without the test's
// instrumentation, so its memory is what a host would see.
//
// SERA_BENCH_BIN, if set, is a binary to measure instead: an older build,
// to compare.
func buildSera(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("SERA_BENCH_BIN"); bin != "" {
		return bin
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		b.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	bin := filepath.Join(b.TempDir(), "sera")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/sera")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// idleWatcher is one `sera watch` process.
type idleWatcher struct {
	// dir holds the watcher's home, state and spool; env is its
	// environment, pub its public key.
	dir, pub string
	env      []string
	cmd      *exec.Cmd
	log      string // its stderr and stdout
	started  time.Time
	exited   chan struct{}
	waitErr  error // set before exited is closed
}

// idleFigures are what measureIdle found.
type idleFigures struct {
	rssKB, hwmKB, cpuMS, idleS float64
}

// startWatcher makes an identity and config named web1 in a fresh
// SERA_HOME, SERA_STATE and SERA_SPOOL under a temporary directory (as
// root the defaults are the machine's own /etc/sera and /var/lib/sera,
// which a benchmark must never touch), then starts `sera watch` and waits
// until it says it is watching. The process is killed in b's cleanup if it
// is still running.
func startWatcher(b *testing.B, bin string, extra map[string]string, clients ...string) *idleWatcher {
	b.Helper()
	dir := b.TempDir()
	env := []string{}
	for _, kv := range os.Environ() {
		// Nothing from the caller's sera or AWS settings leaks in.
		if !strings.HasPrefix(kv, "SERA_") && !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"HOME="+dir,
		"SERA_HOME="+filepath.Join(dir, "home"),
		"SERA_STATE="+filepath.Join(dir, "state"),
		"SERA_SPOOL="+filepath.Join(dir, "spool"),
		"SERA_TRANSPORT=spool",
	)
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	steps := [][]string{{"keygen"}, {"config", "set", "SERA_NAME=web1"}}
	for _, c := range clients {
		steps = append(steps, []string{"clients", "add", c, "--name", "admin"})
	}
	var pub string
	for _, args := range steps {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("sera %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if args[0] == "keygen" {
			pub = strings.TrimSpace(string(out))
		}
	}

	w := &idleWatcher{dir: dir, pub: pub, env: env, log: filepath.Join(dir, "watch.log"), exited: make(chan struct{})}
	logf, err := os.Create(w.log)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	w.cmd = exec.Command(bin, "watch")
	w.cmd.Env = env
	w.cmd.Stdout, w.cmd.Stderr = logf, logf
	// Should the benchmark die without its cleanup, the kernel kills
	// the watcher.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	w.started = time.Now()
	go func() {
		w.waitErr = w.cmd.Wait()
		close(w.exited)
	}()
	b.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			w.cmd.Process.Kill()
			<-w.exited
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(w.output(), "msg=watching") {
		select {
		case <-w.exited:
			b.Fatalf("sera watch exited at start: %v\n%s", w.waitErr, w.output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("sera watch did not start within 30s:\n%s", w.output())
		}
	}
	return w
}

func (w *idleWatcher) output() string {
	out, _ := os.ReadFile(w.log)
	return string(out)
}

func (f *idleFigures) report(b *testing.B) {
	// The time per op would be the idle wait, which says nothing.
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(f.rssKB, "RSS-kB")
	b.ReportMetric(f.hwmKB, "HWM-kB")
	b.ReportMetric(f.cpuMS, "CPU-ms")
	b.ReportMetric(f.idleS, "idle-s")
}

// measureIdle waits until w has run for idle, reads its figures, then
// stops it with SIGTERM and checks that it exits 0, as systemd would stop
// it.
func measureIdle(b *testing.B, w *idleWatcher, idle time.Duration) *idleFigures {
	b.Helper()
	select {
	case <-w.exited:
		b.Fatalf("sera watch exited while idle: %v\n%s", w.waitErr, w.output())
	case <-time.After(time.Until(w.started.Add(idle))):
	}
	pid := w.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := &idleFigures{idleS: time.Since(w.started).Seconds()}
	if f.rssKB, err = statusKB(status, "VmRSS"); err != nil {
		b.Fatal(err)
	}
	if f.hwmKB, err = statusKB(status, "VmHWM"); err != nil {
		b.Fatal(err)
	}
	if f.cpuMS, err = cpuMS(stat); err != nil {
		b.Fatal(err)
	}

	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		b.Fatalf("sera watch did not stop within 30s of SIGTERM:\n%s", w.output())
	}
	if w.waitErr != nil {
		b.Fatalf("sera watch did not exit 0 on SIGTERM: %v\n%s", w.waitErr, w.output())
	}
	if out := w.output(); !strings.Contains(out, "msg=stopped") {
		b.Fatalf("sera watch exited 0 without saying it stopped:\n%s", out)
	}
	return f
}

// statusKB reads a "Name:   1234 kB" line of /proc/PID/status.
func statusKB(status []byte, name string) (float64, error) {
	for _, line := range bytes.Split(status, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte(name+":"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		return strconv.ParseFloat(f[0], 64)
	}
	return 0, fmt.Errorf("no %s line in /proc status", name)
}

// cpuMS reads the user and system CPU time from /proc/PID/stat (fields 14
// and 15, after the parenthesised command name, which may hold spaces).
// They are in clock ticks of USER_HZ, 100 on Linux for every architecture
// sera is built for.
func cpuMS(stat []byte) (float64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	// Fields after ")" start with field 3 (state).
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return (utime + stime) * 10, nil
}
