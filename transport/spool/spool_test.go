package spool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
	"github.com/sera-dev/sera/transport/transporttest"
)

func newSpool(t testing.TB, dir string, opts ...spool.Option) *spool.Spool {
	t.Helper()
	s, err := spool.New(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) transport.Transport {
		return newSpool(t, t.TempDir())
	}, transporttest.Options{DetectsStaleHandles: true})
}

func receiveAll(t *testing.T, s *spool.Spool, q string) []*transport.Message {
	t.Helper()
	var all []*transport.Message
	for {
		msgs, err := s.Receive(context.Background(), q, 10, 0, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			return all
		}
		all = append(all, msgs...)
	}
}

func TestFIFO(t *testing.T) {
	s := newSpool(t, t.TempDir())
	for i := range 50 {
		if err := s.Send(context.Background(), "q", fmt.Appendf(nil, "%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i, m := range receiveAll(t, s, "q") {
		if want := fmt.Sprintf("%02d", i); string(m.Body) != want {
			t.Fatalf("message %d is %q, want %q", i, m.Body, want)
		}
	}
}

func TestBinaryBody(t *testing.T) {
	s := newSpool(t, t.TempDir())
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	if err := s.Send(context.Background(), "q", b); err != nil {
		t.Fatal(err)
	}
	if msgs := receiveAll(t, s, "q"); len(msgs) != 1 || !bytes.Equal(msgs[0].Body, b) {
		t.Fatalf("received %v", msgs)
	}
}

func TestMaxMessageSizeOption(t *testing.T) {
	s := newSpool(t, t.TempDir(), spool.WithMaxMessageSize(10))
	if s.MaxMessageSize() != 10 {
		t.Fatalf("MaxMessageSize = %d", s.MaxMessageSize())
	}
	if err := s.Send(context.Background(), "q", make([]byte, 11)); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("Send of 11 bytes: %v, want ErrTooLarge", err)
	}
	if err := s.Send(context.Background(), "q", make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := spool.New(t.TempDir(), spool.WithMaxMessageSize(0)); err == nil {
		t.Fatal("New accepted a max message size of 0")
	}
}

func TestPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := newSpool(t, dir)
	if err := s.Send(context.Background(), "q", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "q"), filepath.Join(dir, "q", "tmp")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want 0700", d, fi.Mode(), err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "q", "*.*"))
	if len(files) != 1 {
		t.Fatalf("found %v, want one message", files)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v %v, want 0600", files[0], fi.Mode(), err)
	}
}

func TestSymlinkedQueueRefused(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(dir, "q")); err != nil {
		t.Fatal(err)
	}
	s := newSpool(t, dir)
	if err := s.Send(context.Background(), "q", []byte("x")); err == nil {
		t.Error("Send through a symlinked queue succeeded")
	}
	if _, err := s.Receive(context.Background(), "q", 1, 0, time.Second); err == nil {
		t.Error("Receive through a symlinked queue succeeded")
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
		t.Errorf("spool wrote %v through the symlink", entries)
	}
}

func TestStrayFilesIgnored(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	s := newSpool(t, dir)
	if err := s.Send(context.Background(), "q", []byte("real")); err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "q")
	longID := "0000000000000001000000000.0000000000000000.0.0000000000000000"
	secret := filepath.Join(elsewhere, "secret")
	for _, err := range []error{
		os.WriteFile(filepath.Join(q, "garbage"), []byte("x"), 0o600),
		os.WriteFile(filepath.Join(q, "a.b.c.d"), []byte("x"), 0o600),
		os.WriteFile(filepath.Join(q, ".hidden"), []byte("x"), 0o600),
		os.WriteFile(filepath.Join(q, "tmp", "send-123"), []byte("half written"), 0o600),
		os.Mkdir(filepath.Join(q, "000000000000000000000001.0000000000000000.0.0000000000000000"), 0o700),
		os.WriteFile(secret, []byte("secret"), 0o600),
		os.Symlink(secret, filepath.Join(q, "000000000000000000000002.0000000000000000.0.0000000000000000")),
		os.WriteFile(filepath.Join(q, longID), []byte("x"), 0o600),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	msgs := receiveAll(t, s, "q")
	if len(msgs) != 1 || string(msgs[0].Body) != "real" {
		t.Fatalf("received %d messages, want only the real one", len(msgs))
	}
	if _, err := os.Stat(secret); err != nil {
		t.Errorf("symlink target: %v", err)
	}
}

func TestMalformedHandle(t *testing.T) {
	dir := t.TempDir()
	s := newSpool(t, dir)
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"", "../victim", "tmp", "000000000000000000000001.0000000000000000.0.0000000000000000"} {
		m := &transport.Message{Handle: h}
		if err := s.Delete(context.Background(), "q", m); !errors.Is(err, transport.ErrStaleHandle) {
			t.Errorf("Delete(%q): %v, want ErrStaleHandle", h, err)
		}
		if err := s.ChangeVisibility(context.Background(), "q", m, 0); !errors.Is(err, transport.ErrStaleHandle) {
			t.Errorf("ChangeVisibility(%q): %v, want ErrStaleHandle", h, err)
		}
	}
	if _, err := os.Stat(victim); err != nil {
		t.Error(err)
	}
}

