// Package sqs is the transport on Amazon SQS, sera's production transport.
//
// The AWS SDK's own configuration applies: the default credential chain,
// AWS_REGION and shared profiles, and AWS_ENDPOINT_URL or
// AWS_ENDPOINT_URL_SQS (AWS_ENDPOINT_URL_SNS) for an SQS-compatible server.
//
// SQS counts time in whole seconds: long polls are rounded to the nearest
// second and visibility timeouts up to the next one (at least a second on
// Receive, since the API cannot ask for zero there). Message bodies must be
// XML characters in UTF-8; Send refuses anything else rather than let it be
// altered on the way.
//
// Transport is also a transport.Publisher on SNS: Publish sends one message
// to every queue subscribed to a topic. Topic ARNs need the AWS account ID
// (Options.Account, or WithAccount); the region is the SDK's.
package sqs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	"github.com/sera-dev/sera/transport"
)

// maxWait is the longest long poll SQS accepts; longer waits take several.
const maxWait = 20 * time.Second

// Options configures the AWS SDK beyond what its environment provides.
type Options struct {
	// Region, when set, overrides the region from the environment and
	// shared configuration.
	Region string
	// AccessKey and SecretKey, when both set, are used instead of the
	// SDK's default credential chain.
	AccessKey, SecretKey string
	// Account is the AWS account ID (12 digits) of the SNS topics that
	// Publish sends to; without it Publish fails. Send and Receive do
	// not need it.
	Account string
	// URLCache, if set, is a file where the transport keeps what it
	// learnt of where the account's queues are, so that the next process
	// of the same configuration needs no GetQueueUrl call (see
	// urlCache).
	URLCache string
}

