package sqstest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// Proxy forwards TCP connections to a Server and can be taken down: then
// every open connection is cut and every new one closed at once, as a
// queue server that went away looks to its clients, while the server
// keeps its queues for when the proxy is up again.
type Proxy struct {
	// Endpoint is the proxy's URL, to use instead of the server's.
	Endpoint string
	// Config is the server's Config with Endpoint instead.
	Config aws.Config

	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool

	refused atomic.Int64
}

// Proxy starts a proxy to s, stopped in t's cleanup.
func (s *Server) Proxy(t testing.TB) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{
		Endpoint: "http://" + ln.Addr().String(),
		ln:       ln, target: s.Endpoint[len("http://"):], conns: map[net.Conn]bool{},
	}
	p.Config = s.Config.Copy()
	p.Config.BaseEndpoint = aws.String(p.Endpoint)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.Down()
		wg.Wait()
	})
	return p
}

func (p *Proxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		p.refused.Add(1)
		c.Close()
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// Down cuts every connection through the proxy and refuses new ones
// until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
}

// Up lets connections through again.
func (p *Proxy) Up() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// Refused is how many connections the proxy closed at once while down.
func (p *Proxy) Refused() int64 { return p.refused.Load() }
