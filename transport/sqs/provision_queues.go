package sqs

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sera-dev/sera/transport"
)

// planTopic plans the topic called name; it reports whether it exists.
func (p *Provisioner) planTopic(ctx context.Context, pl *Plan, name string) (bool, error) {
	exists, err := p.topicExists(ctx, name)
	if err != nil {
		return false, err
	}
	if exists {
		pl.found("sns topic %s", name)
		return true, nil
	}
	pl.Add(call("sns:CreateTopic", "Name", name), func(ctx context.Context) error {
		_, err := p.SNS.CreateTopic(ctx, &sns.CreateTopicInput{Name: &name})
		return err
	})
	return false, nil
}

func (p *Provisioner) topicExists(ctx context.Context, name string) (bool, error) {
	arn := p.Account.TopicARN(name)
	_, err := p.SNS.GetTopicAttributes(ctx, &sns.GetTopicAttributesInput{TopicArn: &arn})
	switch {
	case err == nil:
		return true, nil
	case isCode(err, "NotFound"):
		return false, nil
	default:
		return false, fmt.Errorf("failed to read sns topic %s: %w", name, err)
	}
}

// queue is what exists of a queue.
type queue struct {
	url   string // "" if it does not exist
	attrs map[string]string
}

func (p *Provisioner) readQueue(ctx context.Context, name string, attrs []string) (*queue, error) {
	out, err := p.SQS.GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: &name})
	if noQueue(err) {
		return &queue{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to look up sqs queue %s: %w", name, err)
	}
	q := &queue{url: aws.ToString(out.QueueUrl), attrs: map[string]string{}}
	if len(attrs) == 0 {
		return q, nil
	}
	names := make([]types.QueueAttributeName, len(attrs))
	for i, a := range attrs {
		names[i] = types.QueueAttributeName(a)
	}
	got, err := p.SQS.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{QueueUrl: &q.url, AttributeNames: names})
	if err != nil {
		return nil, fmt.Errorf("failed to read the attributes of sqs queue %s: %w", name, err)
	}
	q.attrs = got.Attributes
	return q, nil
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// planQueue plans queue name with the attributes want, creating it or
// setting the attributes that differ. It returns what existed.
func (p *Provisioner) planQueue(ctx context.Context, pl *Plan, name string, want map[string]string) (*queue, error) {
	q, err := p.readQueue(ctx, name, keys(want))
	if err != nil {
		return nil, err
	}
	if q.url == "" {
		pl.Add(call("sqs:CreateQueue", append([]string{"QueueName", name}, attrParams(want)...)...), func(ctx context.Context) error {
			_, err := p.SQS.CreateQueue(ctx, &awssqs.CreateQueueInput{QueueName: &name, Attributes: want})
			return err
		})
		return q, nil
	}
	diff := map[string]string{}
	for k, v := range want {
		cur := q.attrs[k]
		if k == "Policy" || k == "RedrivePolicy" {
			if !SameJSON(cur, v) {
				diff[k] = v
			}
		} else if cur != v {
			diff[k] = v
		}
	}
	if len(diff) == 0 {
		pl.found("sqs queue %s", name)
		return q, nil
	}
	u := q.url
	pl.Add(call("sqs:SetQueueAttributes", append([]string{"QueueUrl", u}, attrParams(diff)...)...), func(ctx context.Context) error {
		_, err := p.SQS.SetQueueAttributes(ctx, &awssqs.SetQueueAttributesInput{QueueUrl: &u, Attributes: diff})
		return err
	})
	return q, nil
}

// retention is how long a watcher or reply queue keeps a message.
func (p *Provisioner) retention() string {
	life := p.RequestLifetime
	if life <= 0 {
		life = 24 * time.Hour
	}
	s := int64((life + time.Hour) / time.Second)
	return strconv.FormatInt(min(max(s, 60), 14*24*3600), 10)
}

// Attributes of the queues.
const (
	longPoll        = "20"
	maxReceiveCount = 5
	dlqRetention    = "1209600" // 14 days, SQS's longest: time to look
	// heartbeatRetention is an hour: a heartbeat is news only until the
	// next; the client keeps what it read (SERA_STATE/fleet.json).
	heartbeatRetention = "3600"
)

func (p *Provisioner) watcherQueueAttributes(a Account, name string, topics []string) map[string]string {
	redrive, _ := json.Marshal(struct {
		Target string `json:"deadLetterTargetArn"`
		Max    int    `json:"maxReceiveCount"`
	}{a.QueueARN(DeadLetterQueue(p.Prefix, name)), maxReceiveCount})
	q := transport.WatcherQueue(p.Prefix, name)
	return map[string]string{
		"MaximumMessageSize":            strconv.Itoa(transport.DefaultMaxMessageSize),
		"MessageRetentionPeriod":        p.retention(),
		"ReceiveMessageWaitTimeSeconds": longPoll,
		"SqsManagedSseEnabled":          "true",
		"RedrivePolicy":                 string(redrive),
		"Policy":                        WatcherQueuePolicy(a, q, topics).JSON(),
	}
}

func deadLetterAttributes() map[string]string {
	return map[string]string{
		"MaximumMessageSize":     strconv.Itoa(transport.DefaultMaxMessageSize),
		"MessageRetentionPeriod": dlqRetention,
		"SqsManagedSseEnabled":   "true",
	}
}

// replyQueueAttributes leave the queue's default wait at 0: the SDK
// cannot send WaitTimeSeconds=0 (it omits zero), so with a default of 20
// the client's last, short poll before its timeout would wait 20 s.
func (p *Provisioner) replyQueueAttributes() map[string]string {
	return map[string]string{
		"MaximumMessageSize":     strconv.Itoa(transport.DefaultMaxMessageSize),
		"MessageRetentionPeriod": p.retention(),
		"SqsManagedSseEnabled":   "true",
	}
}

