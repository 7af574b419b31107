package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// A watcher started before its queue exists waits for it and says why,
// says "watching" (and READY=1 under systemd) only once the queue
// answered, naming its URL, and serves the first request after the queue
// appears within its longest retry wait.
func TestWatcherStartsBeforeItsQueue(t *testing.T) {
	t.Parallel()
	srv := sqstest.Start(t)
	dir := t.TempDir()
	env := []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH"), "GORACE=atexit_sleep_ms=0"}
	for k, v := range sqsEnv(srv, nil) {
		env = append(env, k+"="+v)
	}
	laptop := append(slices.Clip(env), "SERA_HOME="+filepath.Join(dir, "laptop"), "SERA_STATE="+filepath.Join(dir, "laptop", "state"))
	web1 := append(slices.Clip(env), "SERA_HOME="+filepath.Join(dir, "web1"), "SERA_STATE="+filepath.Join(dir, "web1", "state"))
	sera := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command("sera", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sera %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	cpub := sera(laptop, "keygen")
	cpub = strings.Fields(cpub)[0]
	wpub := strings.Fields(sera(web1, "keygen"))[0]
	sera(web1, "config", "set", "SERA_NAME=web1")
	sera(web1, "clients", "add", cpub, "--name", "admin")
	sera(laptop, "watchers", "add", "web1", wpub)
	ctx := context.Background()
	mkReplyQueues(t, srv, filepath.Join(dir, "laptop", "key"))

	logPath := filepath.Join(dir, "watch.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	watch := exec.Command("sera", "watch")
	watch.Env, watch.Stdout, watch.Stderr = web1, logf, logf
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- watch.Wait() }()
	t.Cleanup(func() {
		watch.Process.Kill()
		<-exited
	})
	waitLog := func(re string) string {
		t.Helper()
		// A guard only: each line comes within seconds.
		for deadline := time.Now().Add(time.Minute); ; {
			b, _ := os.ReadFile(logPath)
			if regexp.MustCompile(re).Match(b) {
				return string(b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the watcher's log after a minute:\n%s", re, b)
			}
			// Another process's file: it tells no one when it wrote.
			time.Sleep(20 * time.Millisecond)
		}
	}
	log := waitLog(`msg="receive failed; retrying".*does not exist`)
	if strings.Contains(log, "msg=watching") {
		t.Fatalf("the watcher says it is watching a queue that does not exist:\n%s", log)
	}

	if _, err := sqs.CreateQueue(ctx, srv.Config, transport.WatcherQueue("sera", "web1")); err != nil {
		t.Fatal(err)
	}
	out := sera(laptop, "ping", "--to", "web1", "--timeout", "30s")
	if !regexp.MustCompile(`(?m)^name +web1$`).MatchString(out) {
		t.Errorf("ping: %s", out)
	}
	waitLog(`msg=watching queue=sera-w-web1 at=http://\S+/sera-w-web1 `)
	watch.Process.Signal(syscall.SIGINT)
	if err := <-exited; err != nil {
		t.Errorf("watch: %v", err)
	}
	exited <- nil
	b, _ := os.ReadFile(logPath)
	if !regexp.MustCompile(`(?s)msg=starting queue=sera-w-web1.*msg="receive failed; retrying".*msg=watching.*msg=stopped`).Match(b) {
		t.Errorf("the watcher's log is not starting, retrying, watching, stopped:\n%s", b)
	}
}
