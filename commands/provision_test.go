package commands_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/iamtest"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// lockedBuffer is a bytes.Buffer a running watcher and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// machine is one sera home: the admin's laptop or a watcher host.
type machine struct {
	home string
}

func (m *machine) options(stdout, stderr *lockedBuffer) *cli.Options {
	env := map[string]string{"SERA_HOME": m.home}
	return &cli.Options{
		Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr, Version: "test",
		Env: settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: m.home, Hostname: "box"},
	}
}

// sera runs the sera command line on m and returns its output.
func (m *machine) sera(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut lockedBuffer
	root := commands.NewRoot(m.options(&out, &errOut))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		return out.String() + errOut.String(), err
	}
	return out.String(), nil
}

func (m *machine) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := m.sera(t, args...)
	if err != nil {
		t.Fatalf("sera %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func lines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }

// awsEnv points the AWS SDK of this process at the fake IAM and STS and
// at fauxqs for SQS and SNS, with the admin's key, as the SDK's own
// settings do: no code path is special for tests.
func awsEnv(t *testing.T, iamSrv *iamtest.Server, fq *sqstest.Server) {
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL_IAM": iamSrv.URL, "AWS_ENDPOINT_URL_STS": iamSrv.URL,
		"AWS_ENDPOINT_URL_SQS": fq.Endpoint, "AWS_ENDPOINT_URL_SNS": fq.Endpoint,
		"AWS_ACCESS_KEY_ID": iamtest.AdminKeyID, "AWS_SECRET_ACCESS_KEY": iamtest.AdminSecret,
		"AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "", "AWS_PROFILE": "", "AWS_SESSION_TOKEN": "",
	} {
		t.Setenv(k, v)
		if v == "" {
			os.Unsetenv(k)
		}
	}
}

// TestProvisionToPing goes from an empty account to 'sera ping --to web1'
// as docs/aws.md tells a newcomer, with the real command line: IAM on the
// in-process fake, SQS and SNS on fauxqs, watchers running 'sera watch'
// with the settings and keys that 'sera watcher register' gave them. Then
// a request published once to the group topic sera-g-web reaches exactly
// the watchers of group web, which run it and reply.
func TestProvisionToPing(t *testing.T) {
	fq := sqstest.Start(t)
	iamSrv := iamtest.Start(t)
	awsEnv(t, iamSrv, fq)
	dir := t.TempDir()
	admin := &machine{home: filepath.Join(dir, "admin")}
	adminPub := strings.TrimSpace(admin.must(t, "keygen"))

	// create-provider-keys: a dry run reads only; then it makes all;
	// then it has nothing to do.
	out := admin.must(t, "create-provider-keys", "--dry-run")
	if !strings.Contains(out, "would: iam:CreateGroup GroupName=sera-watchers\n") ||
		!strings.Contains(out, `would: iam:PutGroupPolicy GroupName=sera-watchers PolicyName=sera-watcher PolicyDocument={"Version":"2012-10-17"`) ||
		!strings.Contains(out, "would: sns:CreateTopic Name=sera-all\n") {
		t.Errorf("dry run:\n%s", out)
	}
	for _, c := range iamSrv.Calls() {
		if !strings.HasPrefix(c.Action, "Get") && !strings.HasPrefix(c.Action, "List") {
			t.Errorf("the dry run called %s", c)
		}
	}
	out = admin.must(t, "provision")
	if !slices.Equal(lines(out), []string{
		"done: iam:CreateGroup GroupName=sera-watchers",
		"done: iam:PutGroupPolicy GroupName=sera-watchers PolicyName=sera-watcher PolicyDocument=" + sqs.WatcherPolicy(sqs.Account{Region: "us-east-1", ID: "000000000000"}, "sera").JSON() + " (creating it)",
		"done: iam:CreateGroup GroupName=sera-clients",
		"done: iam:PutGroupPolicy GroupName=sera-clients PolicyName=sera-client PolicyDocument=" + sqs.ClientPolicy(sqs.Account{Region: "us-east-1", ID: "000000000000"}, "sera").JSON() + " (creating it)",
		"done: sns:CreateTopic Name=sera-all",
	}) {
		t.Errorf("create-provider-keys:\n%s", out)
	}
	out = admin.must(t, "create-provider-keys")
	if !strings.HasSuffix(out, "unchanged: sns topic sera-all\nnothing to change: the IAM groups, their policies and topic sera-all are in place in us-east-1\n") {
		t.Errorf("create-provider-keys again:\n%s", out)
	}

	// The client: its key goes into its own settings, 0600.
	out = admin.must(t, "client", "register", "--name", "admin")
	cfg, err := settings.Load(admin.options(nil, nil).Env, false)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cfg.EnvFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("client settings: %v %v", fi, err)
	}
	id := adminIdentity(t, admin)
	clientUser := transport.ClientQueue("sera", id.Public().Fingerprint())
	if keys := iamSrv.Keys(clientUser); len(keys) != 1 || cfg.Get(settings.KeyAccessKey) != keys[0].ID ||
		cfg.Get(settings.KeySecretKey) != keys[0].Secret || cfg.Get(settings.KeyTransport) != "sqs" {
		t.Fatalf("client settings %s / %s, IAM has %v\n%s", cfg.Get(settings.KeyAccessKey), cfg.Get(settings.KeyTransport), keys, out)
	}
	// Provisioning made the topics: the client publishes to them.
	if cfg.Get(settings.KeyFanout) != "sns" || cfg.Get(settings.KeyAccount) != "000000000000" {
		t.Errorf("client settings %s=%s %s=%s\n%s", settings.KeyFanout, cfg.Get(settings.KeyFanout), settings.KeyAccount, cfg.Get(settings.KeyAccount), out)
	}
	if sns, err := cfg.Fanout(); !sns || err != nil {
		t.Errorf("client Fanout() = %v, %v", sns, err)
	}
	out = admin.must(t, "client", "register", "--name", "admin")
	if !strings.Contains(out, "unchanged: access key "+cfg.Get(settings.KeyAccessKey)+" in this client's settings (file)\n") ||
		!strings.Contains(out, "unchanged: SERA_FANOUT=sns SERA_ACCOUNT=000000000000 in "+cfg.EnvFile+"\n") ||
		!strings.HasSuffix(out, "nothing to change: client "+id.Public().Fingerprint()+" is registered\n") {
		t.Errorf("client register again:\n%s", out)
	}
	// A client registered before SNS fan-out lacks its settings: a dry
	// run says it would write them and writes nothing, a re-run writes
	// them, and the next one has nothing to change.
	envBefore, err := os.ReadFile(cfg.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	admin.must(t, "config", "unset", settings.KeyFanout, settings.KeyAccount)
	envOld, err := os.ReadFile(cfg.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	write := "SERA_FANOUT=sns SERA_ACCOUNT=000000000000 to " + cfg.EnvFile + "\n"
	out = admin.must(t, "client", "register", "--dry-run")
	if env, _ := os.ReadFile(cfg.EnvFile); !strings.Contains(out, "would: write "+write) || string(env) != string(envOld) {
		t.Errorf("client register --dry-run without the fan-out settings:\n%s\nenv file:\n%s", out, env)
	}
	out = admin.must(t, "client", "register")
	if env, _ := os.ReadFile(cfg.EnvFile); !strings.Contains(out, "done: write "+write) || string(env) != string(envBefore) {
		t.Errorf("client register without the fan-out settings:\n%s\nenv file:\n%s", out, env)
	}
	out = admin.must(t, "client", "register")
	if !strings.HasSuffix(out, "nothing to change: client "+id.Public().Fingerprint()+" is registered\n") {
		t.Errorf("client register once more:\n%s", out)
	}

	// Three hosts: web1 and web2 in group web, db1 in group db.
	hosts := map[string]*machine{}
	for _, h := range []struct {
		name, group string
	}{{"web1", "web"}, {"web2", "web"}, {"db1", "db"}} {
		m := &machine{home: filepath.Join(dir, h.name)}
		hosts[h.name] = m
		pub := strings.TrimSpace(m.must(t, "keygen"))
		m.must(t, "clients", "add", adminPub, "--name", "admin", "--allow", "ping")
		envFile := filepath.Join(m.home, "env")
		out := admin.must(t, "watcher", "register", h.name, pub, "--group", h.group, "--env-out", envFile)
		if !strings.Contains(out, "wrote the settings of "+h.name+", with its new access key, to "+envFile+" (mode 0600)\n") {
			t.Errorf("register %s:\n%s", h.name, out)
		}
		hcfg, err := settings.Load(m.options(nil, nil).Env, false)
		if err != nil {
			t.Fatal(err)
		}
		keys := iamSrv.Keys("sera-w-" + h.name)
		if len(keys) != 1 || hcfg.Get(settings.KeyAccessKey) != keys[0].ID || hcfg.Get(settings.KeySecretKey) != keys[0].Secret ||
			hcfg.Get(settings.KeyName) != h.name || hcfg.Get(settings.KeyGroups) != h.group || hcfg.Get(settings.KeyTransport) != "sqs" ||
			hcfg.Get(settings.KeyRegion) != "us-east-1" || hcfg.Get(settings.KeyPrefix) != "sera" {
			t.Fatalf("%s settings: %+v", h.name, hcfg)
		}
	}
	kw, err := sera.ReadKnownWatchers(cfg.KnownWatchersFile())
	if err != nil || len(kw.Watchers) != 3 || !kw.ByName("web2").HasGroup("web") {
		t.Fatalf("known_watchers: %v %v", kw, err)
	}

	// A re-run changes nothing, makes no second key, says how to get a
	// new one, and prints the host's other settings.
	pub1 := kw.ByName("web1").Key.String()
	out = admin.must(t, "watcher", "register", "web1", pub1, "--group", "web")
	if !strings.Contains(out, "nothing to change: watcher web1 is registered\n") ||
		!strings.Contains(out, "run 'sera watcher rotate-key web1'") ||
		!strings.Contains(out, "sera config set SERA_TRANSPORT=sqs SERA_REGION=us-east-1 SERA_PREFIX=sera SERA_NAME=web1 SERA_GROUPS=web\n") ||
		strings.Contains(out, "SERA_SECRET_KEY") {
		t.Errorf("register again:\n%s", out)
	}
	if n := len(iamSrv.Keys("sera-w-web1")); n != 1 {
		t.Errorf("%d keys after a re-run", n)
	}

	// The watchers, each running 'sera watch' with what it was given.
	ctx := runWatchers(t, hosts)

	// sera ping --to web1, with the client's own key.
	out = admin.must(t, "ping", "--to", "web1", "--timeout", "60s")
	if !strings.Contains(out, "name         web1\n") || !strings.Contains(out, "groups       web\n") {
		t.Errorf("ping --to web1:\n%s", out)
	}

	// Fan-out: one Publish to sera-g-web, answered by web1 and web2 only.
	clientTr, err := sqs.NewFromConfig(fq.Config).WithAccount("000000000000")
	if err != nil {
		t.Fatal(err)
	}
	pubTr := &noSends{Transport: clientTr}
	client := &sera.Client{Identity: id, Transport: pubTr, Prefix: "sera", TTL: time.Minute}
	var web []*sera.KnownWatcher
	for _, w := range kw.Watchers {
		if w.HasGroup("web") {
			web = append(web, w)
		}
	}
	res, err := client.Run(ctx, &sera.Job{Watchers: web, Target: sera.Target{Groups: []string{"web"}}, Argv: []string{"ping"},
		Timeout: time.Minute, Topic: "sera-g-web"})
	if err != nil {
		t.Fatal(err)
	}
	var answered []string
	for _, r := range res.Replies {
		answered = append(answered, r.Watcher.Name)
		if r.Reply.Status != 0 || !strings.Contains(string(r.Reply.Stdout), "name         "+r.Watcher.Name) {
			t.Errorf("%s replied %d: %s %s", r.Watcher.Name, r.Reply.Status, r.Reply.Stdout, r.Reply.Stderr)
		}
	}
	slices.Sort(answered)
	if !slices.Equal(answered, []string{"web1", "web2"}) || len(res.Missing) != 0 || res.Published != "sera-g-web" || pubTr.sends.Load() != 0 {
		t.Errorf("answered by %v, missing %d, published to %q, %d direct sends", answered, len(res.Missing), res.Published, pubTr.sends.Load())
	}
	// db1 never saw it, and web2 audited it. A watcher takes one request
	// at a time, in the order of its queue, and audits each before it
	// takes the next; SNS put the fan-out on the queues it reached
	// before Publish returned. So once db1 and web2 have answered a ping
	// sent after it, what they did with the fan-out is in their logs.
	out = admin.must(t, "ping", "--to", "db1,web2", "--timeout", "60s")
	if !strings.Contains(out, "name         db1\n") || !strings.Contains(out, "name         web2\n") {
		t.Errorf("ping --to db1,web2:\n%s", out)
	}
	if b, _ := os.ReadFile(filepath.Join(hosts["db1"].home, "state", "audit.log")); strings.Contains(string(b), res.RequestID) {
		t.Errorf("db1 audited the fan-out to group web:\n%s", b)
	}
	if b, _ := os.ReadFile(filepath.Join(hosts["web2"].home, "state", "audit.log")); !strings.Contains(string(b), res.RequestID) {
		t.Errorf("web2's audit log lacks the request:\n%s", b)
	}

	// Rotate web2's key: the new one goes to its env file, the old one
	// is deleted once STS accepts the new one.
	old := iamSrv.Keys("sera-w-web2")[0]
	out = admin.must(t, "watcher", "rotate-key", "web2", "--env-out", filepath.Join(hosts["web2"].home, "env"))
	now := iamSrv.Keys("sera-w-web2")
	hcfg, _ := settings.Load(hosts["web2"].options(nil, nil).Env, false)
	if len(now) != 1 || now[0].ID == old.ID || hcfg.Get(settings.KeyAccessKey) != now[0].ID || hcfg.Get(settings.KeyName) != "web2" ||
		!strings.Contains(out, "done: iam:DeleteAccessKey AccessKeyId="+old.ID+" UserName=sera-w-web2\n") {
		t.Errorf("rotate-key:\n%s\nkeys %v", out, now)
	}

	// A failure: AWS refuses the key. Everything else is made, the
	// message says what was done, and a re-run finishes.
	m := &machine{home: filepath.Join(dir, "db2")}
	pub := strings.TrimSpace(m.must(t, "keygen"))
	iamSrv.FailNext("CreateAccessKey", "LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2")
	out, err = admin.sera(t, "watcher", "register", "db2", pub, "--group", "db")
	if err == nil || !strings.Contains(err.Error(), "failed to iam:CreateAccessKey UserName=sera-w-db2") || !strings.Contains(err.Error(), "LimitExceeded") ||
		!strings.Contains(err.Error(), "done before it: iam:CreateUser UserName=sera-w-db2; iam:AddUserToGroup") {
		t.Errorf("register with a refused key: %v\n%s", err, out)
	}
	out = admin.must(t, "watcher", "register", "db2", pub, "--group", "db")
	if !strings.Contains(out, "done: iam:CreateAccessKey UserName=sera-w-db2\n") || !strings.Contains(out, "SERA_SECRET_KEY=") {
		t.Errorf("re-run:\n%s", out)
	}

	// Deregister db1: everything goes, and a re-run has nothing to do.
	out = admin.must(t, "watcher", "deregister", "db1")
	if !strings.Contains(out, "done: iam:DeleteUser UserName=sera-w-db1\n") || !strings.Contains(out, "done: remove watcher db1 from ") {
		t.Errorf("deregister:\n%s", out)
	}
	if _, ok := iamSrv.User("sera-w-db1"); ok {
		t.Error("sera-w-db1 still exists")
	}
	out = admin.must(t, "watcher", "deregister", "db1", "--dry-run")
	if !strings.HasSuffix(out, "nothing to change: watcher db1 is not registered\n") {
		t.Errorf("deregister again:\n%s", out)
	}

	// policy print: the documents, with the account from STS.
	out = admin.must(t, "policy", "print", "--role", "watcher")
	if out != sqs.WatcherPolicy(sqs.Account{Region: "us-east-1", ID: "000000000000"}, "sera").Indent()+"\n" {
		t.Errorf("policy print:\n%s", out)
	}
	calls := len(iamSrv.Calls())
	out = admin.must(t, "policy", "print", "--dry-run", "--region", "eu-west-1")
	if len(iamSrv.Calls()) != calls || !strings.Contains(out, `"arn:aws:sqs:eu-west-1:ACCOUNT_ID:${aws:username}"`) ||
		!strings.Contains(out, "# IAM group sera-clients, inline policy sera-client\n") {
		t.Errorf("policy print --dry-run (%d calls):\n%s", len(iamSrv.Calls())-calls, out)
	}
}

func adminIdentity(t *testing.T, m *machine) *crypto.Identity {
	b, err := os.ReadFile(filepath.Join(m.home, "key"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := crypto.ParseIdentityFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// publisher is a client transport that sends a request by publishing it
// once to an SNS topic instead of to each watcher's queue, and receives
// replies as usual.
// noSends is a client transport that counts the direct sends it is asked
// for and makes none: a request that reaches the watchers went by topic.
type noSends struct {
	*sqs.Transport
	sends atomic.Int64
}

func (p *noSends) Send(ctx context.Context, queue string, body []byte) error {
	p.sends.Add(1)
	return errors.New("no direct sends in this test")
}

// With --no-iam, an account where sera may make no IAM identity (hosts
// with an instance role, keys an organisation issues): the queues, topics
// and subscriptions only, against the SQS server alone — IAM and STS
// unreachable, so any call to them fails the test — and the policies the
// hosts' own credentials need, printed. Then a ping and a group request
// work with those credentials.
func TestProvisionNoIAMToPing(t *testing.T) {
	fq := sqstest.Start(t)
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL_IAM": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:1",
		"AWS_ENDPOINT_URL_SQS": fq.Endpoint, "AWS_ENDPOINT_URL_SNS": fq.Endpoint,
		"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
		"AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "", "AWS_PROFILE": "", "AWS_SESSION_TOKEN": "",
	} {
		t.Setenv(k, v)
		if v == "" {
			os.Unsetenv(k)
		}
	}
	const account = "000000000000"
	a := sqs.Account{Region: "us-east-1", ID: account}
	dir := t.TempDir()
	admin := &machine{home: filepath.Join(dir, "admin")}
	adminPub := strings.TrimSpace(admin.must(t, "keygen"))
	id := adminIdentity(t, admin)
	fp := id.Public().Fingerprint()

	// Without --account it would ask STS, which is not there.
	if out, err := admin.sera(t, "create-provider-keys", "--no-iam"); err == nil || !strings.Contains(err.Error(), "sts:GetCallerIdentity") {
		t.Errorf("create-provider-keys --no-iam without an account: %v\n%s", err, out)
	}
	out := admin.must(t, "create-provider-keys", "--no-iam", "--account", account, "--dry-run")
	if !slices.Equal(lines(out), []string{"would: sns:CreateTopic Name=sera-all"}) {
		t.Errorf("create-provider-keys --no-iam --dry-run:\n%s", out)
	}
	admin.must(t, "create-provider-keys", "--no-iam", "--account", account)
	out = admin.must(t, "create-provider-keys", "--no-iam", "--account", account)
	if !strings.HasSuffix(out, "nothing to change: topic sera-all is in place in us-east-1\n") {
		t.Errorf("create-provider-keys --no-iam again:\n%s", out)
	}

	// The client: its reply queues, its settings without a key, and the
	// policy its own credentials need.
	out = admin.must(t, "client", "register", "--no-iam", "--account", account)
	for _, want := range []string{
		"done: sqs:CreateQueue QueueName=" + transport.ReplyQueue("sera", fp, 0) + " ",
		"done: sqs:CreateQueue QueueName=" + transport.ReplyQueue("sera", fp, 15) + " ",
		"done: write SERA_TRANSPORT=sqs SERA_REGION=us-east-1 SERA_PREFIX=sera SERA_FANOUT=sns SERA_ACCOUNT=" + account,
		"# This client's own AWS credentials need this policy (no more), with its reply queues named:\n",
		`"arn:aws:sqs:us-east-1:` + account + `:sera-c-` + fp + `-*"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("client register --no-iam lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "iam:") || strings.Contains(out, "${aws:username}") {
		t.Errorf("client register --no-iam names IAM:\n%s", out)
	}
	if n := strings.Count(out, "done: sqs:CreateQueue QueueName="+transport.ClientQueue("sera", fp)) - 1; n != settings.DefaultReplyQueues {
		t.Errorf("%d reply queues made, want %d", n, settings.DefaultReplyQueues)
	}
	if !strings.Contains(out, "done: sqs:CreateQueue QueueName="+transport.HeartbeatQueue("sera", fp)+" ") {
		t.Errorf("client register --no-iam made no heartbeat queue:\n%s", out)
	}
	cfg, err := settings.Load(admin.options(nil, nil).Env, false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Get(settings.KeyTransport) != "sqs" || cfg.Get(settings.KeyAccessKey) != "" || cfg.Get(settings.KeyAccount) != account {
		t.Errorf("client settings: transport %q, access key %q, account %q", cfg.Get(settings.KeyTransport), cfg.Get(settings.KeyAccessKey), cfg.Get(settings.KeyAccount))
	}
	out = admin.must(t, "client", "register", "--no-iam", "--account", account)
	if !strings.Contains(out, "nothing to change: client "+fp+" is registered\n") {
		t.Errorf("client register --no-iam again:\n%s", out)
	}

	// Two watchers in group web.
	hosts := map[string]*machine{}
	pubs := map[string]string{}
	for _, name := range []string{"web1", "web2"} {
		m := &machine{home: filepath.Join(dir, name)}
		hosts[name] = m
		pub := strings.TrimSpace(m.must(t, "keygen"))
		pubs[name] = pub
		m.must(t, "clients", "add", adminPub, "--name", "admin", "--allow", "ping")
		envFile := filepath.Join(m.home, "env")
		out := admin.must(t, "watcher", "register", name, pub, "--group", "web", "--no-iam", "--account", account, "--env-out", envFile)
		for _, want := range []string{
			"done: sqs:CreateQueue QueueName=sera-dlq-" + name + " ",
			"done: sqs:CreateQueue QueueName=sera-w-" + name + " ",
			"done: sns:Subscribe ",
			"# The host's own AWS credentials need this policy (no more), with its queue named:\n" + indentJSON(t, sqs.WatcherPolicyFor(a, "sera", name)) + "\n",
			"wrote the settings of " + name + " to " + envFile + " (mode 0600)\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("watcher register %s --no-iam lacks %q:\n%s", name, want, out)
			}
		}
		if strings.Contains(out, "iam:") || strings.Contains(out, "SERA_SECRET_KEY") {
			t.Errorf("watcher register --no-iam names IAM or a key:\n%s", out)
		}
	}
	out = admin.must(t, "watcher", "register", "web1", pubs["web1"], "--group", "web", "--no-iam", "--account", account)
	if !strings.Contains(out, "nothing to change: watcher web1 is registered\n") {
		t.Errorf("watcher register --no-iam again:\n%s", out)
	}

	runWatchers(t, hosts)
	out = admin.must(t, "ping", "--to", "web1", "--timeout", "60s")
	if !strings.Contains(out, "name         web1\n") {
		t.Errorf("ping --to web1:\n%s", out)
	}
	// --group web goes out as one SNS publish (SERA_FANOUT=sns).
	var so, se lockedBuffer
	root := commands.NewRoot(admin.options(&so, &se))
	root.SetArgs([]string{"ping", "--group", "web", "--timeout", "60s"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Errorf("ping --group web: %v", err)
	}
	if out := so.String(); !strings.Contains(out, "web1: name") || !strings.Contains(out, "web2: name") ||
		!strings.Contains(se.String(), "published once to topic sera-g-web") {
		t.Errorf("ping --group web:\n%s\n%s", out, se.String())
	}

	// Deregistered without IAM: its queues and subscriptions go, and the
	// note says whose credentials to revoke.
	out = admin.must(t, "watcher", "deregister", "web2", "--no-iam", "--account", account)
	for _, want := range []string{"done: sqs:DeleteQueue ", "sera-w-web2", "done: sns:Unsubscribe ",
		"no IAM user of web2 is read or deleted (--no-iam): revoke the host's own credentials where they were issued"} {
		if !strings.Contains(out, want) {
			t.Errorf("watcher deregister --no-iam lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "iam:") {
		t.Errorf("watcher deregister --no-iam calls IAM:\n%s", out)
	}
}

// runWatchers runs 'sera watch' on every host until the test ends, and
// returns the context they run in.
func runWatchers(t *testing.T, hosts map[string]*machine) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for name, m := range hosts {
		root := commands.NewRoot(m.options(&lockedBuffer{}, &lockedBuffer{}))
		root.SetArgs([]string{"watch"})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := root.ExecuteContext(ctx); err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("watch %s: %v", name, err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return ctx
}

func indentJSON(t *testing.T, doc string) string {
	var b bytes.Buffer
	if err := json.Indent(&b, []byte(doc), "", "  "); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
