package sqs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/middleware"

	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/iamtest"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// opLog records every AWS call of a Provisioner, across services, in
// order: "iam:CreateUser", "sqs:CreateQueue", …
type opLog struct {
	mu  sync.Mutex
	ops []string
}

func (l *opLog) middleware(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("opLog",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			l.mu.Lock()
			l.ops = append(l.ops, strings.ToLower(awsmiddleware.GetServiceID(ctx))+":"+awsmiddleware.GetOperationName(ctx))
			l.mu.Unlock()
			return next.HandleInitialize(ctx, in)
		}), middleware.After)
}

func (l *opLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.ops
	l.ops = nil
	return out
}

// env is one fauxqs (SQS and SNS) and one fake IAM (IAM and STS).
type env struct {
	fq  *sqstest.Server
	iam *iamtest.Server
	log *opLog
}

func newEnv(t *testing.T) *env {
	return &env{fq: sqstest.Start(t), iam: iamtest.Start(t), log: &opLog{}}
}

// provisioner returns a fresh Provisioner, as each command run makes one.
func (e *env) provisioner(prefix string) *sqs.Provisioner {
	icfg := e.iam.Config()
	icfg.APIOptions = append(icfg.APIOptions, e.log.middleware)
	qcfg := e.fq.Config.Copy()
	qcfg.APIOptions = append(qcfg.APIOptions, e.log.middleware)
	return &sqs.Provisioner{
		IAM: iam.NewFromConfig(icfg), STS: sts.NewFromConfig(icfg),
		SQS: awssqs.NewFromConfig(qcfg), SNS: sns.NewFromConfig(qcfg),
		Prefix: prefix, Account: sqs.Account{Region: qcfg.Region},
		CheckKey: sqs.CheckKeyWithSTS(e.iam.Config()),
		KeyWait:  time.Second,
	}
}

func descs(pl *sqs.Plan) []string {
	var out []string
	for _, s := range pl.Steps {
		out = append(out, s.Desc)
	}
	return out
}

// apply runs the plan's steps in order, as the commands do.
func apply(t *testing.T, pl *sqs.Plan) error {
	t.Helper()
	for _, s := range pl.Steps {
		if err := s.Do(context.Background()); err != nil {
			return fmt.Errorf("%s: %w", s.Desc, err)
		}
	}
	return nil
}