// LoadConfig loads the SDK's default configuration with opts applied. It is
// what New uses, exported so that provisioning talks to the same account.
func LoadConfig(ctx context.Context, opts Options) (aws.Config, error) {
	var fns []func(*config.LoadOptions) error
	if opts.Region != "" {
		fns = append(fns, config.WithRegion(opts.Region))
	}
	if (opts.AccessKey == "") != (opts.SecretKey == "") {
		return aws.Config{}, errors.New("failed to load AWS config: access key and secret key must be set together")
	}
	if opts.AccessKey != "" {
		fns = append(fns, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(opts.AccessKey, opts.SecretKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, fns...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("failed to load AWS config: %w", err)
	}
	return cfg, nil
}

// Transport is a transport.Transport on SQS and a transport.Publisher on
// SNS. Its queues and topics must exist; see CreateQueue and Provisioner.
type Transport struct {
	client *awssqs.Client
	// sns is made on the first Publish: most commands never publish.
	sns func() *sns.Client
	// account names the topics of Publish; its ID is "" until set.
	account Account

	mu   sync.Mutex
	urls map[string]string // queue name to URL
	// base is what a queue URL of this account is before the queue's
	// name, learnt from GetQueueUrl or the cache; "" until then.
	base  string
	cache *urlCache
	cfg   aws.Config
}

var (
	_ transport.Transport = (*Transport)(nil)
	_ transport.Publisher = (*Transport)(nil)
)

// New returns a Transport configured by the SDK's environment and opts.
func New(ctx context.Context, opts Options) (*Transport, error) {
	if opts.Account != "" && !ValidAccountID(opts.Account) {
		return nil, fmt.Errorf("invalid AWS account ID %q: want 12 digits", opts.Account)
	}
	cfg, err := LoadConfig(ctx, opts)
	if err != nil {
		return nil, err
	}
	t := NewFromConfig(cfg)
	t.account.ID = opts.Account
	if opts.URLCache != "" {
		t.WithURLCache(ctx, opts.URLCache)
	}
	return t, nil
}

// WithURLCache makes t keep the base of the account's queue URLs in the
// file at path (see Options.URLCache), and returns t. Call it before t is
// used.
func (t *Transport) WithURLCache(ctx context.Context, path string) *Transport {
	t.cache = openURLCache(ctx, path, t.cfg)
	t.base = t.cache.base
	return t
}

// NewFromConfig returns a Transport using cfg as is, but for keeping more
// idle connections (see keepConns). It has no account ID, so Publish fails
// until WithAccount sets one.
func NewFromConfig(cfg aws.Config) *Transport {
	cfg.HTTPClient = keepConns(cfg.HTTPClient)
	return &Transport{
		client: awssqs.NewFromConfig(cfg, func(o *awssqs.Options) { o.Retryer = quickRetries(o.Retryer) }),
		sns: sync.OnceValue(func() *sns.Client {
			return sns.NewFromConfig(cfg, func(o *sns.Options) { o.Retryer = quickRetries(o.Retryer) })
		}),
		account: Account{Partition: partitionOf(cfg.Region), Region: cfg.Region},
		urls:    map[string]string{},
		cfg:     cfg,
	}
}

// maxRetryDelay caps the SDK's wait between attempts of one call (20 s by
// default): sera's client and watcher retry failed calls themselves, and a
// queue server back after a short outage must not find them asleep.
const maxRetryDelay = 2 * time.Second

func quickRetries(r aws.Retryer) aws.Retryer {
	if r == nil {
		r = retry.NewStandard()
	}
	return retry.AddWithMaxBackoffDelay(r, maxRetryDelay)
}

// idleConns is how many idle connections to one endpoint the SDK's HTTP
// client keeps. A client sends a request to many queues in parallel (32 at
// a time); with the SDK's default of 10, all but 10 of those connections
// were closed after each send and dialled again, with a TLS handshake to
// AWS, for the next: about 200 new connections for a request to 1,000
// watchers instead of 32.
const idleConns = 64

// keepConns returns the SDK's HTTP client c (nil for its default) keeping
// at least idleConns idle connections per host. Another kind of client is
// its owner's to configure, and returned as is.
func keepConns(c aws.HTTPClient) aws.HTTPClient {
	keep := func(t *http.Transport) {
		t.MaxIdleConnsPerHost = max(t.MaxIdleConnsPerHost, idleConns)
		if t.MaxIdleConns != 0 { // 0 is no limit
			t.MaxIdleConns = max(t.MaxIdleConns, idleConns)
		}
	}
	switch b := c.(type) {
	case nil:
		return awshttp.NewBuildableClient().WithTransportOptions(keep)
	case *awshttp.BuildableClient:
		return b.WithTransportOptions(keep)
	}
	return c
}

// WithAccount sets the AWS account ID (12 digits) of the topics Publish
// sends to, and returns t. Call it before t is used.
func (t *Transport) WithAccount(id string) (*Transport, error) {
	if !ValidAccountID(id) {
		return nil, fmt.Errorf("invalid AWS account ID %q: want 12 digits", id)
	}
	t.account.ID = id
	return t, nil
}

// ValidAccountID reports whether id is an AWS account ID: 12 digits.
func ValidAccountID(id string) bool {
	if len(id) != 12 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return false
		}
	}
	return true
}

// partitionOf is the partition of region, for topic ARNs: the China and
// GovCloud regions have their own; every other is "aws".
func partitionOf(region string) string {
	switch {
	case strings.HasPrefix(region, "cn-"):
		return "aws-cn"
	case strings.HasPrefix(region, "us-gov-"):
		return "aws-us-gov"
	default:
		return "aws"
	}
}

// Locate implements transport.Locator: the queue's URL, once a call has
// looked it up or derived it.
func (t *Transport) Locate(queue string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.urls[queue]
}

// MaxPublishSize is the largest message SNS publishes: 256 KiB.
const MaxPublishSize = 256 << 10

// MaxMessageSize implements transport.Transport: SQS's limit.
func (t *Transport) MaxMessageSize() int { return transport.DefaultMaxMessageSize }

// Close implements transport.Transport.
func (t *Transport) Close() error { return nil }

// Send implements transport.Transport.
func (t *Transport) Send(ctx context.Context, queue string, body []byte) error {
	if len(body) > t.MaxMessageSize() {
		return fmt.Errorf("failed to send to %q: %w (%d bytes, limit %d)", queue, transport.ErrTooLarge, len(body), t.MaxMessageSize())
	}
	if !validBody(body) {
		return fmt.Errorf("failed to send to %q: body has characters SQS does not accept", queue)
	}
	return t.withURL(ctx, queue, "send", func(u string) error {
		_, err := t.client.SendMessage(ctx, &awssqs.SendMessageInput{QueueUrl: &u, MessageBody: aws.String(string(body))})
		return t.fail("send to", queue, err)
	})
}

