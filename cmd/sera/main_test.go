package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		// With SERA_TEST_EXIT set, the exit status is also printed, so
		// scripts can assert it (testscript only tells zero from not).
		"sera": func() {
			code := run()
			if code != 0 && os.Getenv("SERA_TEST_EXIT") != "" {
				fmt.Fprintf(os.Stderr, "[exit %d]\n", code)
			}
			os.Exit(code)
		},
	})
}

// TestCLI runs the scripts of the CLI's own behaviour (arguments, files,
// settings, exit statuses) that need no watcher.
func TestCLI(t *testing.T) {
	t.Parallel()
	testscript.Run(t, testscript.Params{
		Dir:   "testdata/cli",
		Setup: setup(nil, false),
		Cmds:  cmds(nil),
	})
}

// TestEndToEndSpool runs the client ↔ watcher scripts over the spool.
func TestEndToEndSpool(t *testing.T) {
	t.Parallel()
	testscript.Run(t, testscript.Params{
		Dir:   "testdata/e2e",
		Setup: setup(nil, false),
		Condition: func(cond string) (bool, error) {
			if cond == "sqs" {
				return false, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: cmds(nil).with(func(ts *testscript.TestScript) (transport.Transport, error) {
			return spool.New(ts.Getenv("SERA_SPOOL"))
		}),
	})
}

// TestEndToEndSQS runs the same scripts over a real SQS server (fauxqs),
// with queues created as provisioning would.
func TestEndToEndSQS(t *testing.T) {
	t.Parallel()
	srv := sqstest.Start(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/e2e",
		Setup: setup(sqsEnv(srv, map[string]string{
			// For scripts that turn SNS fan-out on.
			"SERA_ACCOUNT": fauxqsAccount,
		}), true),
		Condition: func(cond string) (bool, error) {
			if cond == "sqs" {
				return true, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: cmds(func(ts *testscript.TestScript, watchers []string) error {
			// Every script uses its own prefix, so scripts sharing
			// the server never share a queue.
			prefix := scriptPrefix(ts)
			queues := []string{}
			for _, w := range watchers {
				queues = append(queues, transport.WatcherQueue(prefix, w))
			}
			if len(watchers) == 0 {
				b, err := os.ReadFile(filepath.Join(ts.Getenv("SERA_HOME"), "key"))
				if err != nil {
					return err
				}
				id, err := crypto.ParseIdentityFile(b)
				if err != nil {
					return err
				}
				// Every reply queue of the identity, as 'client register'.
				for n := range settings.DefaultReplyQueues {
					queues = append(queues, transport.ReplyQueue(prefix, id.Public().Fingerprint(), n))
				}
			}
			for _, q := range queues {
				if _, err := sqs.CreateQueue(context.Background(), srv.Config, q); err != nil {
					return err
				}
			}
			return nil
		}, func(ts *testscript.TestScript, args []string) error {
			return mktopics(srv.Config, scriptPrefix(ts), args)
		}).with(func(*testscript.TestScript) (transport.Transport, error) {
			return sqs.NewFromConfig(srv.Config), nil
		}),
	})
}

// sqsEnv is the environment of a sera on srv, with extra.
func sqsEnv(srv *sqstest.Server, extra map[string]string) map[string]string {
	env := map[string]string{
		"SERA_TRANSPORT":            "sqs",
		"AWS_ENDPOINT_URL":          srv.Endpoint,
		"AWS_ACCESS_KEY_ID":         "test",
		"AWS_SECRET_ACCESS_KEY":     "test",
		"AWS_REGION":                "us-east-1",
		"AWS_EC2_METADATA_DISABLED": "true",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// mkReplyQueues makes the reply queues of the identity in the key file at
// path, as 'sera client register' does.
func mkReplyQueues(tb testing.TB, srv *sqstest.Server, path string) {
	tb.Helper()
	key, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := crypto.ParseIdentityFile(key)
	if err != nil {
		tb.Fatal(err)
	}
	for n := range settings.DefaultReplyQueues {
		if _, err := sqs.CreateQueue(context.Background(), srv.Config, transport.ReplyQueue("sera", id.Public().Fingerprint(), n)); err != nil {
			tb.Fatal(err)
		}
	}
}

func scriptPrefix(ts *testscript.TestScript) string {
	if p := ts.Getenv("SERA_PREFIX"); p != "" {
		return p
	}
	return "sera"
}

// fauxqsAccount is the account ID in the ARNs of fauxqs.
const fauxqsAccount = "000000000000"

// mktopics creates the topic of every watcher and of its groups, and
// subscribes the watcher's queue to them with raw delivery, as 'sera
// watcher register' does. args are WATCHER[:GROUP,…].
func mktopics(cfg aws.Config, prefix string, args []string) error {
	ctx := context.Background()
	client := sns.NewFromConfig(cfg)
	for _, a := range args {
		name, groups, _ := strings.Cut(a, ":")
		topics := []string{transport.AllTopic(prefix)}
		for _, g := range strings.Split(groups, ",") {
			if g != "" {
				topics = append(topics, transport.GroupTopic(prefix, g))
			}
		}
		queueARN := fmt.Sprintf("arn:aws:sqs:%s:%s:%s", cfg.Region, fauxqsAccount, transport.WatcherQueue(prefix, name))
		for _, topic := range topics {
			out, err := client.CreateTopic(ctx, &sns.CreateTopicInput{Name: &topic})
			if err != nil {
				return fmt.Errorf("create topic %s: %w", topic, err)
			}
			if _, err := client.Subscribe(ctx, &sns.SubscribeInput{
				TopicArn: out.TopicArn, Protocol: aws.String("sqs"), Endpoint: &queueARN,
				Attributes: map[string]string{"RawMessageDelivery": "true"},
			}); err != nil {
				return fmt.Errorf("subscribe %s to %s: %w", name, topic, err)
			}
		}
	}
	return nil
}

// setup gives every script a private HOME and SERA_* environment, so no
// script reads the real ~/.sera, plus extra variables (e.g. the SQS
// endpoint), and with ownPrefix a queue prefix of its own.
func setup(extra map[string]string, ownPrefix bool) func(*testscript.Env) error {
	return func(env *testscript.Env) error {
		env.Setenv("HOME", env.WorkDir)
		// A -race binary otherwise sleeps 1 s at exit: every exec.
		env.Setenv("GORACE", "atexit_sleep_ms=0")
		env.Setenv("SERA_SPOOL", env.WorkDir+"/spool")
		env.Setenv("SERA_TRANSPORT", "spool")
		// As root the default state is /var/lib/sera: never touch the
		// machine's own.
		env.Setenv("SERA_STATE", env.WorkDir+"/state")
		for k, v := range extra {
			env.Setenv(k, v)
		}
		if ownPrefix {
			// Scripts share one SQS server: each gets its own queues.
			env.Setenv("SERA_PREFIX", "t"+strings.TrimPrefix(filepath.Base(env.WorkDir), "script-"))
		}
		return nil
	}
}

// cmds are the scripts' helper commands:
//
//	setenvfile VAR FILE   set VAR to FILE's contents, trimmed
//	mode PERM FILE        FILE's permission bits are PERM (octal)
//	waitgrep PATTERN FILE wait until FILE, written by a background
//	                      process (a watcher's audit log), matches the
//	                      regular expression PATTERN
//	mkqueues [WATCHER…]   create the queues the transport needs (SQS only):
//	                      each watcher's, or with no argument the reply
//	                      queue of the key in $SERA_HOME
//	mktopics WATCHER[:GROUP,…]…
//	                      create the SNS topics of every watcher and its
//	                      groups and subscribe its queue, as provisioning
//	                      would (SQS only)
//	parallel P N CMD ARG… run the program CMD N times, P at once, with the
//	                      script's environment; fails unless every run
//	                      exits 0 (see scriptCmds.with)
//	noreplies             every reply queue of the key in $SERA_HOME is
//	                      empty: no reply was left behind (see with)
//	nomessages WATCHER    the watcher's queue holds no message (see with)
func cmds(mkqueues func(ts *testscript.TestScript, watchers []string) error, mktopics ...func(ts *testscript.TestScript, args []string) error) scriptCmds {
	return scriptCmds{
		"mktopics": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg {
				ts.Fatalf("unsupported: ! mktopics")
			}
			for _, f := range mktopics {
				ts.Check(f(ts, args))
			}
		},
		"setenvfile": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) != 2 {
				ts.Fatalf("usage: setenvfile VAR FILE")
			}
			ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile(args[1])))
		},
		"waitgrep": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) != 2 {
				ts.Fatalf("usage: waitgrep PATTERN FILE")
			}
			re, err := regexp.Compile(args[0])
			ts.Check(err)
			file := ts.MkAbs(args[1])
			// A guard only: the line is expected within milliseconds.
			for deadline := time.Now().Add(2 * time.Minute); ; {
				data, _ := os.ReadFile(file)
				if re.Match(data) {
					return
				}
				if time.Now().After(deadline) {
					ts.Fatalf("no match for %q in %s after 2 minutes:\n%s", args[0], args[1], data)
				}
				// Polling another process's file: it tells no one
				// when it has written.
				time.Sleep(10 * time.Millisecond)
			}
		},
		"mode": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg || len(args) != 2 {
				ts.Fatalf("usage: mode PERM FILE")
			}
			fi, err := os.Lstat(ts.MkAbs(args[1]))
			ts.Check(err)
			if got := fmt.Sprintf("%04o", fi.Mode().Perm()); got != args[0] {
				ts.Fatalf("%s has mode %s, want %s", args[1], got, args[0])
			}
		},
		"mkqueues": func(ts *testscript.TestScript, neg bool, args []string) {
			if neg {
				ts.Fatalf("unsupported: ! mkqueues")
			}
			if mkqueues != nil {
				ts.Check(mkqueues(ts, args))
			}
		},
	}
}

