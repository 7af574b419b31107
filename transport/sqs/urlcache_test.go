package sqs_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// countingClient counts the SQS operations sent through it, by name.
type countingClient struct {
	mu  sync.Mutex
	ops map[string]int
}

func (c *countingClient) Do(r *http.Request) (*http.Response, error) {
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "AmazonSQS.")
	c.mu.Lock()
	c.ops[op]++
	c.mu.Unlock()
	return http.DefaultClient.Do(r)
}

func (c *countingClient) count(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops[op]
}

// The second process of one configuration finds its queues' URLs in the
// cache: no GetQueueUrl at all. A cache of another account's URLs costs a
// lookup, not a lost message, and is corrected.
func TestURLCache(t *testing.T) {
	srv := sqstest.Start(t)
	ctx := context.Background()
	for _, q := range []string{"uc-a", "uc-b"} {
		if _, err := sqs.CreateQueue(ctx, srv.Config, q); err != nil {
			t.Fatal(err)
		}
	}
	cache := filepath.Join(t.TempDir(), "sqs-urls.json")
	open := func() (*sqs.Transport, *countingClient) {
		c := &countingClient{ops: map[string]int{}}
		cfg := srv.Config.Copy()
		cfg.HTTPClient = c
		return sqs.NewFromConfig(cfg).WithURLCache(ctx, cache), c
	}

	first, c1 := open()
	if err := first.Send(ctx, "uc-a", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := first.Send(ctx, "uc-b", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if n := c1.count("GetQueueUrl"); n != 1 {
		t.Errorf("first process: %d GetQueueUrl calls, want 1 (the second queue's URL is derived)", n)
	}
	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatalf("no cache written: %v", err)
	}
	if fi, _ := os.Stat(cache); fi.Mode().Perm() != 0o600 {
		t.Errorf("cache mode %v, want 0600", fi.Mode().Perm())
	}

	second, c2 := open()
	for q, want := range map[string]string{"uc-a": "one", "uc-b": "two"} {
		msgs, err := second.Receive(ctx, q, 1, 5*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 || string(msgs[0].Body) != want {
			t.Fatalf("receive %s: %v, %d messages", q, err, len(msgs))
		}
		if err := second.Delete(ctx, q, msgs[0]); err != nil {
			t.Fatal(err)
		}
	}
	if n := c2.count("GetQueueUrl"); n != 0 {
		t.Errorf("second process: %d GetQueueUrl calls, want none", n)
	}

	// A cache that names another account: found out at the first call,
	// looked up, corrected, and the message is sent all the same.
	var f map[string]string
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	good := f["base"]
	f["base"] = strings.Replace(good, "/000000000000/", "/111111111111/", 1)
	if f["base"] == good {
		t.Fatalf("base %q has no account to replace", good)
	}
	wrong, _ := json.Marshal(f)
	if err := os.WriteFile(cache, wrong, 0o600); err != nil {
		t.Fatal(err)
	}
	third, c3 := open()
	if err := third.Send(ctx, "uc-a", []byte("three")); err != nil {
		t.Fatalf("send with a wrong cache: %v", err)
	}
	if n := c3.count("GetQueueUrl"); n != 1 {
		t.Errorf("wrong cache: %d GetQueueUrl calls, want 1", n)
	}
	msgs, err := third.Receive(ctx, "uc-a", 1, 5*time.Second, time.Minute)
	if err != nil || len(msgs) != 1 || string(msgs[0].Body) != "three" {
		t.Fatalf("the message sent with a wrong cache is not on its queue: %v, %d", err, len(msgs))
	}
	if b, _ := os.ReadFile(cache); !strings.Contains(string(b), good) {
		t.Errorf("cache not corrected: %s", b)
	}

	// A queue that does not exist is still reported as such.
	if err := third.Send(ctx, "uc-missing", []byte("x")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("send to a missing queue with the cache: %v, want queue does not exist", err)
	}
}
