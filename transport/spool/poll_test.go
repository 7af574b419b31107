package spool_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
	"github.com/sera-dev/sera/transport/transporttest"
)

// A polling spool is the same transport, found by listing instead of by
// inotify.
func TestConformancePolling(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) transport.Transport {
		return newSpool(t, t.TempDir(), spool.WithPolling())
	}, transporttest.Options{DetectsStaleHandles: true})
}

// What WithPolling is for: a waiting Receive runs on testing/synctest's
// fake clock. It waits the whole wait when nothing comes, and takes a
// message sent while it waits within one poll interval (15ms).
func TestPollingInFakeTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newSpool(t, t.TempDir(), spool.WithPolling())
		ctx := context.Background()
		t0 := time.Now()
		if msgs, err := s.Receive(ctx, "q", 1, time.Minute, time.Minute); err != nil || len(msgs) != 0 {
			t.Fatalf("Receive on an empty queue: %d messages, %v", len(msgs), err)
		}
		if d := time.Since(t0); d != time.Minute {
			t.Errorf("an empty Receive returned after %s, want its 1m wait", d)
		}
		go func() {
			time.Sleep(time.Second)
			if err := s.Send(ctx, "q", []byte("hello")); err != nil {
				t.Error(err)
			}
		}()
		t0 = time.Now()
		msgs, err := s.Receive(ctx, "q", 1, time.Minute, time.Minute)
		if err != nil || len(msgs) != 1 || string(msgs[0].Body) != "hello" {
			t.Fatalf("Receive: %d messages, %v", len(msgs), err)
		}
		if d := time.Since(t0); d < time.Second || d > time.Second+15*time.Millisecond {
			t.Errorf("a message sent 1s into the wait was taken %s into it, want within 15ms of its arrival", d)
		}
	})
}
