package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// readmeBlock is the shell block of README.md after the marker
// "<!-- readme-test: NAME -->".
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- readme-test: " + regexp.QuoteMeta(name) + " -->\n```sh\n(.*?)\n```\n")
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("README.md has no block marked readme-test: %s", name)
	}
	return string(m[1])
}

// runReadme runs a README block as written, with bash, as a user would
// paste it: the built sera first on PATH, a home and TMPDIR of its own, and
// env beside them and nothing else. As root it runs as nobody, since the
// README says to run it as a normal user (root's state is /var/lib/sera).
// Whatever the block leaves running is killed with it.
func runReadme(t *testing.T, block string, env []string) (stdout, stderr string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sera-readme-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, d := range []string{"bin", "home", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin, err := os.ReadFile(staticSera(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "sera"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "block.sh")
	if err := os.WriteFile(script, []byte(block+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", script)
	cmd.Dir = dir
	cmd.Env = append([]string{
		"PATH=" + filepath.Join(dir, "bin") + ":/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + filepath.Join(dir, "home"), "TMPDIR=" + filepath.Join(dir, "tmp"), "LANG=C.UTF-8",
	}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Getuid() == 0 {
		for _, d := range []string{"home", "tmp"} {
			if err := os.Chown(filepath.Join(dir, d), 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	// The block's watcher, if it failed before its kill.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("README block: %v\nstdout:\n%s\nstderr:\n%s", err, &out, &errOut)
	}
	return out.String(), errOut.String()
}

// TestREADMESpool runs the README's one-machine walk-through on the spool.
func TestREADMESpool(t *testing.T) {
	t.Parallel()
	stdout, stderr := runReadme(t, readmeBlock(t, "spool"), nil)
	checkReadmePing(t, stdout, stderr)
	if !strings.Contains(stdout, `{"host":"web1"`) {
		t.Errorf("ping --group web --json printed no record for web1:\n%s", stdout)
	}
	if !strings.Contains(stdout, "\nrefused, exit status 126\n") || !strings.Contains(stderr, `client alice may not run "user list"`) {
		t.Errorf("the refused command is not shown as refused:\n%s\n%s", stdout, stderr)
	}
	// Two pings accepted: the audit count is the block's last line.
	if !strings.HasSuffix(stdout, "\n2\n") {
		t.Errorf("audit count: stdout ends %q", stdout[max(0, len(stdout)-20):])
	}
}

// TestREADMESQS runs the README's walk-through over SQS, against the real
// SQS/SNS server, with IAM and STS on a port nothing answers: the block
// needs neither.
func TestREADMESQS(t *testing.T) {
	t.Parallel()
	srv := sqstest.Start(t)
	env := []string{
		"AWS_ENDPOINT_URL_SQS=" + srv.Endpoint, "AWS_ENDPOINT_URL_SNS=" + srv.Endpoint,
		"AWS_ENDPOINT_URL_IAM=http://127.0.0.1:1", "AWS_ENDPOINT_URL_STS=http://127.0.0.1:1",
		"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_REGION=us-east-1",
		"AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_EC2_METADATA_DISABLED=true",
		"SERA_ACCOUNT=000000000000",
	}
	stdout, stderr := runReadme(t, readmeBlock(t, "sqs"), env)
	checkReadmePing(t, stdout, stderr)
	if !strings.Contains(stderr, "sera: 1 of 1 hosts succeeded") {
		t.Errorf("the group ping did not reach web1:\n%s", stderr)
	}
}

// checkReadmePing checks the walk-throughs' pings: web1 answered by name,
// and (spool) in JSON.
func checkReadmePing(t *testing.T, stdout, stderr string) {
	t.Helper()
	if !regexp.MustCompile(`(?m)^name +web1$`).MatchString(stdout) {
		t.Errorf("ping --to web1 did not answer:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	for _, l := range strings.Split(stdout, "\n") {
		if !strings.HasPrefix(l, `{"host"`) {
			continue
		}
		var rec struct {
			Host   string `json:"host"`
			Status string `json:"status"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Host != "web1" || rec.Status != "ok" {
			t.Errorf("JSON line %q: %+v %v", l, rec, err)
		}
	}
}