// scriptCmds are the helper commands of a set of scripts.
type scriptCmds map[string]func(*testscript.TestScript, bool, []string)

// with adds the commands that need the scripts' transport, which open
// returns.
func (c scriptCmds) with(open func(*testscript.TestScript) (transport.Transport, error)) scriptCmds {
	c["parallel"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if neg || len(args) < 3 {
			ts.Fatalf("usage: parallel P N CMD ARG…")
		}
		p, err1 := strconv.Atoi(args[0])
		n, err2 := strconv.Atoi(args[1])
		if err1 != nil || err2 != nil || p < 1 || n < 1 {
			ts.Fatalf("usage: parallel P N CMD ARG…")
		}
		env := scriptEnv(ts)
		errs := make([]error, n)
		var wg sync.WaitGroup
		next := make(chan int)
		for range p {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					cmd := exec.Command(args[2], args[3:]...)
					cmd.Env, cmd.Dir = env, ts.Getenv("WORK")
					if out, err := cmd.CombinedOutput(); err != nil {
						errs[i] = fmt.Errorf("run %d: %v: %s", i, err, out)
					}
				}
			}()
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		failed := 0
		for _, err := range errs {
			if err != nil {
				failed++
				ts.Logf("%v", err)
			}
		}
		if failed > 0 {
			ts.Fatalf("%d of %d runs failed", failed, n)
		}
	}
	c["nomessages"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if neg || len(args) != 1 {
			ts.Fatalf("usage: nomessages WATCHER")
		}
		tr, err := open(ts)
		ts.Check(err)
		defer tr.Close()
		q := transport.WatcherQueue(scriptPrefix(ts), args[0])
		msgs, err := tr.Receive(context.Background(), q, 10, 0, time.Minute)
		ts.Check(err)
		if len(msgs) > 0 {
			ts.Fatalf("queue %s holds %d messages", q, len(msgs))
		}
	}
	c["noreplies"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if neg || len(args) != 0 {
			ts.Fatalf("usage: noreplies")
		}
		b, err := os.ReadFile(filepath.Join(ts.Getenv("SERA_HOME"), "key"))
		ts.Check(err)
		id, err := crypto.ParseIdentityFile(b)
		ts.Check(err)
		tr, err := open(ts)
		ts.Check(err)
		defer tr.Close()
		for i := range transport.MaxReplyQueues {
			q := transport.ReplyQueue(scriptPrefix(ts), id.Public().Fingerprint(), i)
			msgs, err := tr.Receive(context.Background(), q, 10, 0, time.Minute)
			if errors.Is(err, transport.ErrNoQueue) {
				continue
			}
			ts.Check(err)
			if len(msgs) > 0 {
				ts.Fatalf("reply queue %s holds %d messages no one took", q, len(msgs))
			}
		}
	}
	return c
}

// scriptEnv is the environment a script's exec would give a program: what
// the test process has, with the script's own values of the variables
// testscript and the scripts set.
func scriptEnv(ts *testscript.TestScript) []string {
	keys := map[string]bool{"PATH": true, "HOME": true, "WORK": true, "TMPDIR": true, "GORACE": true}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	for _, d := range settings.All {
		keys[d.Key] = true
	}
	for _, k := range []string{"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_EC2_METADATA_DISABLED"} {
		keys[k] = true
	}
	var env []string
	for k := range keys {
		if v := ts.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}
