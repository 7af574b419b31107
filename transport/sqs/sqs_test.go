package sqs_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
	"github.com/sera-dev/sera/transport/sqs/sqstest"
	"github.com/sera-dev/sera/transport/transporttest"
)

// TestSQS runs everything against one fauxqs, which takes about half a
// second to start.
func TestSQS(t *testing.T) {
	start := time.Now()
	srv := sqstest.Start(t)
	t.Logf("fauxqs started in %v", time.Since(start))
	createQueue := func(t *testing.T, name string) {
		t.Helper()
		if _, err := sqs.CreateQueue(context.Background(), srv.Config, name); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("Conformance", func(t *testing.T) {
		transporttest.Run(t, func(t *testing.T) transport.Transport {
			return sqs.NewFromConfig(srv.Config)
		}, transporttest.Options{
			// DeleteMessage with an old receipt handle succeeds on SQS.
			DetectsStaleHandles: false,
			CreateQueue:         createQueue,
		})
	})

	t.Run("ChangeVisibilityAfterDelete", func(t *testing.T) {
		ctx := context.Background()
		tr := sqs.NewFromConfig(srv.Config)
		createQueue(t, "cvad")
		if err := tr.Send(ctx, "cvad", []byte("x")); err != nil {
			t.Fatal(err)
		}
		msgs, err := tr.Receive(ctx, "cvad", 1, 5*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("Receive: %v, %d messages", err, len(msgs))
		}
		if err := tr.Delete(ctx, "cvad", msgs[0]); err != nil {
			t.Fatal(err)
		}
		if err := tr.ChangeVisibility(ctx, "cvad", msgs[0], 0); !errors.Is(err, transport.ErrStaleHandle) {
			t.Fatalf("ChangeVisibility after Delete: %v, want ErrStaleHandle", err)
		}
	})

	t.Run("BodyCharacters", func(t *testing.T) {
		ctx := context.Background()
		tr := sqs.NewFromConfig(srv.Config)
		createQueue(t, "chars")
		for _, b := range []string{"\x00", "\xff", "a\x1fb", "\uffff"} {
			if err := tr.Send(ctx, "chars", []byte(b)); err == nil {
				t.Errorf("Send(%q) succeeded", b)
			}
		}
		// Not above U+FFFF: AWS accepts those, fauxqs 1.9.2 does not.
		const ok = "tab\tnewline\n ünïcödé \ue000"
		if err := tr.Send(ctx, "chars", []byte(ok)); err != nil {
			t.Fatal(err)
		}
		msgs, err := tr.Receive(ctx, "chars", 1, 5*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 || string(msgs[0].Body) != ok {
			t.Fatalf("Receive: %v, %v", err, msgs)
		}
	})

	t.Run("QueueDeleted", func(t *testing.T) {
		ctx := context.Background()
		tr := sqs.NewFromConfig(srv.Config)
		createQueue(t, "deleted")
		if err := tr.Send(ctx, "deleted", []byte("x")); err != nil {
			t.Fatal(err)
		}
		client := awssqs.NewFromConfig(srv.Config)
		u, err := client.GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: aws.String("deleted")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.DeleteQueue(ctx, &awssqs.DeleteQueueInput{QueueUrl: u.QueueUrl}); err != nil {
			t.Fatal(err)
		}
		// The cached URL now names no queue.
		if err := tr.Send(ctx, "deleted", []byte("x")); !errors.Is(err, transport.ErrNoQueue) {
			t.Fatalf("Send to deleted queue: %v, want ErrNoQueue", err)
		}
		createQueue(t, "deleted")
		if err := tr.Send(ctx, "deleted", []byte("x")); err != nil {
			t.Fatalf("Send to re-created queue: %v", err)
		}
	})

	t.Run("SDKEnvironment", func(t *testing.T) {
		// Only the SDK's own variables point New at fauxqs.
		dir := t.TempDir()
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
		t.Setenv("AWS_PROFILE", "")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		t.Setenv("AWS_ENDPOINT_URL_SQS", srv.Endpoint)
		t.Setenv("AWS_REGION", "eu-west-1")
		ctx := context.Background()
		tr, err := sqs.New(ctx, sqs.Options{Region: "us-east-1", AccessKey: "test", SecretKey: "test"})
		if err != nil {
			t.Fatal(err)
		}
		createQueue(t, "env")
		if err := tr.Send(ctx, "env", []byte("via env")); err != nil {
			t.Fatal(err)
		}
		msgs, err := tr.Receive(ctx, "env", 1, 5*time.Second, time.Minute)
		if err != nil || len(msgs) != 1 || string(msgs[0].Body) != "via env" {
			t.Fatalf("Receive: %v, %v", err, msgs)
		}
		if _, err := sqs.New(ctx, sqs.Options{AccessKey: "test"}); err == nil {
			t.Error("New accepted an access key without a secret key")
		}
	})
}
