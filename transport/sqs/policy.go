package sqs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/sera-dev/sera/transport"
)

// UsernameVar is the IAM policy variable that one group policy uses to name
// each member's own queue: a watcher's or client's IAM user is called
// exactly like its queue.
const UsernameVar = "${aws:username}"

// Account is where sera's queues and topics live: one AWS account and one
// region. A prefix serves one region.
type Account struct {
	// Partition is "aws" unless the account is in China or GovCloud.
	Partition string
	Region    string
	ID        string
}

func (a Account) partition() string {
	if a.Partition == "" {
		return "aws"
	}
	return a.Partition
}

// QueueARN is the ARN of the queue called name.
func (a Account) QueueARN(name string) string {
	return fmt.Sprintf("arn:%s:sqs:%s:%s:%s", a.partition(), a.Region, a.ID, name)
}

// TopicARN is the ARN of the SNS topic called name.
func (a Account) TopicARN(name string) string {
	return fmt.Sprintf("arn:%s:sns:%s:%s:%s", a.partition(), a.Region, a.ID, name)
}

// UserARN is the ARN of the IAM user called name.
func (a Account) UserARN(name string) string {
	return fmt.Sprintf("arn:%s:iam::%s:user/%s", a.partition(), a.ID, name)
}

// Names of the resources of a prefix. The watcher and client queues are
// transport.WatcherQueue and transport.ClientQueue; their IAM users have
// the same names.

// WatchersGroup is the IAM group of every watcher.
func WatchersGroup(prefix string) string { return prefix + "-watchers" }

// ClientsGroup is the IAM group of every client.
func ClientsGroup(prefix string) string { return prefix + "-clients" }

// WatcherPolicyName is the name of the watchers group's inline policy.
func WatcherPolicyName(prefix string) string { return prefix + "-watcher" }

// ClientPolicyName is the name of the clients group's inline policy.
func ClientPolicyName(prefix string) string { return prefix + "-client" }

// AllTopic is the topic every watcher queue subscribes to.
func AllTopic(prefix string) string { return transport.AllTopic(prefix) }

// GroupTopic is the topic of the watchers of group g.
func GroupTopic(prefix, g string) string { return transport.GroupTopic(prefix, g) }

// DeadLetterQueue is where the requests go that watcher name received five
// times without deleting them. It is outside PREFIX-w-*, so clients cannot
// send to it and no watcher's name can collide with it.
func DeadLetterQueue(prefix, name string) string { return prefix + "-dlq-" + name }

// MaxUserNameLen is IAM's limit on user names, which are queue names here.
const MaxUserNameLen = 64

// Policy is an IAM policy document. Its JSON is deterministic: fields in
// declaration order, condition maps sorted by key.
type Policy struct {
	Version   string      `json:"Version"`
	ID        string      `json:"Id,omitempty"`
	Statement []Statement `json:"Statement"`
}

// Statement is one statement of a Policy.
type Statement struct {
	Sid       string                         `json:"Sid,omitempty"`
	Effect    string                         `json:"Effect"`
	Principal map[string]string              `json:"Principal,omitempty"`
	Action    []string                       `json:"Action,omitempty"`
	NotAction []string                       `json:"NotAction,omitempty"`
	Resource  []string                       `json:"Resource"`
	Condition map[string]map[string][]string `json:"Condition,omitempty"`
}

const policyVersion = "2012-10-17"

// JSON is the policy as compact JSON, as it is sent to AWS.
func (p *Policy) JSON() string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		panic(err) // only strings, slices and maps of them
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Indent is the policy as indented JSON, for people.
func (p *Policy) Indent() string {
	var b bytes.Buffer
	if err := json.Indent(&b, []byte(p.JSON()), "", "  "); err != nil {
		panic(err)
	}
	return b.String()
}

// The actions each role is allowed, sorted. Everything else is denied
// explicitly (a NotAction deny), so that a policy attached to these users
// later by mistake cannot give them more actions.
var (
	watcherOwnQueueActions = []string{
		"sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
		"sqs:GetQueueUrl", "sqs:ReceiveMessage",
	}
	sendActions           = []string{"sqs:GetQueueUrl", "sqs:SendMessage"}
	clientOwnQueueActions = []string{"sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"}
	clientPublishActions  = []string{"sns:Publish"}
	watcherAllowedActions = union(watcherOwnQueueActions, sendActions)
	clientAllowedActions  = union(clientOwnQueueActions, sendActions, clientPublishActions)
)