// MaxPublishSize implements transport.Publisher: SNS's limit.
func (t *Transport) MaxPublishSize() int { return MaxPublishSize }

// Publish implements transport.Publisher: one sns:Publish to the topic of
// that name in the account, whose queues subscribe with raw message
// delivery and so receive body as is.
func (t *Transport) Publish(ctx context.Context, topic string, body []byte) error {
	if len(body) > t.MaxPublishSize() {
		return fmt.Errorf("failed to publish to %q: %w (%d bytes, limit %d)", topic, transport.ErrTooLarge, len(body), t.MaxPublishSize())
	}
	if !validBody(body) {
		return fmt.Errorf("failed to publish to %q: body has characters SNS does not accept", topic)
	}
	if !transport.ValidTopicName(topic) {
		return fmt.Errorf("failed to publish to %q: invalid topic name", topic)
	}
	if t.account.ID == "" {
		return fmt.Errorf("failed to publish to %q: no AWS account configured (SERA_ACCOUNT)", topic)
	}
	if t.account.Region == "" {
		return fmt.Errorf("failed to publish to %q: no AWS region configured", topic)
	}
	_, err := t.sns().Publish(ctx, &sns.PublishInput{
		TopicArn: aws.String(t.account.TopicARN(topic)),
		Message:  aws.String(string(body)),
	})
	return t.fail("publish to", topic, err)
}

// Receive implements transport.Transport. A wait over SQS's 20 seconds takes
// several long polls, and so does a long poll that SQS ends early and
// empty, so that only the deadline ends a Receive empty-handed.
func (t *Transport) Receive(ctx context.Context, queue string, maxMsgs int, wait, visibility time.Duration) ([]*transport.Message, error) {
	if maxMsgs < 1 {
		return nil, fmt.Errorf("failed to receive from %q: max %d is less than 1", queue, maxMsgs)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var got []*transport.Message
	err := t.withURL(ctx, queue, "receive", func(u string) (err error) {
		got, err = t.receive(ctx, queue, u, maxMsgs, wait, visibility)
		return err
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return got, err
}

func (t *Transport) receive(ctx context.Context, queue, u string, maxMsgs int, wait, visibility time.Duration) ([]*transport.Message, error) {
	in := &awssqs.ReceiveMessageInput{
		QueueUrl:            &u,
		MaxNumberOfMessages: int32(min(maxMsgs, 10)),
		VisibilityTimeout:   max(seconds(visibility), 1),
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{
			types.MessageSystemAttributeNameApproximateReceiveCount,
			types.MessageSystemAttributeNameSentTimestamp,
		},
	}
	deadline := time.Now().Add(wait)
	for {
		// The SDK omits a WaitTimeSeconds of 0, and SQS then waits the
		// queue's default instead. A wait of 0 is one call on that
		// default, which is 0 on sera's reply queues: a check that the
		// queue answers, not a wait. Any other wait is at least 1 s, as
		// the default may be up to 20 s.
		in.WaitTimeSeconds = 0
		if wait > 0 {
			w := min(max(time.Until(deadline).Round(time.Second), time.Second), maxWait)
			in.WaitTimeSeconds = int32(w / time.Second)
		}
		out, err := t.client.ReceiveMessage(ctx, in)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, t.fail("receive from", queue, err)
		}
		if len(out.Messages) > 0 {
			return messages(out.Messages), nil
		}
		if time.Until(deadline) <= 0 {
			return nil, nil
		}
	}
}

func messages(in []types.Message) []*transport.Message {
	out := make([]*transport.Message, 0, len(in))
	for _, m := range in {
		// Every delivery counts, so 1 is right when SQS leaves the count out.
		n, err := strconv.Atoi(m.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)])
		if err != nil || n < 1 {
			n = 1
		}
		// Milliseconds since the epoch, by SQS's clock; left zero when
		// absent or unreadable, so no bound is judged from a guess.
		var sent time.Time
		if ms, err := strconv.ParseInt(m.Attributes[string(types.MessageSystemAttributeNameSentTimestamp)], 10, 64); err == nil && ms > 0 {
			sent = time.UnixMilli(ms)
		}
		out = append(out, &transport.Message{
			Body:     []byte(aws.ToString(m.Body)),
			Handle:   aws.ToString(m.ReceiptHandle),
			Receives: n,
			Sent:     sent,
		})
	}
	return out
}