// heartbeatQueueAttributes keep an hour of heartbeats: a watcher sends one
// every SERA_HEARTBEAT (5 minutes), and a client wants the newest.
func heartbeatQueueAttributes() map[string]string {
	return map[string]string{
		"MaximumMessageSize":     strconv.Itoa(transport.DefaultMaxMessageSize),
		"MessageRetentionPeriod": heartbeatRetention,
		"SqsManagedSseEnabled":   "true",
	}
}

// policyTopics lists the topic names a watcher queue policy lets send. It
// reads the policy loosely, since AWS may store a list of one as a string.
func (p *Provisioner) policyTopics(policy string) []string {
	var doc struct{ Statement any }
	if json.Unmarshal([]byte(policy), &doc) != nil {
		return nil
	}
	var out []string
	prefix := p.Account.TopicARN("")
	for _, s := range asList(doc.Statement) {
		st, _ := s.(map[string]any)
		cond, _ := st["Condition"].(map[string]any)
		eq, _ := cond["ArnEquals"].(map[string]any)
		for _, v := range asList(eq["aws:SourceArn"]) {
			arn, _ := v.(string)
			if name, ok := strings.CutPrefix(arn, prefix); ok && name != "" && !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	return out
}

func asList(v any) []any {
	if l, ok := v.([]any); ok {
		return l
	}
	if v == nil {
		return nil
	}
	return []any{v}
}

// subscription finds the subscription of queueARN to topic, "" if none.
func (p *Provisioner) subscription(ctx context.Context, topic, queueARN string) (string, error) {
	arn := p.Account.TopicARN(topic)
	var next *string
	for {
		out, err := p.SNS.ListSubscriptionsByTopic(ctx, &sns.ListSubscriptionsByTopicInput{TopicArn: &arn, NextToken: next})
		if isCode(err, "NotFound") {
			return "", nil
		} else if err != nil {
			return "", fmt.Errorf("failed to list the subscriptions of sns topic %s: %w", topic, err)
		}
		for _, s := range out.Subscriptions {
			if aws.ToString(s.Protocol) == "sqs" && aws.ToString(s.Endpoint) == queueARN {
				return aws.ToString(s.SubscriptionArn), nil
			}
		}
		if aws.ToString(out.NextToken) == "" {
			return "", nil
		}
		next = out.NextToken
	}
}

// planSubscriptions subscribes queue to topics with raw delivery and
// unsubscribes it from drop. exists says which topics exist now.
func (p *Provisioner) planSubscriptions(ctx context.Context, pl *Plan, queue string, topics []string, exists map[string]bool, drop []string) error {
	qarn := p.Account.QueueARN(queue)
	for _, t := range topics {
		tarn := p.Account.TopicARN(t)
		sub := ""
		if exists[t] {
			var err error
			if sub, err = p.subscription(ctx, t, qarn); err != nil {
				return err
			}
		}
		if sub == "" {
			pl.Add(call("sns:Subscribe", "TopicArn", tarn, "Protocol", "sqs", "Endpoint", qarn,
				"Attributes.RawMessageDelivery", "true", "ReturnSubscriptionArn", "true"), func(ctx context.Context) error {
				_, err := p.SNS.Subscribe(ctx, &sns.SubscribeInput{
					TopicArn: &tarn, Protocol: aws.String("sqs"), Endpoint: &qarn,
					Attributes:            map[string]string{"RawMessageDelivery": "true"},
					ReturnSubscriptionArn: true,
				})
				return err
			})
			continue
		}
		out, err := p.SNS.GetSubscriptionAttributes(ctx, &sns.GetSubscriptionAttributesInput{SubscriptionArn: &sub})
		if err != nil {
			return fmt.Errorf("failed to read subscription %s: %w", sub, err)
		}
		if out.Attributes["RawMessageDelivery"] == "true" {
			pl.found("sns subscription of %s to %s, raw delivery", queue, t)
			continue
		}
		pl.Add(call("sns:SetSubscriptionAttributes", "SubscriptionArn", sub, "AttributeName", "RawMessageDelivery", "AttributeValue", "true"),
			func(ctx context.Context) error {
				_, err := p.SNS.SetSubscriptionAttributes(ctx, &sns.SetSubscriptionAttributesInput{
					SubscriptionArn: &sub, AttributeName: aws.String("RawMessageDelivery"), AttributeValue: aws.String("true"),
				})
				return err
			})
	}
	for _, t := range drop {
		sub, err := p.subscription(ctx, t, qarn)
		if err != nil {
			return err
		}
		if sub != "" {
			p.planUnsubscribe(pl, sub)
		}
	}
	return nil
}

func (p *Provisioner) planUnsubscribe(pl *Plan, sub string) {
	pl.Add(call("sns:Unsubscribe", "SubscriptionArn", sub), func(ctx context.Context) error {
		_, err := p.SNS.Unsubscribe(ctx, &sns.UnsubscribeInput{SubscriptionArn: &sub})
		if isCode(err, "NotFound") {
			return nil
		}
		return err
	})
}

func (p *Provisioner) planDeleteQueue(pl *Plan, name string, q *queue) {
	if q.url == "" {
		pl.found("sqs queue %s absent", name)
		return
	}
	u := q.url
	pl.Add(call("sqs:DeleteQueue", "QueueUrl", u), func(ctx context.Context) error {
		_, err := p.SQS.DeleteQueue(ctx, &awssqs.DeleteQueueInput{QueueUrl: &u})
		if noQueue(err) {
			return nil
		}
		return err
	})
}
