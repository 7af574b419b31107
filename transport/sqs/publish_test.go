package sqs_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
)

// TestPublish fans messages out through SNS on fauxqs, to queues that
// subscribe with raw message delivery as provisioning subscribes them.
func TestPublish(t *testing.T) {
	srv := sqstest.Start(t)
	ctx := context.Background()
	topics := sns.NewFromConfig(srv.Config)
	createTopic := func(name string) {
		t.Helper()
		out := must[*sns.CreateTopicOutput](t)(topics.CreateTopic(ctx, &sns.CreateTopicInput{Name: &name}))
		if got := aws.ToString(out.TopicArn); got != tarn(name) {
			t.Fatalf("topic ARN %s, want %s", got, tarn(name))
		}
	}
	subscribe := func(topic, queue string) {
		t.Helper()
		must[*sns.SubscribeOutput](t)(topics.Subscribe(ctx, &sns.SubscribeInput{
			TopicArn: aws.String(tarn(topic)), Protocol: aws.String("sqs"), Endpoint: aws.String(qarn(queue)),
			Attributes: map[string]string{"RawMessageDelivery": "true"},
		}))
	}
	for _, q := range []string{"pub-a", "pub-b", "pub-none", "pub-other"} {
		if _, err := sqs.CreateQueue(ctx, srv.Config, q); err != nil {
			t.Fatal(err)
		}
	}
	createTopic("pub-g-web")
	createTopic("pub-g-db")
	subscribe("pub-g-web", "pub-a")
	subscribe("pub-g-web", "pub-b")
	subscribe("pub-g-db", "pub-other")

	reader := sqs.NewFromConfig(srv.Config)
	received := func(t *testing.T, queue string, n int) []string {
		t.Helper()
		out := receiveAll(t, ctx, reader, queue, n)
		if len(out) != n {
			t.Errorf("%s received %d messages, want %d", queue, len(out), n)
		}
		return out
	}

	tr, err := sqs.NewFromConfig(srv.Config).WithAccount(acct)
	if err != nil {
		t.Fatal(err)
	}
	if tr.MaxPublishSize() != 262144 {
		t.Errorf("MaxPublishSize %d, want SNS's 262144", tr.MaxPublishSize())
	}

	// Refused: each returns an error and sends nothing, which the
	// subtest "FanOut" below checks by receiving only its own message.
	t.Run("Refused", func(t *testing.T) {
		err := tr.Publish(ctx, "pub-g-nosuch", []byte("x"))
		if !errors.Is(err, transport.ErrNoTopic) || !strings.HasPrefix(err.Error(), `failed to publish to "pub-g-nosuch": `) {
			t.Errorf("missing topic: %v, want ErrNoTopic", err)
		}
		// The ARN has the account in it: another account's topic of the
		// same name does not exist.
		other := must[*sqs.Transport](t)(sqs.NewFromConfig(srv.Config).WithAccount("111111111111"))
		if err := other.Publish(ctx, "pub-g-web", []byte("x")); !errors.Is(err, transport.ErrNoTopic) {
			t.Errorf("another account's topic: %v, want ErrNoTopic", err)
		}
		big := []byte(strings.Repeat("a", tr.MaxPublishSize()+1))
		if err := tr.Publish(ctx, "pub-g-web", big); !errors.Is(err, transport.ErrTooLarge) {
			t.Errorf("%d bytes: %v, want ErrTooLarge", len(big), err)
		}
		for _, b := range []string{"\x00", "\xff", "a\x1fb", "\uffff", "ok\xc3"} {
			err := tr.Publish(ctx, "pub-g-web", []byte(b))
			if err == nil || errors.Is(err, transport.ErrTooLarge) || !strings.Contains(err.Error(), "characters") {
				t.Errorf("Publish(%q): %v", b, err)
			}
		}
		for _, topic := range []string{"", "pub:g", "pub/g", "arn:aws:sns:us-east-1:" + acct + ":pub-g-web", strings.Repeat("t", 257)} {
			if err := tr.Publish(ctx, topic, []byte("x")); err == nil || errors.Is(err, transport.ErrNoTopic) {
				t.Errorf("topic %q: %v", topic, err)
			}
		}
		// Without an account there is no ARN to publish to.
		err = sqs.NewFromConfig(srv.Config).Publish(ctx, "pub-g-web", []byte("x"))
		if err == nil || !strings.Contains(err.Error(), "no AWS account configured (SERA_ACCOUNT)") {
			t.Errorf("no account: %v", err)
		}
	})

	t.Run("FanOut", func(t *testing.T) {
		// The largest body SNS takes, of every kind of character it
		// accepts (not above U+FFFF: fauxqs 1.9.2 refuses those).
		const chunk = "tab\tnl\ncr\r ünïcödé \ue000\ufffd{\"json\":1}&<>"
		var b strings.Builder
		for b.Len()+len(chunk) <= tr.MaxPublishSize() {
			b.WriteString(chunk)
		}
		b.WriteString(strings.Repeat("z", tr.MaxPublishSize()-b.Len()))
		body := b.String()
		if len(body) != tr.MaxPublishSize() {
			t.Fatalf("body of %d bytes", len(body))
		}
		if err := tr.Publish(ctx, "pub-g-web", []byte(body)); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"pub-a", "pub-b"} {
			// Exactly once, byte for byte: raw delivery, no SNS JSON.
			if got := received(t, q, 1); len(got) == 1 && got[0] != body {
				t.Errorf("%s received %d bytes that differ from the %d published", q, len(got[0]), len(body))
			}
		}
		received(t, "pub-none", 0)
		received(t, "pub-other", 0)

		// Another topic reaches only its own subscribers.
		if err := tr.Publish(ctx, "pub-g-db", []byte("to db")); err != nil {
			t.Fatal(err)
		}
		if got := received(t, "pub-other", 1); len(got) == 1 && got[0] != "to db" {
			t.Errorf("pub-other received %q", got[0])
		}
		for _, q := range []string{"pub-a", "pub-b", "pub-none"} {
			received(t, q, 0)
		}
	})

	t.Run("Account", func(t *testing.T) {
		for _, id := range []string{"", "12345678901", "1234567890123", "12345678901a", " 123456789012", "１２３４５６７８９０１２"} {
			if _, err := sqs.NewFromConfig(srv.Config).WithAccount(id); err == nil {
				t.Errorf("WithAccount(%q) accepted", id)
			}
			if id != "" {
				if _, err := sqs.New(ctx, sqs.Options{Region: "us-east-1", Account: id}); err == nil {
					t.Errorf("New with Account %q accepted", id)
				}
			}
		}
		if !sqs.ValidAccountID("000000000000") || !sqs.ValidAccountID("123456789012") {
			t.Error("ValidAccountID refuses 12 digits")
		}
		// New with the account from the options publishes to the
		// SDK's endpoint for SNS.
		dir := t.TempDir()
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
		t.Setenv("AWS_PROFILE", "")
		t.Setenv("AWS_ENDPOINT_URL_SNS", srv.Endpoint)
		t.Setenv("AWS_ENDPOINT_URL_SQS", srv.Endpoint)
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		nt, err := sqs.New(ctx, sqs.Options{Region: "us-east-1", AccessKey: "test", SecretKey: "test", Account: acct})
		if err != nil {
			t.Fatal(err)
		}
		if err := nt.Publish(ctx, "pub-g-web", []byte("via New")); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"pub-a", "pub-b"} {
			if got := received(t, q, 1); len(got) == 1 && got[0] != "via New" {
				t.Errorf("%s received %q", q, got[0])
			}
		}
	})
}

// receiveAll receives (and deletes) the messages on queue until n came,
// and then once more, so that one too many is seen too. fauxqs puts a
// published message on every queue it goes to before Publish returns, so
// one too many would be there already: the last Receive needs no more
// than SQS's shortest wait. The wait for each of the n is only a guard.
func receiveAll(t *testing.T, ctx context.Context, tr *sqs.Transport, queue string, n int) []string {
	t.Helper()
	var out []string
	for len(out) <= n {
		wait := 30 * time.Second
		if len(out) == n {
			wait = time.Second
		}
		msgs, err := tr.Receive(ctx, queue, 10, wait, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			out = append(out, string(m.Body))
			if err := tr.Delete(ctx, queue, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}