// Environment of the child processes of TestMultiProcess.
const (
	childDir = "SPOOL_TEST_CHILD_DIR"
	childOut = "SPOOL_TEST_CHILD_OUT"
)

// A child of TestMultiProcess gets two pipes besides stdio: it closes the
// write end of ready once it can start, and starts when start ends, which
// is when the parent closes its write end for every child at once.
const (
	childStartFD = 3
	childReadyFD = 4
)

func TestMain(m *testing.M) {
	if os.Getenv(childDir) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// pipe returns a pipe whose ends t closes when it ends, if nothing else
// has.
func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		w.Close()
	})
	return r, w
}

// runChild receives from queue "q" with several goroutines, without
// deleting, until the queue is empty, and writes every body it got to a
// file, one per line.
func runChild() error {
	s, err := spool.New(os.Getenv(childDir))
	if err != nil {
		return err
	}
	out := os.Getenv(childOut)
	if err := os.NewFile(childReadyFD, "ready").Close(); err != nil {
		return err
	}
	// Start together with the other children, to race for every message.
	if _, err := io.Copy(io.Discard, os.NewFile(childStartFD, "start")); err != nil {
		return fmt.Errorf("waiting for the start: %w", err)
	}
	var (
		mu   sync.Mutex
		got  bytes.Buffer
		wg   sync.WaitGroup
		errs = make(chan error, 4)
	)
	for range 4 {
		wg.Go(func() {
			for {
				msgs, err := s.Receive(context.Background(), "q", 3, 100*time.Millisecond, time.Minute)
				if err != nil {
					errs <- err
					return
				}
				if len(msgs) == 0 {
					return
				}
				mu.Lock()
				for _, m := range msgs {
					fmt.Fprintf(&got, "%s\n", m.Body)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return os.WriteFile(out, got.Bytes(), 0o600)
}

// TestMultiProcess proves that receivers in different processes never get
// the same message while it is hidden: the children race for every message
// and none is deleted, so a message received twice would show up twice.
func TestMultiProcess(t *testing.T) {
	const n, children = 600, 3
	dir, work := t.TempDir(), t.TempDir()
	s := newSpool(t, dir)
	// Each Send syncs to disk; several at once share the waits.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if err := s.Send(context.Background(), "q", fmt.Appendf(nil, "m%04d", i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	startR, startW := pipe(t)
	var cmds []*exec.Cmd
	var outs []string
	var readies []*os.File
	for i := range children {
		out := filepath.Join(work, fmt.Sprintf("child%d", i))
		readyR, readyW := pipe(t)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childDir+"="+dir, childOut+"="+out)
		cmd.Stderr = os.Stderr
		cmd.ExtraFiles = []*os.File{startR, readyW} // childStartFD, childReadyFD
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		readyW.Close()
		cmds, outs, readies = append(cmds, cmd), append(outs, out), append(readies, readyR)
	}
	startR.Close()
	// The child closes its end once ready, or by dying; the deadline
	// only guards against one that hangs before it.
	for _, r := range readies {
		r.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatalf("waiting for a child to get ready: %v", err)
		}
	}
	startW.Close()
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	seen := map[string]int{}
	receivers := 0
	for i, out := range outs {
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Fields(string(b))
		t.Logf("child %d received %d messages", i, len(lines))
		if len(lines) > 0 {
			receivers++
		}
		for _, l := range lines {
			seen[l]++
		}
	}
	// A loaded machine may starve one child, hardly two.
	if receivers < 2 {
		t.Errorf("only %d child received messages: the children did not race", receivers)
	}
	for i := range n {
		if b := fmt.Sprintf("m%04d", i); seen[b] != 1 {
			t.Errorf("message %s received %d times, want once", b, seen[b])
		}
	}
	if len(seen) != n {
		t.Errorf("received %d distinct messages, want %d", len(seen), n)
	}
}

// Sent is the sender's clock, also when that clock is behind the IDs this
// process made before (a clock set back; a fake clock after the real one):
// a message must not look sent in the future of the clock that sent it.
func TestSentFollowsTheClockBack(t *testing.T) {
	dir := t.TempDir()
	if err := newSpool(t, dir).Send(context.Background(), "q", []byte("now")); err != nil {
		t.Fatal(err)
	}
	// The bubble's clock starts in 2000, decades behind the ID just made.
	synctest.Test(t, func(t *testing.T) {
		s := newSpool(t, dir, spool.WithPolling())
		before := time.Now()
		if err := s.Send(context.Background(), "q", []byte("then")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour)
		found := false
		for _, m := range receiveAll(t, s, "q") {
			if string(m.Body) == "then" {
				found = true
				if !m.Sent.Equal(before) {
					t.Errorf("Sent = %v, want the bubble's send time %v", m.Sent, before)
				}
			}
		}
		if !found {
			t.Error("the message sent in the bubble was not received")
		}
	})
}
