package sqs_test

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// TestConnectionsKept sends as a client fans a request out, 32 sends at a
// time, through a proxy that counts the connections: they are reused from
// one wave to the next, not closed and dialled again (with the SDK's
// default of 10 idle connections per host, four waves took about 100).
func TestConnectionsKept(t *testing.T) {
	srv := sqstest.Start(t)
	ctx := context.Background()
	if _, err := sqs.CreateQueue(ctx, srv.Config, "conns"); err != nil {
		t.Fatal(err)
	}
	target := srv.Endpoint[len("http://"):]
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	var proxies sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		proxies.Wait()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			proxies.Go(func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
				}()
				io.Copy(c, up)
			})
		}
	}()

	cfg := srv.Config.Copy()
	cfg.BaseEndpoint = aws.String("http://" + l.Addr().String())
	tr := sqs.NewFromConfig(cfg)
	const workers, waves = 32, 4
	for range waves {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for range workers {
			wg.Go(func() { errs <- tr.Send(ctx, "conns", []byte("x")) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// One wave needs 32. More may be dialled when a send starts before
	// the connection of one that just returned is back in the pool (the
	// HTTP client puts it back after the caller has the response), and on
	// a loaded machine that race is won often: 44 were seen with two test
	// suites running. Without reuse (the SDK's default of 2 idle
	// connections per host) each wave dials about 30 anew, over 120 in
	// all; two waves' worth is the bound that tells the two apart.
	const most = 2 * workers
	if n := accepted.Load(); n > most {
		t.Errorf("%d connections for %d waves of %d parallel sends, want at most %d", n, waves, workers, most)
	} else {
		t.Logf("%d connections for %d waves of %d parallel sends", n, waves, workers)
	}
}
