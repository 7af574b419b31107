package spool

import (
	"context"
	"testing"
	"time"
)

// BenchmarkWake is the time from the start of a Send to the return of a
// Receive that was already waiting: the latency the spool adds to every
// hop. With inotify it is the Send's own cost plus a wake-up; with the
// directory poll alone it averages half the poll interval more.
func BenchmarkWake(b *testing.B) {
	s, err := New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var total, sending time.Duration
	for b.Loop() {
		got := make(chan time.Time, 1)
		ready := make(chan struct{})
		go func() {
			close(ready)
			m, err := s.Receive(ctx, "q", 1, 10*time.Second, time.Minute)
			if err != nil || len(m) != 1 {
				b.Errorf("receive: %v, %d messages", err, len(m))
			}
			got <- time.Now()
			if len(m) == 1 {
				s.Delete(ctx, "q", m[0])
			}
		}()
		<-ready
		time.Sleep(5 * time.Millisecond) // the receiver is waiting
		start := time.Now()
		if err := s.Send(ctx, "q", []byte("ping")); err != nil {
			b.Fatal(err)
		}
		sending += time.Since(start)
		total += (<-got).Sub(start)
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/wake")
	b.ReportMetric(float64(sending.Microseconds())/float64(b.N)/1000, "ms/send")
}