// Delete implements transport.Transport. SQS accepts a stale receipt handle
// without deleting anything, so Delete cannot always report ErrStaleHandle.
func (t *Transport) Delete(ctx context.Context, queue string, m *transport.Message) error {
	return t.withURL(ctx, queue, "delete", func(u string) error {
		_, err := t.client.DeleteMessage(ctx, &awssqs.DeleteMessageInput{QueueUrl: &u, ReceiptHandle: &m.Handle})
		return t.fail("delete from", queue, err)
	})
}

// Depth implements transport.Depther: SQS's approximate count of the
// queue's messages, visible and in flight.
func (t *Transport) Depth(ctx context.Context, queue string) (int, error) {
	n := 0
	err := t.withURL(ctx, queue, "count messages of", func(u string) error {
		out, err := t.client.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{QueueUrl: &u,
			AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
		if err != nil {
			return t.fail("count messages of", queue, err)
		}
		for _, k := range []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible} {
			v, _ := strconv.Atoi(out.Attributes[string(k)])
			n += v
		}
		return nil
	})
	return n, err
}

// ChangeVisibility implements transport.Transport. The receipt handle stays
// the same.
func (t *Transport) ChangeVisibility(ctx context.Context, queue string, m *transport.Message, d time.Duration) error {
	return t.withURL(ctx, queue, "change visibility", func(u string) error {
		_, err := t.client.ChangeMessageVisibility(ctx, &awssqs.ChangeMessageVisibilityInput{
			QueueUrl:          &u,
			ReceiptHandle:     &m.Handle,
			VisibilityTimeout: seconds(d),
		})
		return t.fail("change visibility on", queue, err)
	})
}

// queueURL returns the URL of queue: remembered, or derived from the URL
// of another queue of the account (every queue URL is the same but for the
// name at its end), or looked up. derived reports a URL not confirmed by
// GetQueueUrl, which a call that finds no queue there looks up again (see
// withURL).
func (t *Transport) queueURL(ctx context.Context, queue string) (u string, derived bool, err error) {
	if !transport.ValidQueueName(queue) {
		return "", false, fmt.Errorf("queue %q: %w", queue, transport.ErrInvalidQueueName)
	}
	t.mu.Lock()
	u, ok := t.urls[queue]
	base := t.base
	t.mu.Unlock()
	if ok {
		return u, false, nil
	}
	if base != "" {
		return base + queue, true, nil
	}
	u, err = t.lookup(ctx, queue)
	return u, false, err
}

// lookup asks SQS for the URL of queue and remembers it, and the base of
// the account's queue URLs.
func (t *Transport) lookup(ctx context.Context, queue string) (string, error) {
	out, err := t.client.GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: &queue})
	if err != nil {
		if sentinel := classify(err); sentinel != nil {
			return "", fmt.Errorf("failed to look up queue %q: %w", queue, sentinel)
		}
		return "", fmt.Errorf("failed to look up queue %q: %w", queue, err)
	}
	u := aws.ToString(out.QueueUrl)
	base, ok := strings.CutSuffix(u, "/"+queue)
	t.mu.Lock()
	t.urls[queue] = u
	changed := ok && base+"/" != t.base
	if changed {
		t.base = base + "/"
	}
	t.mu.Unlock()
	if changed && t.cache != nil {
		t.cache.store(base + "/")
	}
	return u, nil
}

// withURL runs op on the URL of queue. When the URL was derived and op
// finds no queue there, the URL is looked up and op tried once more: the
// cache may be of another account, or the queue's URL of another form.
// A queue that really does not exist fails the lookup.
func (t *Transport) withURL(ctx context.Context, queue, what string, op func(u string) error) error {
	u, derived, err := t.queueURL(ctx, queue)
	if err != nil {
		return fmt.Errorf("failed to %s: %w", what, err)
	}
	err = op(u)
	if !derived || err == nil || !errors.Is(err, transport.ErrNoQueue) && !isAccessDenied(err) {
		if err == nil && derived {
			t.mu.Lock()
			t.urls[queue] = u
			t.mu.Unlock()
		}
		return err
	}
	fresh, lerr := t.lookup(ctx, queue)
	if lerr != nil {
		return fmt.Errorf("failed to %s: %w", what, lerr)
	}
	if fresh == u {
		return err
	}
	return op(fresh)
}

