//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// benchFleet is a laptop identity and a watcher, web1, that trusts it, as
// the real binary sees them: what an admin's `sera ping --to web1` runs
// against.
type benchFleet struct {
	bin    string
	laptop []string // the laptop's environment
}

// newBenchFleet sets up the laptop and starts web1 on the spool, or with
// useSQS on a fresh local SQS server (fauxqs), the queues created first as
// registration does.
func newBenchFleet(b *testing.B, bin string, useSQS bool) *benchFleet {
	b.Helper()
	dir := b.TempDir()
	extra := map[string]string{}
	var srv *sqstest.Server
	if useSQS {
		srv = sqstest.Start(b)
		extra = sqsEnv(srv, nil)
	}
	env := append(cleanEnv(dir), "SERA_HOME="+filepath.Join(dir, "home"), "SERA_STATE="+filepath.Join(dir, "state"))
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	pub := strings.TrimSpace(string(mustRun(b, bin, env, "keygen")))
	if srv != nil {
		mkReplyQueues(b, srv, filepath.Join(dir, "home", "key"))
		if _, err := sqs.CreateQueue(context.Background(), srv.Config, transport.WatcherQueue("sera", "web1")); err != nil {
			b.Fatal(err)
		}
	}
	w := startWatcher(b, bin, extra, pub)
	env = append(env, "SERA_SPOOL="+filepath.Join(w.dir, "spool"))
	mustRun(b, bin, env, "watchers", "add", "web1", w.pub)
	return &benchFleet{bin: bin, laptop: env}
}

// cleanEnv is the benchmark's environment without the caller's sera and
// AWS settings, with HOME set to home.
func cleanEnv(home string) []string {
	env := []string{"HOME=" + home}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SERA_") && !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return env
}

func mustRun(b *testing.B, bin string, env []string, args ...string) []byte {
	b.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		b.Fatalf("sera %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// ping runs one whole `sera ping --to web1` process and returns the CPU
// time it used (user and system, all its threads).
func (f *benchFleet) ping(b *testing.B) time.Duration {
	cpu, err := f.tryPing()
	if err != nil {
		b.Fatal(err)
	}
	return cpu
}

// tryPing is ping for goroutines other than the benchmark's.
func (f *benchFleet) tryPing() (time.Duration, error) {
	cmd := exec.Command(f.bin, "ping", "--to", "web1", "--timeout", "60s")
	cmd.Env = f.laptop
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("sera ping: %v\n%s", err, out)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// BenchmarkPingProcess measures what an admin waits for: a whole `sera ping
// --to web1` process, start-up included, against a watcher on the same
// machine, on the spool and on a local SQS server. It reports the median
// and 90th percentile of b.N runs (use -benchtime=50x or so).
func BenchmarkPingProcess(b *testing.B) {
	const pingWarmup = 5
	bin := buildSera(b)
	for _, kind := range []string{"spool", "sqs"} {
		b.Run(kind, func(b *testing.B) {
			f := newBenchFleet(b, bin, kind == "sqs")
			// The first requests warm the watcher's caches and the
			// queue server's.
			for range pingWarmup {
				f.ping(b)
			}
			times := make([]time.Duration, 0, b.N)
			cpus := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				cpus = append(cpus, f.ping(b))
				times = append(times, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(times)
			slices.Sort(cpus)
			b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
			b.ReportMetric(float64(times[len(times)*9/10].Microseconds())/1000, "p90-ms")
			// The client's own CPU time varies far less from run to run
			// than the wall time, which the queue server and the watcher
			// share: it is the figure to compare builds by.
			b.ReportMetric(float64(cpus[len(cpus)/2].Microseconds())/1000, "cpu-median-ms")
		})
	}
}

// BenchmarkParallelProcesses measures 64 `sera ping` processes of one
// identity, run 1 and 8 at a time: the throughput a script gets that runs
// sera in parallel from one key. Each op is the whole batch of 64.
func BenchmarkParallelProcesses(b *testing.B) {
	const requests = 64
	bin := buildSera(b)
	for _, kind := range []string{"spool", "sqs"} {
		for _, procs := range []int{1, 8} {
			b.Run(kind+"/"+map[int]string{1: "1proc", 8: "8procs"}[procs], func(b *testing.B) {
				f := newBenchFleet(b, bin, kind == "sqs")
				f.ping(b)
				b.ResetTimer()
				start := time.Now()
				for range b.N {
					var wg sync.WaitGroup
					next := make(chan struct{})
					errs := make(chan error, requests)
					for range procs {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for range next {
								if _, err := f.tryPing(); err != nil {
									errs <- err
								}
							}
						}()
					}
					for range requests {
						next <- struct{}{}
					}
					close(next)
					wg.Wait()
					close(errs)
					for err := range errs {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(requests*b.N)/time.Since(start).Seconds(), "req/s")
			})
		}
	}
}
