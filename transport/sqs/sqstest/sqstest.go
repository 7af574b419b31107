// Package sqstest runs fauxqs, a real SQS server, for tests. fauxqs is
// pinned by the npm project in transport/sqs/testdata/npm, which `make deps`
// installs with npm ci.
package sqstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Server is a running fauxqs.
type Server struct {
	// Endpoint is the server's URL, always on 127.0.0.1: fauxqs listens
	// on every interface and authenticates no one.
	Endpoint string
	// Config points the AWS SDK at Endpoint with static test credentials
	// in us-east-1, whatever the environment says.
	Config aws.Config
}

// Start starts fauxqs and kills it in t's cleanup. When fauxqs is not
// installed it skips t, or fails it if CI=true, because CI must never
// silently skip the SQS tests.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := fauxqsPath()
	if err == nil {
		_, err = exec.LookPath("node")
	}
	if err != nil {
		msg := fmt.Sprintf("fauxqs is not installed, run make deps: %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// The free port may be taken before fauxqs binds it; try again then.
	var errs []error
	for range 3 {
		srv, err := start(t, bin)
		if err == nil {
			return srv
		}
		errs = append(errs, err)
	}
	t.Fatalf("failed to start fauxqs: %v", errors.Join(errs...))
	return nil
}

func start(t testing.TB, bin string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(t.TempDir(), "fauxqs.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "FAUXQS_PORT="+strconv.Itoa(port), "FAUXQS_LOGGER=false")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHealthy(endpoint, exited); err != nil {
		stop()
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("%w (output: %q)", err, out)
	}
	t.Cleanup(stop)
	return &Server{
		Endpoint: endpoint,
		Config: aws.Config{
			Region:       "us-east-1",
			Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
			BaseEndpoint: aws.String(endpoint),
		},
	}, nil
}

// waitHealthy waits until fauxqs answers its health check.
func waitHealthy(endpoint string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(endpoint + "/health")
		if err == nil {
			var health struct{ Status string }
			err = json.NewDecoder(resp.Body).Decode(&health)
			resp.Body.Close()
			if err == nil && health.Status == "ok" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fauxqs not healthy after 30s: %v", err)
		}
		select {
		case <-exited:
			return errors.New("fauxqs exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// fauxqsPath finds the fauxqs installed in the repository, next to this
// file or, in a -trimpath build, below the go.mod above the working
// directory.
func fauxqsPath() (string, error) {
	const rel = "testdata/npm/node_modules/.bin/fauxqs"
	var p string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p = filepath.Join(filepath.Dir(file), "..", rel)
	} else {
		dir, err := os.Getwd()
		if err != nil {
			return "", err
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				return "", errors.New("go.mod not found")
			}
			dir = parent
		}
		p = filepath.Join(dir, "transport", "sqs", rel)
	}
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}