// isAccessDenied reports an error SQS gives for a queue URL of an account
// the caller has no rights in, as a derived URL of another account is.
func isAccessDenied(err error) bool {
	var api smithy.APIError
	return errors.As(err, &api) && (api.ErrorCode() == "AccessDenied" || api.ErrorCode() == "AccessDeniedException")
}

// fail wraps a failed operation's error, with a sentinel where one
// applies, and forgets the URL of a queue that has gone. For Publish,
// queue is the topic.
func (t *Transport) fail(op, queue string, err error) error {
	if err == nil {
		return nil
	}
	sentinel := classify(err)
	if sentinel == nil {
		return fmt.Errorf("failed to %s %q: %w", op, queue, err)
	}
	if sentinel == transport.ErrNoQueue {
		t.mu.Lock()
		delete(t.urls, queue)
		t.mu.Unlock()
	}
	return fmt.Errorf("failed to %s %q: %w: %w", op, queue, sentinel, err)
}

// classify returns the transport error that err from SQS or SNS amounts
// to, or nil. SQS answers in its JSON protocol, where the SDK makes typed
// errors, but the error codes of its older query protocol can still show
// up. SNS says NotFound for a topic that does not exist.
func classify(err error) error {
	var (
		noTopic     *snstypes.NotFoundException
		noQueue     *types.QueueDoesNotExist
		badHandle   *types.ReceiptHandleIsInvalid
		notInflight *types.MessageNotInflight
		badID       *types.InvalidIdFormat
		api         smithy.APIError
	)
	switch {
	case errors.As(err, &noTopic):
		return transport.ErrNoTopic
	case errors.As(err, &noQueue):
		return transport.ErrNoQueue
	case errors.As(err, &badHandle), errors.As(err, &notInflight), errors.As(err, &badID):
		return transport.ErrStaleHandle
	case errors.As(err, &api):
		switch api.ErrorCode() {
		case "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist":
			return transport.ErrNoQueue
		case "NotFound":
			return transport.ErrNoTopic
		case "ReceiptHandleIsInvalid", "InvalidIdFormat", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight":
			return transport.ErrStaleHandle
		case "InvalidParameterValue":
			// How SQS reports a receipt handle that expired.
			if strings.Contains(api.ErrorMessage(), "ReceiptHandle") {
				return transport.ErrStaleHandle
			}
		}
	}
	return nil
}

// seconds converts d to whole seconds for SQS, rounding up so that a
// message is never visible earlier than asked.
func seconds(d time.Duration) int32 {
	if d <= 0 {
		return 0
	}
	s := d / time.Second
	if d%time.Second != 0 {
		s++
	}
	return int32(min(s, 12*60*60))
}

// validBody reports whether b is UTF-8 of only the characters SQS accepts
// (XML's Char production). The SDK would silently replace invalid UTF-8.
func validBody(b []byte) bool {
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && size == 1:
			return false
		case r == '\t', r == '\n', r == '\r',
			r >= 0x20 && r <= 0xD7FF, r >= 0xE000 && r <= 0xFFFD, r >= 0x10000 && r <= 0x10FFFF:
		default:
			return false
		}
		b = b[size:]
	}
	return true
}

// CreateQueue creates the named queue, or returns the URL of the queue of
// that name if it exists with the same attributes. The queue accepts
// messages of transport.DefaultMaxMessageSize.
func CreateQueue(ctx context.Context, cfg aws.Config, name string) (string, error) {
	if !transport.ValidQueueName(name) {
		return "", fmt.Errorf("failed to create queue: %q: %w", name, transport.ErrInvalidQueueName)
	}
	out, err := awssqs.NewFromConfig(cfg).CreateQueue(ctx, &awssqs.CreateQueueInput{
		QueueName: &name,
		Attributes: map[string]string{
			string(types.QueueAttributeNameMaximumMessageSize): strconv.Itoa(transport.DefaultMaxMessageSize),
		},
	})
	if err != nil {
		return "", fmt.Errorf("failed to create queue %q: %w", name, err)
	}
	return aws.ToString(out.QueueUrl), nil
}
