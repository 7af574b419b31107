package main

import (
	"bufio"
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

	// The watcher's log, line by line as it writes it: each wait below
	// is for the line itself.
	watch := exec.Command("sera", "watch")
	watch.Env = web1
	pipe, err := watch.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	watch.Stdout = watch.Stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		watch.Process.Kill()
		watch.Wait()
	})
	var seen []string
	waitLog := func(re string) string {
		t.Helper()
		want := regexp.MustCompile(re)
		// A guard only: each line comes within seconds.
		guard := time.After(time.Minute)
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("the watcher's log ended without %q:\n%s", re, strings.Join(seen, "\n"))
				}
				seen = append(seen, line)
				if want.MatchString(line) {
					return strings.Join(seen, "\n")
				}
			case <-guard:
				t.Fatalf("no %q in the watcher's log after a minute:\n%s", re, strings.Join(seen, "\n"))
			}
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
	waitLog(`msg=stopped`)
	for line := range lines {
		seen = append(seen, line)
	}
	if err := watch.Wait(); err != nil {
		t.Errorf("watch: %v", err)
	}
	if !regexp.MustCompile(`(?s)msg=starting queue=sera-w-web1.*msg="receive failed; retrying".*msg=watching.*msg=stopped`).MatchString(strings.Join(seen, "\n")) {
		t.Errorf("the watcher's log is not starting, retrying, watching, stopped:\n%s", strings.Join(seen, "\n"))
	}
}