func mustApply(t *testing.T, pl *sqs.Plan) {
	t.Helper()
	if err := apply(t, pl); err != nil {
		t.Fatal(err)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// keyKeeper collects the keys a plan makes, as the commands print them.
type keyKeeper struct{ keys []sqs.AccessKey }

func (k *keyKeeper) keep(_ context.Context, key sqs.AccessKey) error {
	k.keys = append(k.keys, key)
	return nil
}

const (
	acct   = "000000000000" // fauxqs's
	region = "us-east-1"
)

func qarn(name string) string { return "arn:aws:sqs:" + region + ":" + acct + ":" + name }
func tarn(name string) string { return "arn:aws:sns:" + region + ":" + acct + ":" + name }
func account() sqs.Account    { return sqs.Account{Region: region, ID: acct} }

// fqURL is the URL fauxqs gives queue q.
func fqURL(e *env, q string) string {
	out, err := awssqs.NewFromConfig(e.fq.Config).GetQueueUrl(context.Background(), &awssqs.GetQueueUrlInput{QueueName: &q})
	if err != nil {
		return "(no queue " + q + ")"
	}
	return aws.ToString(out.QueueUrl)
}

func TestProvision(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const P = "sera"
	wdoc := sqs.WatcherPolicy(account(), P).JSON()
	cdoc := sqs.ClientPolicy(account(), P).JSON()

	t.Run("ProviderKeys", func(t *testing.T) {
		p := e.provisioner(P)
		// A dry run is the plan: reads only.
		pl := must[*sqs.Plan](t)(p.ProviderKeys(ctx))
		equal(t, "steps", descs(pl), []string{
			"iam:CreateGroup GroupName=sera-watchers",
			"iam:PutGroupPolicy GroupName=sera-watchers PolicyName=sera-watcher PolicyDocument=" + wdoc + " (creating it)",
			"iam:CreateGroup GroupName=sera-clients",
			"iam:PutGroupPolicy GroupName=sera-clients PolicyName=sera-client PolicyDocument=" + cdoc + " (creating it)",
			"sns:CreateTopic Name=sera-all",
		})
		equal(t, "ops of the dry run", e.log.take(), []string{
			"sts:GetCallerIdentity", "iam:GetGroup", "iam:GetGroup", "sns:GetTopicAttributes",
		})
		mustApply(t, pl)
		equal(t, "iam requests", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetGroup GroupName=sera-watchers MaxItems=1",
			"GetGroup GroupName=sera-clients MaxItems=1",
			"CreateGroup GroupName=sera-watchers",
			"PutGroupPolicy GroupName=sera-watchers PolicyDocument=" + wdoc + " PolicyName=sera-watcher",
			"CreateGroup GroupName=sera-clients",
			"PutGroupPolicy GroupName=sera-clients PolicyDocument=" + cdoc + " PolicyName=sera-client",
		})
		equal(t, "ops", e.log.take(), []string{
			"iam:CreateGroup", "iam:PutGroupPolicy", "iam:CreateGroup", "iam:PutGroupPolicy", "sns:CreateTopic",
		})

		// Again: nothing to do, and it says what it found.
		e.iam.ResetCalls()
		pl = must[*sqs.Plan](t)(e.provisioner(P).ProviderKeys(ctx))
		equal(t, "steps of the re-run", descs(pl), nil)
		equal(t, "found", pl.Found, []string{
			"iam group sera-watchers", "iam group policy sera-watcher of group sera-watchers",
			"iam group sera-clients", "iam group policy sera-client of group sera-clients",
			"sns topic sera-all",
		})
		equal(t, "iam requests of the re-run", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetGroup GroupName=sera-watchers MaxItems=1",
			"GetGroupPolicy GroupName=sera-watchers PolicyName=sera-watcher",
			"GetGroup GroupName=sera-clients MaxItems=1",
			"GetGroupPolicy GroupName=sera-clients PolicyName=sera-client",
		})
		e.log.take()

		// A policy changed by hand is put back.
		admin := iam.NewFromConfig(e.iam.Config())
		must[*iam.PutGroupPolicyOutput](t)(admin.PutGroupPolicy(ctx, &iam.PutGroupPolicyInput{
			GroupName: aws.String("sera-clients"), PolicyName: aws.String("sera-client"),
			PolicyDocument: aws.String(strings.Replace(cdoc, "sera-w-*", "*", 1)),
		}))
		pl = must[*sqs.Plan](t)(e.provisioner(P).ProviderKeys(ctx))
		equal(t, "steps after a change by hand", descs(pl), []string{
			"iam:PutGroupPolicy GroupName=sera-clients PolicyName=sera-client PolicyDocument=" + cdoc + " (replacing a different one)",
		})
		mustApply(t, pl)
		if got, _ := e.iam.GroupPolicy("sera-clients", "sera-client"); got != cdoc {
			t.Errorf("client policy %s", got)
		}

		// A prefix lives in one region: provisioning it in another
		// would take the first region's queues from every key.
		other := e.provisioner(P)
		other.Account.Region = "eu-west-1"
		if _, err := other.ProviderKeys(ctx); !errors.Is(err, sqs.ErrOtherRegion) {
			t.Errorf("provisioning in another region: %v, want ErrOtherRegion", err)
		}
		e.log.take()
	})

	t.Run("WatcherNeedsProviderKeys", func(t *testing.T) {
		_, err := e.provisioner("nope").Watcher(ctx, "web1", nil, (&keyKeeper{}).keep)
		if !errors.Is(err, sqs.ErrNotProvisioned) {
			t.Errorf("watcher before create-provider-keys: %v", err)
		}
		e.log.take()
	})

	var web1Key sqs.AccessKey
	t.Run("Watcher", func(t *testing.T) {
		e.iam.ResetCalls()
		var kk keyKeeper
		pl := must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "web1", []string{"web"}, kk.keep))
		wattrs := watcherAttrs(t, "web1", "sera-all", "sera-g-web")
		equal(t, "steps", descs(pl), []string{
			"iam:CreateUser UserName=sera-w-web1",
			"iam:AddUserToGroup GroupName=sera-watchers UserName=sera-w-web1",
			"sqs:CreateQueue QueueName=sera-dlq-web1 Attributes.MaximumMessageSize=1048576 Attributes.MessageRetentionPeriod=1209600 Attributes.SqsManagedSseEnabled=true",
			"sqs:CreateQueue QueueName=sera-w-web1 " + wattrs,
			"sns:CreateTopic Name=sera-g-web",
			"sns:Subscribe TopicArn=" + tarn("sera-all") + " Protocol=sqs Endpoint=" + qarn("sera-w-web1") + " Attributes.RawMessageDelivery=true ReturnSubscriptionArn=true",
			"sns:Subscribe TopicArn=" + tarn("sera-g-web") + " Protocol=sqs Endpoint=" + qarn("sera-w-web1") + " Attributes.RawMessageDelivery=true ReturnSubscriptionArn=true",
			"iam:CreateAccessKey UserName=sera-w-web1",
		})
		equal(t, "ops of the dry run", e.log.take(), []string{
			"sts:GetCallerIdentity", "iam:GetGroup", "sns:GetTopicAttributes", "iam:GetUser",
			"sqs:GetQueueUrl", "sqs:GetQueueUrl", "sns:GetTopicAttributes", "sns:ListSubscriptionsByTopic",
		})
		mustApply(t, pl)
		equal(t, "iam requests", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetGroup GroupName=sera-watchers MaxItems=1",
			"GetUser UserName=sera-w-web1",
			"CreateUser UserName=sera-w-web1",
			"AddUserToGroup GroupName=sera-watchers UserName=sera-w-web1",
			"CreateAccessKey UserName=sera-w-web1",
		})
		e.log.take()
		keys := e.iam.Keys("sera-w-web1")
		if len(kk.keys) != 1 || len(keys) != 1 || kk.keys[0].ID != keys[0].ID || kk.keys[0].Secret != keys[0].Secret {
			t.Fatalf("kept %+v, IAM has %+v", kk.keys, keys)
		}
		web1Key = kk.keys[0]
		if u, _ := e.iam.User("sera-w-web1"); !slices.Equal(u.Groups, []string{"sera-watchers"}) {
			t.Errorf("groups %v", u.Groups)
		}

		// Again: nothing changes, no second key.
		e.iam.ResetCalls()
		kk = keyKeeper{}
		pl = must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "web1", []string{"web"}, kk.keep))
		equal(t, "steps of the re-run", descs(pl), nil)
		equal(t, "found", pl.Found, []string{
			"iam user sera-w-web1", "iam user sera-w-web1 in group sera-watchers",
			"sqs queue sera-dlq-web1", "sqs queue sera-w-web1", "sns topic sera-g-web",
			"sns subscription of sera-w-web1 to sera-all, raw delivery",
			"sns subscription of sera-w-web1 to sera-g-web, raw delivery",
		})
		if len(pl.Keys) != 1 || pl.Keys[0].ID != web1Key.ID {
			t.Errorf("existing keys %v", pl.Keys)
		}
		equal(t, "iam requests of the re-run", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetGroup GroupName=sera-watchers MaxItems=1",
			"GetUser UserName=sera-w-web1",
			"ListGroupsForUser UserName=sera-w-web1",
			"ListAccessKeys UserName=sera-w-web1",
		})
		e.log.take()
	})

	t.Run("WatcherGroupsChange", func(t *testing.T) {
		pl := must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "web1", []string{"web", "db"}, (&keyKeeper{}).keep))
		equal(t, "steps joining db", descs(pl), []string{
			"sqs:SetQueueAttributes QueueUrl=" + fqURL(e, "sera-w-web1") + " Attributes.Policy=" +
				sqs.WatcherQueuePolicy(account(), "sera-w-web1", []string{"sera-all", "sera-g-web", "sera-g-db"}).JSON(),
			"sns:CreateTopic Name=sera-g-db",
			"sns:Subscribe TopicArn=" + tarn("sera-g-db") + " Protocol=sqs Endpoint=" + qarn("sera-w-web1") + " Attributes.RawMessageDelivery=true ReturnSubscriptionArn=true",
		})
		mustApply(t, pl)
		pl = must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "web1", []string{"web"}, (&keyKeeper{}).keep))
		sub := subscriptionOf(t, e, "sera-g-db", "sera-w-web1")
		equal(t, "steps leaving db", descs(pl), []string{
			"sqs:SetQueueAttributes QueueUrl=" + fqURL(e, "sera-w-web1") + " Attributes.Policy=" +
				sqs.WatcherQueuePolicy(account(), "sera-w-web1", []string{"sera-all", "sera-g-web"}).JSON(),
			"sns:Unsubscribe SubscriptionArn=" + sub,
		})
		mustApply(t, pl)
		if s := subscriptionOf(t, e, "sera-g-db", "sera-w-web1"); s != "" {
			t.Errorf("still subscribed to sera-g-db: %s", s)
		}
		e.log.take()
	})

	t.Run("PartialFailure", func(t *testing.T) {
		// The access key quota: everything but the key is made, and the
		// error says what was done; a re-run makes only the key.
		e.iam.FailNext("CreateAccessKey", "LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2")
		var kk keyKeeper
		pl := must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "web2", []string{"web"}, kk.keep))
		err := apply(t, pl)
		if err == nil || !strings.Contains(err.Error(), "LimitExceeded") || !strings.Contains(err.Error(), "list-access-keys --user-name sera-w-web2") {
			t.Fatalf("apply: %v", err)
		}
		if len(kk.keys) != 0 || len(e.iam.Keys("sera-w-web2")) != 0 {
			t.Fatal("a key was made")
		}
		e.iam.ResetCalls()
		pl = must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "web2", []string{"web"}, kk.keep))
		equal(t, "steps of the re-run", descs(pl), []string{"iam:CreateAccessKey UserName=sera-w-web2"})
		mustApply(t, pl)
		if len(kk.keys) != 1 || len(e.iam.Keys("sera-w-web2")) != 1 {
			t.Fatalf("keys after the re-run: kept %d", len(kk.keys))
		}

		// A failure in the middle: the user is made but not put in its
		// group; the re-run finishes from there.
		e.iam.FailNext("AddUserToGroup", "LimitExceeded", "Cannot exceed quota for GroupsPerUser: 10")
		kk = keyKeeper{}
		pl = must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "db1", []string{"db"}, kk.keep))
		if err := apply(t, pl); err == nil || !strings.Contains(err.Error(), "iam:AddUserToGroup") {
			t.Fatalf("apply: %v", err)
		}
		e.iam.ResetCalls()
		pl = must[*sqs.Plan](t)(e.provisioner(P).Watcher(ctx, "db1", []string{"db"}, kk.keep))
		if d := descs(pl); len(d) != 6 || d[0] != "iam:AddUserToGroup GroupName=sera-watchers UserName=sera-w-db1" || d[5] != "iam:CreateAccessKey UserName=sera-w-db1" {
			t.Errorf("steps of the re-run:\n  %s", strings.Join(d, "\n  "))
		}
		mustApply(t, pl)
		equal(t, "iam requests of the re-run", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetGroup GroupName=sera-watchers MaxItems=1",
			"GetUser UserName=sera-w-db1",
			"ListGroupsForUser UserName=sera-w-db1",
			"ListAccessKeys UserName=sera-w-db1",
			"AddUserToGroup GroupName=sera-watchers UserName=sera-w-db1",
			"CreateAccessKey UserName=sera-w-db1",
		})
		if len(kk.keys) != 1 {
			t.Errorf("kept %d keys", len(kk.keys))
		}
		e.log.take()
	})

	t.Run("Resources", func(t *testing.T) {
		c := awssqs.NewFromConfig(e.fq.Config)
		for _, name := range []string{"web1", "web2", "db1"} {
			u := fqURL(e, "sera-w-"+name)
			out := must[*awssqs.GetQueueAttributesOutput](t)(c.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{
				QueueUrl: &u, AttributeNames: []sqstypes.QueueAttributeName{"RedrivePolicy", "ReceiveMessageWaitTimeSeconds", "MessageRetentionPeriod", "SqsManagedSseEnabled", "Policy"},
			}))
			var redrive struct {
				Target string `json:"deadLetterTargetArn"`
				Max    int    `json:"maxReceiveCount"`
			}
			if err := json.Unmarshal([]byte(out.Attributes["RedrivePolicy"]), &redrive); err != nil || redrive.Target != qarn("sera-dlq-"+name) || redrive.Max != 5 {
				t.Errorf("%s: RedrivePolicy %q", name, out.Attributes["RedrivePolicy"])
			}
			if out.Attributes["ReceiveMessageWaitTimeSeconds"] != "20" || out.Attributes["SqsManagedSseEnabled"] != "true" {
				t.Errorf("%s: attributes %v", name, out.Attributes)
			}
			// At least the longest request lifetime (24 h).
			if out.Attributes["MessageRetentionPeriod"] != "90000" {
				t.Errorf("%s: retention %s", name, out.Attributes["MessageRetentionPeriod"])
			}
			for _, topic := range []string{"sera-all", map[string]string{"web1": "sera-g-web", "web2": "sera-g-web", "db1": "sera-g-db"}[name]} {
				sub := subscriptionOf(t, e, topic, "sera-w-"+name)
				if sub == "" {
					t.Errorf("%s not subscribed to %s", name, topic)
					continue
				}
				attrs := must[*sns.GetSubscriptionAttributesOutput](t)(sns.NewFromConfig(e.fq.Config).GetSubscriptionAttributes(ctx, &sns.GetSubscriptionAttributesInput{SubscriptionArn: &sub}))
				if attrs.Attributes["RawMessageDelivery"] != "true" {
					t.Errorf("%s on %s: RawMessageDelivery %q", name, topic, attrs.Attributes["RawMessageDelivery"])
				}
			}
		}
	})

	t.Run("FanOut", func(t *testing.T) {
		pub := sns.NewFromConfig(e.fq.Config)
		tr := sqs.NewFromConfig(e.fq.Config)
		publish := func(topic, msg string) {
			must[*sns.PublishOutput](t)(pub.Publish(ctx, &sns.PublishInput{TopicArn: aws.String(tarn(topic)), Message: &msg}))
		}
		got := func(watcher string, n int) []string {
			out := receiveAll(t, ctx, tr, "sera-w-"+watcher, n)
			slices.Sort(out)
			return out
		}
		publish("sera-g-web", "to web")
		publish("sera-all", "to all")
		publish("sera-g-db", "to db")
		for w, want := range map[string][]string{
			"web1": {"to all", "to web"}, "web2": {"to all", "to web"}, "db1": {"to all", "to db"},
		} {
			// Raw delivery: the body is the message itself, no SNS JSON.
			equal(t, w+" received", got(w, len(want)), want)
		}
	})

	t.Run("DeadLetters", func(t *testing.T) {
		tr := sqs.NewFromConfig(e.fq.Config)
		if err := tr.Send(ctx, "sera-w-web2", []byte("poison")); err != nil {
			t.Fatal(err)
		}
		// The message is on the queue before each Receive that should
		// get it: their waits are guards. The sixth Receive moves it to
		// the dead-letter queue instead of returning it.
		for i := 1; i <= 5; i++ {
			msgs, err := tr.Receive(ctx, "sera-w-web2", 1, 30*time.Second, time.Minute)
			if err != nil || len(msgs) != 1 || msgs[0].Receives != i {
				t.Fatalf("receive %d: %v %v", i, err, msgs)
			}
			if err := tr.ChangeVisibility(ctx, "sera-w-web2", msgs[0], 0); err != nil {
				t.Fatal(err)
			}
		}
		if msgs, err := tr.Receive(ctx, "sera-w-web2", 1, time.Second, time.Minute); err != nil || len(msgs) != 0 {
			t.Fatalf("a sixth receive: %v %d messages", err, len(msgs))
		}
		msgs, err := tr.Receive(ctx, "sera-dlq-web2", 1, 30*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 || string(msgs[0].Body) != "poison" {
			t.Fatalf("dead-letter queue: %v %v", err, msgs)
		}
	})

	t.Run("Client", func(t *testing.T) {
		const fp = "abcdefghijklmnop"
		e.iam.ResetCalls()
		var kk keyKeeper
		pl := must[*sqs.Plan](t)(e.provisioner(P).Client(ctx, fp, "alice", kk.keep))
		equal(t, "steps", descs(pl), []string{
			"iam:CreateUser UserName=sera-c-abcdefghijklmnop Tags.member.1.Key=sera-name Tags.member.1.Value=alice",
			"iam:AddUserToGroup GroupName=sera-clients UserName=sera-c-abcdefghijklmnop",
			"sqs:CreateQueue QueueName=sera-c-abcdefghijklmnop Attributes.MaximumMessageSize=1048576 Attributes.MessageRetentionPeriod=90000 Attributes.SqsManagedSseEnabled=true",
			"sqs:CreateQueue QueueName=sera-c-abcdefghijklmnop-hb Attributes.MaximumMessageSize=1048576 Attributes.MessageRetentionPeriod=3600 Attributes.SqsManagedSseEnabled=true",
			"iam:CreateAccessKey UserName=sera-c-abcdefghijklmnop",
		})
		mustApply(t, pl)
		equal(t, "iam requests", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetGroup GroupName=sera-clients MaxItems=1",
			"GetUser UserName=sera-c-abcdefghijklmnop",
			"CreateUser Tags.member.1.Key=sera-name Tags.member.1.Value=alice UserName=sera-c-abcdefghijklmnop",
			"AddUserToGroup GroupName=sera-clients UserName=sera-c-abcdefghijklmnop",
			"CreateAccessKey UserName=sera-c-abcdefghijklmnop",
		})
		if len(kk.keys) != 1 {
			t.Fatalf("kept %d keys", len(kk.keys))
		}
		pl = must[*sqs.Plan](t)(e.provisioner(P).Client(ctx, fp, "alice", kk.keep))
		equal(t, "steps of the re-run", descs(pl), nil)
		pl = must[*sqs.Plan](t)(e.provisioner(P).Client(ctx, fp, "bob", kk.keep))
		equal(t, "steps of a new name", descs(pl), []string{
			"iam:TagUser UserName=sera-c-abcdefghijklmnop Tags.member.1.Key=sera-name Tags.member.1.Value=bob",
		})
		mustApply(t, pl)
		if u, _ := e.iam.User("sera-c-abcdefghijklmnop"); u.Tags["sera-name"] != "bob" {
			t.Errorf("tags %v", u.Tags)
		}
		e.log.take()
	})

	t.Run("RotateKey", func(t *testing.T) {
		const user = "sera-w-web1"
		old := e.iam.Keys(user)
		if len(old) != 1 {
			t.Fatalf("keys %v", old)
		}
		e.iam.ResetCalls()
		var kk keyKeeper
		pl := must[*sqs.Plan](t)(e.provisioner(P).RotateKey(ctx, user, sqs.RotateOptions{}, kk.keep))
		equal(t, "steps", descs(pl), []string{
			"iam:CreateAccessKey UserName=sera-w-web1",
			"sts:GetCallerIdentity signed with the new key, until it answers Arn=arn:aws:iam::000000000000:user/sera-w-web1",
			"iam:DeleteAccessKey AccessKeyId=" + old[0].ID + " UserName=sera-w-web1",
		})
		mustApply(t, pl)
		now := e.iam.Keys(user)
		if len(kk.keys) != 1 || len(now) != 1 || now[0].ID != kk.keys[0].ID {
			t.Fatalf("after rotation IAM has %v, kept %v", now, kk.keys)
		}
		equal(t, "iam requests", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetUser UserName=sera-w-web1",
			"ListGroupsForUser UserName=sera-w-web1",
			"ListAccessKeys UserName=sera-w-web1",
			"CreateAccessKey UserName=sera-w-web1",
			"GetCallerIdentity", // signed with the new key
			"DeleteAccessKey AccessKeyId=" + old[0].ID + " UserName=sera-w-web1",
		})

		// Without downtime: keep the old key, then finish.
		kk = keyKeeper{}
		pl = must[*sqs.Plan](t)(e.provisioner(P).RotateKey(ctx, user, sqs.RotateOptions{KeepOld: true}, kk.keep))
		mustApply(t, pl)
		if n := len(e.iam.Keys(user)); n != 2 || len(pl.Notes) != 1 {
			t.Fatalf("%d keys, notes %v", n, pl.Notes)
		}
		if _, err := e.provisioner(P).RotateKey(ctx, user, sqs.RotateOptions{}, kk.keep); !errors.Is(err, sqs.ErrUnfinishedRotation) {
			t.Fatalf("rotating with two keys: %v", err)
		}
		pl = must[*sqs.Plan](t)(e.provisioner(P).RotateKey(ctx, user, sqs.RotateOptions{Finish: true}, kk.keep))
		equal(t, "finish", descs(pl), []string{"iam:DeleteAccessKey AccessKeyId=" + now[0].ID + " UserName=sera-w-web1"})
		mustApply(t, pl)
		if k := e.iam.Keys(user); len(k) != 1 || k[0].ID != kk.keys[0].ID {
			t.Fatalf("after finish: %v", k)
		}
		pl = must[*sqs.Plan](t)(e.provisioner(P).RotateKey(ctx, user, sqs.RotateOptions{Finish: true}, kk.keep))
		equal(t, "finish again", descs(pl), nil)

		// A new key that does not work: the old one is kept, and the
		// error says so; --finish is the way out once it works.
		p := e.provisioner(P)
		p.CheckKey = func(context.Context, string, string) (string, error) {
			return "", errors.New("InvalidClientTokenId")
		}
		p.KeyWait = 100 * time.Millisecond
		pl = must[*sqs.Plan](t)(p.RotateKey(ctx, user, sqs.RotateOptions{}, kk.keep))
		if err := apply(t, pl); err == nil || !strings.Contains(err.Error(), "did not work") {
			t.Fatalf("apply: %v", err)
		}
		if n := len(e.iam.Keys(user)); n != 2 {
			t.Fatalf("%d keys after a failed confirmation", n)
		}
		mustApply(t, must[*sqs.Plan](t)(e.provisioner(P).RotateKey(ctx, user, sqs.RotateOptions{Finish: true}, kk.keep)))
		if k := e.iam.Keys(user); len(k) != 1 || k[0].ID != kk.keys[len(kk.keys)-1].ID {
			t.Fatalf("after finish: %v", k)
		}
		e.log.take()
	})

	t.Run("Deregister", func(t *testing.T) {
		e.iam.ResetCalls()
		key := e.iam.Keys("sera-w-db1")[0].ID
		pl := must[*sqs.Plan](t)(e.provisioner(P).DeregisterWatcher(ctx, "db1", nil))
		equal(t, "steps", descs(pl), []string{
			"iam:DeleteAccessKey AccessKeyId=" + key + " UserName=sera-w-db1",
			"iam:RemoveUserFromGroup GroupName=sera-watchers UserName=sera-w-db1",
			"iam:DeleteUser UserName=sera-w-db1",
			"sns:Unsubscribe SubscriptionArn=" + subscriptionOf(t, e, "sera-all", "sera-w-db1"),
			"sns:Unsubscribe SubscriptionArn=" + subscriptionOf(t, e, "sera-g-db", "sera-w-db1"),
			"sqs:DeleteQueue QueueUrl=" + fqURL(e, "sera-w-db1"),
			"sqs:DeleteQueue QueueUrl=" + fqURL(e, "sera-dlq-db1"),
		})
		mustApply(t, pl)
		equal(t, "iam requests", e.iam.CallStrings(), []string{
			"GetCallerIdentity",
			"GetUser UserName=sera-w-db1",
			"ListGroupsForUser UserName=sera-w-db1",
			"ListAccessKeys UserName=sera-w-db1",
			"DeleteAccessKey AccessKeyId=" + key + " UserName=sera-w-db1",
			"RemoveUserFromGroup GroupName=sera-watchers UserName=sera-w-db1",
			"DeleteUser UserName=sera-w-db1",
		})
		if _, ok := e.iam.User("sera-w-db1"); ok {
			t.Error("user still there")
		}
		pl = must[*sqs.Plan](t)(e.provisioner(P).DeregisterWatcher(ctx, "db1", []string{"db"}))
		equal(t, "steps of the re-run", descs(pl), nil)
		equal(t, "found", pl.Found, []string{"iam user sera-w-db1 absent", "sqs queue sera-w-db1 absent", "sqs queue sera-dlq-db1 absent"})
		e.log.take()
	})
}