func union(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (a Account) check() {
	if a.ID == "" || a.Region == "" {
		panic("sqs: a policy needs the account ID and region")
	}
}

// WatcherPolicy is the inline policy of the watchers group: a watcher
// receives, deletes and changes visibility on its own queue only (the
// queue named like its IAM user), and sends only to client reply queues.
func WatcherPolicy(a Account, prefix string) *Policy {
	a.check()
	return &Policy{
		Version: policyVersion,
		Statement: []Statement{
			{
				Sid: "OwnQueue", Effect: "Allow",
				Action:   watcherOwnQueueActions,
				Resource: []string{a.QueueARN(UsernameVar)},
			},
			{
				Sid: "SendReplies", Effect: "Allow",
				Action:   sendActions,
				Resource: []string{a.QueueARN(transport.ClientQueue(prefix, "*"))},
			},
			{
				Sid: "NothingElse", Effect: "Deny",
				NotAction: watcherAllowedActions,
				Resource:  []string{"*"},
			},
		},
	}
}

// ClientPolicy is the inline policy of the clients group: a client sends
// to watcher queues, publishes to the prefix's topics, and receives,
// deletes and changes visibility on its own reply queues only: the one
// named like its IAM user and those named so with a suffix (PREFIX-c-FP-N,
// one per process running at once; see transport.ReplyQueue). A
// fingerprint has a fixed length, so no client's name with a suffix is
// another's.
func ClientPolicy(a Account, prefix string) *Policy {
	a.check()
	return &Policy{
		Version: policyVersion,
		Statement: []Statement{
			{
				Sid: "SendRequests", Effect: "Allow",
				Action:   sendActions,
				Resource: []string{a.QueueARN(transport.WatcherQueue(prefix, "*"))},
			},
			{
				Sid: "PublishRequests", Effect: "Allow",
				Action:   clientPublishActions,
				Resource: []string{a.TopicARN(AllTopic(prefix)), a.TopicARN(GroupTopic(prefix, "*"))},
			},
			{
				Sid: "OwnReplyQueues", Effect: "Allow",
				Action:   clientOwnQueueActions,
				Resource: []string{a.QueueARN(UsernameVar), a.QueueARN(UsernameVar + "-*")},
			},
			{
				Sid: "NothingElse", Effect: "Deny",
				NotAction: clientAllowedActions,
				Resource:  []string{"*"},
			},
		},
	}
}

// WatcherQueuePolicy is the queue policy of a watcher queue: SNS may send
// to it from the given topics only. Clients and the watcher need no queue
// policy: their identity policies cover them.
func WatcherQueuePolicy(a Account, queue string, topics []string) *Policy {
	a.check()
	arns := make([]string, len(topics))
	for i, t := range topics {
		arns[i] = a.TopicARN(t)
	}
	slices.Sort(arns)
	return &Policy{
		Version: policyVersion,
		ID:      a.QueueARN(queue) + "/sera",
		Statement: []Statement{{
			Sid: "FromTopics", Effect: "Allow",
			Principal: map[string]string{"Service": "sns.amazonaws.com"},
			Action:    []string{"sqs:SendMessage"},
			Resource:  []string{a.QueueARN(queue)},
			Condition: map[string]map[string][]string{"ArnEquals": {"aws:SourceArn": arns}},
		}},
	}
}

// WatcherPolicyFor is WatcherPolicy for watcher name alone, its queue
// named instead of ${aws:username}: the policy to attach to credentials
// sera did not make (an instance role, a user an organisation issues),
// whose name is not the queue's. AWS evaluates WatcherPolicy for sera's
// own user exactly so.
func WatcherPolicyFor(a Account, prefix, name string) string {
	return SubstituteUsername(WatcherPolicy(a, prefix).JSON(), transport.WatcherQueue(prefix, name))
}

// ClientPolicyFor is ClientPolicy for the client with fingerprint fp
// alone, as WatcherPolicyFor is for a watcher.
func ClientPolicyFor(a Account, prefix, fp string) string {
	return SubstituteUsername(ClientPolicy(a, prefix).JSON(), transport.ClientQueue(prefix, fp))
}

// SubstituteUsername returns the policy JSON with the ${aws:username}
// variable replaced by user, which is what AWS does when it evaluates the
// policy for user.
func SubstituteUsername(policyJSON, user string) string {
	return strings.ReplaceAll(policyJSON, UsernameVar, user)
}

// SameJSON reports whether two JSON documents mean the same to AWS: it
// ignores formatting, key order, the difference between a string and a
// list of one string, and between a number and its decimal string, all of
// which AWS may change when it stores a policy.
func SameJSON(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return a == b
	}
	return reflect.DeepEqual(normalJSON(x), normalJSON(y))
}

func normalJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = normalJSON(e)
		}
		return v
	case []any:
		if len(v) == 1 {
			return normalJSON(v[0])
		}
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = normalJSON(e)
		}
		return out
	case float64:
		return fmt.Sprint(v)
	default:
		return v
	}
}