// watcherAttrs is the Attributes part of a watcher queue's CreateQueue.
func watcherAttrs(t *testing.T, name string, topics ...string) string {
	redrive := `{"deadLetterTargetArn":"` + qarn("sera-dlq-"+name) + `","maxReceiveCount":5}`
	return "Attributes.MaximumMessageSize=1048576 Attributes.MessageRetentionPeriod=90000 Attributes.Policy=" +
		sqs.WatcherQueuePolicy(account(), "sera-w-"+name, topics).JSON() +
		" Attributes.ReceiveMessageWaitTimeSeconds=20 Attributes.RedrivePolicy=" + redrive +
		" Attributes.SqsManagedSseEnabled=true"
}

// subscriptionOf returns the ARN of queue's subscription to topic.
func subscriptionOf(t *testing.T, e *env, topic, queue string) string {
	t.Helper()
	out := must[*sns.ListSubscriptionsByTopicOutput](t)(sns.NewFromConfig(e.fq.Config).ListSubscriptionsByTopic(context.Background(),
		&sns.ListSubscriptionsByTopicInput{TopicArn: aws.String(tarn(topic))}))
	for _, s := range out.Subscriptions {
		if aws.ToString(s.Endpoint) == qarn(queue) {
			return aws.ToString(s.SubscriptionArn)
		}
	}
	return ""
}
