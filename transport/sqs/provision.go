package sqs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/transport"
)

// IAMAPI is the part of the IAM client that provisioning calls.
type IAMAPI interface {
	GetGroup(context.Context, *iam.GetGroupInput, ...func(*iam.Options)) (*iam.GetGroupOutput, error)
	CreateGroup(context.Context, *iam.CreateGroupInput, ...func(*iam.Options)) (*iam.CreateGroupOutput, error)
	GetGroupPolicy(context.Context, *iam.GetGroupPolicyInput, ...func(*iam.Options)) (*iam.GetGroupPolicyOutput, error)
	PutGroupPolicy(context.Context, *iam.PutGroupPolicyInput, ...func(*iam.Options)) (*iam.PutGroupPolicyOutput, error)
	GetUser(context.Context, *iam.GetUserInput, ...func(*iam.Options)) (*iam.GetUserOutput, error)
	CreateUser(context.Context, *iam.CreateUserInput, ...func(*iam.Options)) (*iam.CreateUserOutput, error)
	TagUser(context.Context, *iam.TagUserInput, ...func(*iam.Options)) (*iam.TagUserOutput, error)
	DeleteUser(context.Context, *iam.DeleteUserInput, ...func(*iam.Options)) (*iam.DeleteUserOutput, error)
	ListGroupsForUser(context.Context, *iam.ListGroupsForUserInput, ...func(*iam.Options)) (*iam.ListGroupsForUserOutput, error)
	AddUserToGroup(context.Context, *iam.AddUserToGroupInput, ...func(*iam.Options)) (*iam.AddUserToGroupOutput, error)
	RemoveUserFromGroup(context.Context, *iam.RemoveUserFromGroupInput, ...func(*iam.Options)) (*iam.RemoveUserFromGroupOutput, error)
	ListAccessKeys(context.Context, *iam.ListAccessKeysInput, ...func(*iam.Options)) (*iam.ListAccessKeysOutput, error)
	CreateAccessKey(context.Context, *iam.CreateAccessKeyInput, ...func(*iam.Options)) (*iam.CreateAccessKeyOutput, error)
	DeleteAccessKey(context.Context, *iam.DeleteAccessKeyInput, ...func(*iam.Options)) (*iam.DeleteAccessKeyOutput, error)
}

// SQSAPI is the part of the SQS client that provisioning calls.
type SQSAPI interface {
	GetQueueUrl(context.Context, *awssqs.GetQueueUrlInput, ...func(*awssqs.Options)) (*awssqs.GetQueueUrlOutput, error)
	GetQueueAttributes(context.Context, *awssqs.GetQueueAttributesInput, ...func(*awssqs.Options)) (*awssqs.GetQueueAttributesOutput, error)
	CreateQueue(context.Context, *awssqs.CreateQueueInput, ...func(*awssqs.Options)) (*awssqs.CreateQueueOutput, error)
	SetQueueAttributes(context.Context, *awssqs.SetQueueAttributesInput, ...func(*awssqs.Options)) (*awssqs.SetQueueAttributesOutput, error)
	DeleteQueue(context.Context, *awssqs.DeleteQueueInput, ...func(*awssqs.Options)) (*awssqs.DeleteQueueOutput, error)
}

// SNSAPI is the part of the SNS client that provisioning calls.
type SNSAPI interface {
	GetTopicAttributes(context.Context, *sns.GetTopicAttributesInput, ...func(*sns.Options)) (*sns.GetTopicAttributesOutput, error)
	CreateTopic(context.Context, *sns.CreateTopicInput, ...func(*sns.Options)) (*sns.CreateTopicOutput, error)
	ListSubscriptionsByTopic(context.Context, *sns.ListSubscriptionsByTopicInput, ...func(*sns.Options)) (*sns.ListSubscriptionsByTopicOutput, error)
	GetSubscriptionAttributes(context.Context, *sns.GetSubscriptionAttributesInput, ...func(*sns.Options)) (*sns.GetSubscriptionAttributesOutput, error)
	Subscribe(context.Context, *sns.SubscribeInput, ...func(*sns.Options)) (*sns.SubscribeOutput, error)
	SetSubscriptionAttributes(context.Context, *sns.SetSubscriptionAttributesInput, ...func(*sns.Options)) (*sns.SetSubscriptionAttributesOutput, error)
	Unsubscribe(context.Context, *sns.UnsubscribeInput, ...func(*sns.Options)) (*sns.UnsubscribeOutput, error)
}

// STSAPI is the part of the STS client that provisioning calls.
type STSAPI interface {
	GetCallerIdentity(context.Context, *sts.GetCallerIdentityInput, ...func(*sts.Options)) (*sts.GetCallerIdentityOutput, error)
}

// Errors of provisioning, for errors.Is.
var (
	// ErrNotProvisioned: create-provider-keys has not made the groups
	// and the all topic of the prefix yet.
	ErrNotProvisioned = errors.New("the prefix's IAM groups and topic do not exist yet")
	// ErrNotRegistered: the watcher or client has no IAM user.
	ErrNotRegistered = errors.New("not registered")
	// ErrUnfinishedRotation: the user has two access keys, AWS's limit,
	// so a new one cannot be made.
	ErrUnfinishedRotation = errors.New("two access keys exist: a key rotation was not finished")
	// ErrOtherRegion: the prefix's group policy is for another region.
	ErrOtherRegion = errors.New("the prefix is provisioned in another region")
)

// Provisioner creates, checks and removes the AWS resources of one prefix
// in one account and region: IAM groups, users and access keys, SQS
// queues, SNS topics and subscriptions. Its Plan methods only read; the
// steps of the plans they return make the changes.
type Provisioner struct {
	IAM IAMAPI
	SQS SQSAPI
	SNS SNSAPI
	STS STSAPI

	// Prefix names every resource (PREFIX-w-NAME, PREFIX-watchers, …).
	Prefix string
	// Account is the account and region. Lookup fills in the account ID
	// and partition with STS GetCallerIdentity when ID is empty.
	Account Account
	// RequestLifetime is the longest lifetime of a request: a watcher
	// queue keeps a message at least that long (plus an hour for clock
	// skew). Zero means 24 hours.
	RequestLifetime time.Duration
	// CheckKey confirms that a new access key works and names the user:
	// it calls STS GetCallerIdentity signed with that key and returns the
	// caller's ARN. NewProvisioner sets it.
	CheckKey func(ctx context.Context, id, secret string) (arn string, err error)
	// KeyWait is how long a rotation waits for IAM to make a new key
	// usable (eventual consistency); zero means 2 minutes.
	KeyWait time.Duration
}

// NewProvisioner returns a Provisioner whose clients all use cfg, in
// cfg's region.
func NewProvisioner(cfg aws.Config, prefix string) *Provisioner {
	return &Provisioner{
		IAM: iam.NewFromConfig(cfg), SQS: awssqs.NewFromConfig(cfg),
		SNS: sns.NewFromConfig(cfg), STS: sts.NewFromConfig(cfg),
		Prefix: prefix, Account: Account{Region: cfg.Region},
		CheckKey: CheckKeyWithSTS(cfg),
	}
}

// CheckKeyWithSTS returns a Provisioner.CheckKey that calls STS
// GetCallerIdentity as cfg configures it, but signed with the key given.
func CheckKeyWithSTS(cfg aws.Config) func(ctx context.Context, id, secret string) (string, error) {
	return func(ctx context.Context, id, secret string) (string, error) {
		c := cfg.Copy()
		c.Credentials = credentials.NewStaticCredentialsProvider(id, secret, "")
		out, err := sts.NewFromConfig(c).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.Arn), nil
	}
}

// LoadAdminConfig loads the AWS configuration for provisioning: the SDK's
// default chain (environment, shared files, instance role) or the named
// profile, never sera's own SERA_ACCESS_KEY, which is a watcher's or a
// client's key and may not provision anything. region, if set, overrides
// the chain's.
func LoadAdminConfig(ctx context.Context, region, profile string) (aws.Config, error) {
	var fns []func(*config.LoadOptions) error
	if region != "" {
		fns = append(fns, config.WithRegion(region))
	}
	if profile != "" {
		fns = append(fns, config.WithSharedConfigProfile(profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, fns...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("failed to load AWS config: %w", err)
	}
	if cfg.Region == "" {
		return aws.Config{}, errors.New("no AWS region: use --region, SERA_REGION or AWS_REGION")
	}
	return cfg, nil
}

// Lookup returns the account, asking STS for its ID the first time.
func (p *Provisioner) Lookup(ctx context.Context) (Account, error) {
	if p.Account.Region == "" {
		return Account{}, errors.New("no AWS region")
	}
	if p.Account.ID != "" {
		return p.Account, nil
	}
	out, err := p.STS.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return Account{}, fmt.Errorf("failed to find the AWS account (sts:GetCallerIdentity): %w", err)
	}
	p.Account.ID = aws.ToString(out.Account)
	if f := strings.Split(aws.ToString(out.Arn), ":"); len(f) > 2 && f[0] == "arn" {
		p.Account.Partition = f[1]
	}
	if p.Account.ID == "" {
		return Account{}, errors.New("failed to find the AWS account: sts:GetCallerIdentity named none")
	}
	return p.Account, nil
}

// Plan is what a command would change, found by reading the account
// first, so that a dry run shows exactly what a real run does and a
// re-run that finds everything in place changes nothing. Its steps'
// descriptions are the exact API calls and their parameters.
type Plan struct {
	plan.Plan
	// Keys are the access keys the user has when the plan makes none.
	Keys []KeyInfo
}

func (pl *Plan) found(format string, args ...any) {
	pl.Found = append(pl.Found, fmt.Sprintf(format, args...))
}

func (pl *Plan) note(format string, args ...any) {
	pl.Notes = append(pl.Notes, fmt.Sprintf(format, args...))
}

// call describes an API call: "iam:CreateUser UserName=x". params are
// name, value pairs; attribute maps come sorted as Attributes.NAME=VALUE.
func call(action string, params ...string) string {
	var b strings.Builder
	b.WriteString(action)
	for i := 0; i+1 < len(params); i += 2 {
		fmt.Fprintf(&b, " %s=%s", params[i], params[i+1])
	}
	return b.String()
}

func attrParams(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, "Attributes."+k, m[k])
	}
	return out
}

func apiCode(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}

func isCode(err error, codes ...string) bool {
	return err != nil && slices.Contains(codes, apiCode(err))
}

func noQueue(err error) bool { return err != nil && classify(err) == transport.ErrNoQueue }

// ProviderKeys plans what create-provider-keys makes: the watchers and
// clients IAM groups with their policies, and the all topic.
func (p *Provisioner) ProviderKeys(ctx context.Context) (*Plan, error) {
	a, err := p.Lookup(ctx)
	if err != nil {
		return nil, err
	}
	pl := &Plan{}
	if err := p.planGroup(ctx, pl, WatchersGroup(p.Prefix), WatcherPolicyName(p.Prefix), WatcherPolicy(a, p.Prefix)); err != nil {
		return nil, err
	}
	if err := p.planGroup(ctx, pl, ClientsGroup(p.Prefix), ClientPolicyName(p.Prefix), ClientPolicy(a, p.Prefix)); err != nil {
		return nil, err
	}
	if _, err := p.planTopic(ctx, pl, AllTopic(p.Prefix)); err != nil {
		return nil, err
	}
	return pl, nil
}

func (p *Provisioner) planGroup(ctx context.Context, pl *Plan, group, policyName string, policy *Policy) error {
	exists, err := p.groupExists(ctx, group)
	if err != nil {
		return err
	}
	if exists {
		pl.found("iam group %s", group)
	} else {
		pl.Add(call("iam:CreateGroup", "GroupName", group), func(ctx context.Context) error {
			_, err := p.IAM.CreateGroup(ctx, &iam.CreateGroupInput{GroupName: &group})
			if isCode(err, "EntityAlreadyExists") {
				return nil
			}
			return err
		})
	}
	doc := policy.JSON()
	what := "creating it"
	if exists {
		out, err := p.IAM.GetGroupPolicy(ctx, &iam.GetGroupPolicyInput{GroupName: &group, PolicyName: &policyName})
		switch {
		case err == nil:
			// IAM returns the document URL-encoded (RFC 3986).
			cur, uerr := url.PathUnescape(aws.ToString(out.PolicyDocument))
			if uerr != nil {
				cur = aws.ToString(out.PolicyDocument)
			}
			if SameJSON(cur, doc) {
				pl.found("iam group policy %s of group %s", policyName, group)
				return nil
			}
			for _, r := range policyRegions(cur) {
				if r != p.Account.Region {
					return fmt.Errorf("group policy %s of %s is for region %s, not %s: %w; use another --prefix for %s",
						policyName, group, r, p.Account.Region, ErrOtherRegion, p.Account.Region)
				}
			}
			what = "replacing a different one"
		case isCode(err, "NoSuchEntity"):
		default:
			return fmt.Errorf("failed to read group policy %s of %s: %w", policyName, group, err)
		}
	}
	pl.Add(call("iam:PutGroupPolicy", "GroupName", group, "PolicyName", policyName, "PolicyDocument", doc)+" ("+what+")",
		func(ctx context.Context) error {
			_, err := p.IAM.PutGroupPolicy(ctx, &iam.PutGroupPolicyInput{GroupName: &group, PolicyName: &policyName, PolicyDocument: &doc})
			return err
		})
	return nil
}

var sqsARNRegion = regexp.MustCompile(`arn:[a-z-]+:sqs:([a-z0-9-]+):`)

// policyRegions lists the regions of the queue ARNs in a policy.
func policyRegions(doc string) []string {
	var out []string
	for _, m := range sqsARNRegion.FindAllStringSubmatch(doc, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

func (p *Provisioner) groupExists(ctx context.Context, group string) (bool, error) {
	_, err := p.IAM.GetGroup(ctx, &iam.GetGroupInput{GroupName: &group, MaxItems: aws.Int32(1)})
	switch {
	case err == nil:
		return true, nil
	case isCode(err, "NoSuchEntity"):
		return false, nil
	default:
		return false, fmt.Errorf("failed to read iam group %s: %w", group, err)
	}
}

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

// user is what exists of an IAM user.
type user struct {
	exists bool
	tags   map[string]string
	groups []string
	keys   []iamtypes.AccessKeyMetadata // oldest first
}

func (p *Provisioner) readUser(ctx context.Context, name string) (*user, error) {
	out, err := p.IAM.GetUser(ctx, &iam.GetUserInput{UserName: &name})
	if isCode(err, "NoSuchEntity") {
		return &user{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read iam user %s: %w", name, err)
	}
	u := &user{exists: true, tags: map[string]string{}}
	if out.User != nil {
		// IAM user names ignore case, queue names do not: web1's
		// policy variable would name the wrong queue for Web1.
		if got := aws.ToString(out.User.UserName); got != "" && got != name {
			return nil, fmt.Errorf("iam user %s exists as %s: IAM ignores case in user names; choose another name", name, got)
		}
		for _, t := range out.User.Tags {
			u.tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
		}
	}
	var marker *string
	for {
		out, err := p.IAM.ListGroupsForUser(ctx, &iam.ListGroupsForUserInput{UserName: &name, Marker: marker})
		if err != nil {
			return nil, fmt.Errorf("failed to list the groups of iam user %s: %w", name, err)
		}
		for _, g := range out.Groups {
			u.groups = append(u.groups, aws.ToString(g.GroupName))
		}
		if !out.IsTruncated {
			break
		}
		marker = out.Marker
	}
	marker = nil
	for {
		out, err := p.IAM.ListAccessKeys(ctx, &iam.ListAccessKeysInput{UserName: &name, Marker: marker})
		if err != nil {
			return nil, fmt.Errorf("failed to list the access keys of iam user %s: %w", name, err)
		}
		u.keys = append(u.keys, out.AccessKeyMetadata...)
		if !out.IsTruncated {
			break
		}
		marker = out.Marker
	}
	slices.SortStableFunc(u.keys, func(a, b iamtypes.AccessKeyMetadata) int {
		return aws.ToTime(a.CreateDate).Compare(aws.ToTime(b.CreateDate))
	})
	return u, nil
}

// planUser plans IAM user name, with tags, in group.
func (p *Provisioner) planUser(ctx context.Context, pl *Plan, name, group string, tags map[string]string) (*user, error) {
	u, err := p.readUser(ctx, name)
	if err != nil {
		return nil, err
	}
	tagKeys := make([]string, 0, len(tags))
	for k := range tags {
		tagKeys = append(tagKeys, k)
	}
	slices.Sort(tagKeys)
	var iamTags []iamtypes.Tag
	var tagParams []string
	for i, k := range tagKeys {
		iamTags = append(iamTags, iamtypes.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
		n := strconv.Itoa(i + 1)
		tagParams = append(tagParams, "Tags.member."+n+".Key", k, "Tags.member."+n+".Value", tags[k])
	}
	if !u.exists {
		pl.Add(call("iam:CreateUser", append([]string{"UserName", name}, tagParams...)...), func(ctx context.Context) error {
			_, err := p.IAM.CreateUser(ctx, &iam.CreateUserInput{UserName: &name, Tags: iamTags})
			if isCode(err, "EntityAlreadyExists") {
				return nil
			}
			return err
		})
	} else {
		pl.found("iam user %s", name)
		same := true
		for _, k := range tagKeys {
			if u.tags[k] != tags[k] {
				same = false
			}
		}
		if !same {
			pl.Add(call("iam:TagUser", append([]string{"UserName", name}, tagParams...)...), func(ctx context.Context) error {
				_, err := p.IAM.TagUser(ctx, &iam.TagUserInput{UserName: &name, Tags: iamTags})
				return err
			})
		}
	}
	if slices.Contains(u.groups, group) {
		pl.found("iam user %s in group %s", name, group)
	} else {
		pl.Add(call("iam:AddUserToGroup", "GroupName", group, "UserName", name), func(ctx context.Context) error {
			_, err := p.IAM.AddUserToGroup(ctx, &iam.AddUserToGroupInput{GroupName: &group, UserName: &name})
			return err
		})
	}
	return u, nil
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

// WatcherUser is the IAM user (and queue) name of watcher name.
func (p *Provisioner) WatcherUser(name string) (string, error) {
	u := transport.WatcherQueue(p.Prefix, name)
	if len(u) > MaxUserNameLen || !transport.ValidQueueName(DeadLetterQueue(p.Prefix, name)) {
		return "", fmt.Errorf("watcher name %q is too long: %s must fit IAM's %d characters", name, u, MaxUserNameLen)
	}
	return u, nil
}

// Watcher plans the AWS side of watcher name in groups: its IAM user in
// the watchers group; its dead-letter queue; its queue (20 s long polls,
// retention over a request's lifetime, SSE, redrive after 5 receives, a
// policy that lets only its topics send); the topics of its groups; and
// raw-delivery subscriptions of its queue to the all topic and its group
// topics, dropping those of groups it left; and last, an access key, unless
// the user has one (see firstKey).
func (p *Provisioner) Watcher(ctx context.Context, name string, groups []string, onKey func(context.Context, AccessKey) error) (*Plan, error) {
	userName, err := p.WatcherUser(name)
	if err != nil {
		return nil, err
	}
	a, err := p.Lookup(ctx)
	if err != nil {
		return nil, err
	}
	if err := p.requireProvisioned(ctx, WatchersGroup(p.Prefix)); err != nil {
		return nil, err
	}
	pl := &Plan{}
	u, err := p.planUser(ctx, pl, userName, WatchersGroup(p.Prefix), nil)
	if err != nil {
		return nil, err
	}
	if _, err := p.planQueue(ctx, pl, DeadLetterQueue(p.Prefix, name), deadLetterAttributes()); err != nil {
		return nil, err
	}
	topics := []string{AllTopic(p.Prefix)}
	for _, g := range groups {
		if t := GroupTopic(p.Prefix, g); !slices.Contains(topics, t) {
			topics = append(topics, t)
		}
	}
	q, err := p.planQueue(ctx, pl, userName, p.watcherQueueAttributes(a, name, topics))
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{AllTopic(p.Prefix): true}
	for _, t := range topics[1:] {
		if exists[t], err = p.planTopic(ctx, pl, t); err != nil {
			return nil, err
		}
	}
	var drop []string
	for _, t := range p.policyTopics(q.attrs["Policy"]) {
		if !slices.Contains(topics, t) {
			drop = append(drop, t)
		}
	}
	if err := p.planSubscriptions(ctx, pl, userName, topics, exists, drop); err != nil {
		return nil, err
	}
	p.firstKey(pl, u, userName, onKey)
	return pl, nil
}

// requireProvisioned checks that create-provider-keys has run.
func (p *Provisioner) requireProvisioned(ctx context.Context, group string) error {
	ok, err := p.groupExists(ctx, group)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("iam group %s does not exist: %w", group, ErrNotProvisioned)
	}
	ok, err = p.topicExists(ctx, AllTopic(p.Prefix))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("sns topic %s does not exist: %w", AllTopic(p.Prefix), ErrNotProvisioned)
	}
	return nil
}

// Client plans the AWS side of the client with key fingerprint fp: its
// IAM user in the clients group, tagged sera-name=label if label is set;
// its reply queue; and last, an access key, unless the user has one (see
// firstKey).
func (p *Provisioner) Client(ctx context.Context, fp, label string, onKey func(context.Context, AccessKey) error) (*Plan, error) {
	userName := transport.ClientQueue(p.Prefix, fp)
	if len(userName) > MaxUserNameLen || !transport.ValidQueueName(userName) {
		return nil, fmt.Errorf("invalid client fingerprint %q", fp)
	}
	if _, err := p.Lookup(ctx); err != nil {
		return nil, err
	}
	if err := p.requireProvisioned(ctx, ClientsGroup(p.Prefix)); err != nil {
		return nil, err
	}
	var tags map[string]string
	if label != "" {
		tags = map[string]string{"sera-name": label}
	}
	pl := &Plan{}
	u, err := p.planUser(ctx, pl, userName, ClientsGroup(p.Prefix), tags)
	if err != nil {
		return nil, err
	}
	if _, err := p.planQueue(ctx, pl, userName, p.replyQueueAttributes()); err != nil {
		return nil, err
	}
	p.firstKey(pl, u, userName, onKey)
	return pl, nil
}

// AccessKey is a new access key; its secret exists only here.
type AccessKey struct {
	User, ID, Secret string
}

// KeyInfo describes an existing access key.
type KeyInfo struct {
	ID      string
	Created time.Time
	Status  string
}

func (k KeyInfo) String() string {
	return fmt.Sprintf("%s (%s, created %s)", k.ID, strings.ToLower(k.Status), k.Created.UTC().Format("2006-01-02 15:04 UTC"))
}

func keyInfos(ks []iamtypes.AccessKeyMetadata) []KeyInfo {
	out := make([]KeyInfo, len(ks))
	for i, k := range ks {
		out[i] = KeyInfo{ID: aws.ToString(k.AccessKeyId), Created: aws.ToTime(k.CreateDate), Status: string(k.Status)}
	}
	return out
}

// firstKey adds to pl an access key for the user, unless it has one: AWS
// shows a secret only when it makes the key, so a re-run cannot show it
// again and must not make a second one; pl.Keys lists the keys it has.
// The key is the last step, after everything it needs exists, so that a
// failure before it leaves no secret behind that a re-run could not show.
// onKey gets the new key as soon as it is made and must keep it (print or
// write it).
func (p *Provisioner) firstKey(pl *Plan, u *user, userName string, onKey func(context.Context, AccessKey) error) {
	if len(u.keys) > 0 {
		pl.Keys = keyInfos(u.keys)
		return
	}
	p.planCreateKey(pl, userName, onKey, nil)
}

func (p *Provisioner) planCreateKey(pl *Plan, userName string, onKey func(context.Context, AccessKey) error, made *AccessKey) {
	pl.Add(call("iam:CreateAccessKey", "UserName", userName), func(ctx context.Context) error {
		out, err := p.IAM.CreateAccessKey(ctx, &iam.CreateAccessKeyInput{UserName: &userName})
		if isCode(err, "LimitExceeded") {
			return fmt.Errorf("%w (an IAM user may have two access keys; see which with aws iam list-access-keys --user-name %s)", err, userName)
		} else if err != nil {
			return err
		}
		if out.AccessKey == nil {
			return errors.New("AWS returned no access key")
		}
		k := AccessKey{User: userName, ID: aws.ToString(out.AccessKey.AccessKeyId), Secret: aws.ToString(out.AccessKey.SecretAccessKey)}
		if made != nil {
			*made = k
		}
		return onKey(ctx, k)
	})
}

// RotateOptions changes what RotateKey does.
type RotateOptions struct {
	// KeepOld keeps the old key after the new one is confirmed, for a
	// rotation without downtime: finish it with Finish once the new key
	// is in use.
	KeepOld bool
	// Finish makes no new key and deletes every key but the newest.
	Finish bool
}

// RotateKey plans a new access key for userName, confirmed with STS as
// the user, then the old key deleted (unless KeepOld). It refuses with
// ErrUnfinishedRotation when the user has two keys already.
func (p *Provisioner) RotateKey(ctx context.Context, userName string, opt RotateOptions, onKey func(context.Context, AccessKey) error) (*Plan, error) {
	a, err := p.Lookup(ctx)
	if err != nil {
		return nil, err
	}
	u, err := p.readUser(ctx, userName)
	if err != nil {
		return nil, err
	}
	if !u.exists {
		return nil, fmt.Errorf("iam user %s does not exist: %w", userName, ErrNotRegistered)
	}
	pl := &Plan{}
	have := keyInfos(u.keys)
	if opt.Finish {
		if len(have) <= 1 {
			for _, k := range have {
				pl.found("iam user %s has one access key, %s", userName, k)
			}
			return pl, nil
		}
		newest := have[len(have)-1]
		pl.note("kept the newest access key %s", newest)
		for _, k := range have[:len(have)-1] {
			p.planDeleteKey(pl, userName, k.ID)
		}
		return pl, nil
	}
	if len(have) >= 2 {
		return nil, fmt.Errorf("iam user %s has %s and %s: %w", userName, have[0], have[1], ErrUnfinishedRotation)
	}
	var made AccessKey
	p.planCreateKey(pl, userName, onKey, &made)
	wantARN := a.UserARN(userName)
	pl.Add(fmt.Sprintf("sts:GetCallerIdentity signed with the new key, until it answers Arn=%s", wantARN), func(ctx context.Context) error {
		return p.confirmKey(ctx, made, wantARN)
	})
	for _, k := range have {
		if opt.KeepOld {
			pl.note("kept the old access key %s: delete it with --finish once the new key is in use", k)
			continue
		}
		p.planDeleteKey(pl, userName, k.ID)
	}
	return pl, nil
}

func (p *Provisioner) planDeleteKey(pl *Plan, userName, id string) {
	pl.Add(call("iam:DeleteAccessKey", "AccessKeyId", id, "UserName", userName), func(ctx context.Context) error {
		_, err := p.IAM.DeleteAccessKey(ctx, &iam.DeleteAccessKeyInput{AccessKeyId: &id, UserName: &userName})
		if isCode(err, "NoSuchEntity") {
			return nil
		}
		return err
	})
}

// confirmKey waits until STS accepts k and names the user: IAM takes a
// few seconds to make a new key usable everywhere.
func (p *Provisioner) confirmKey(ctx context.Context, k AccessKey, wantARN string) error {
	if p.CheckKey == nil {
		return errors.New("no way to check the new key")
	}
	wait := p.KeyWait
	if wait <= 0 {
		wait = 2 * time.Minute
	}
	deadline := time.Now().Add(wait)
	delay := 500 * time.Millisecond
	for {
		arn, err := p.CheckKey(ctx, k.ID, k.Secret)
		if err == nil && arn == wantARN {
			return nil
		}
		if err == nil {
			return fmt.Errorf("the new key %s belongs to %s, not %s", k.ID, arn, wantARN)
		}
		if time.Now().Add(delay).After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the new key %s did not work within %s: %w", k.ID, wait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// DeregisterWatcher plans removing everything of watcher name: first its
// access keys (so a lost or compromised host is locked out at once), its
// group memberships and IAM user, then its subscriptions, its queue and
// its dead-letter queue. groups are the groups it is known to be in; the
// queue policy tells the rest.
func (p *Provisioner) DeregisterWatcher(ctx context.Context, name string, groups []string) (*Plan, error) {
	userName, err := p.WatcherUser(name)
	if err != nil {
		return nil, err
	}
	if _, err := p.Lookup(ctx); err != nil {
		return nil, err
	}
	pl := &Plan{}
	u, err := p.readUser(ctx, userName)
	if err != nil {
		return nil, err
	}
	if !u.exists {
		pl.found("iam user %s absent", userName)
	} else {
		for _, k := range u.keys {
			p.planDeleteKey(pl, userName, aws.ToString(k.AccessKeyId))
		}
		for _, g := range u.groups {
			pl.Add(call("iam:RemoveUserFromGroup", "GroupName", g, "UserName", userName), func(ctx context.Context) error {
				_, err := p.IAM.RemoveUserFromGroup(ctx, &iam.RemoveUserFromGroupInput{GroupName: &g, UserName: &userName})
				if isCode(err, "NoSuchEntity") {
					return nil
				}
				return err
			})
		}
		pl.Add(call("iam:DeleteUser", "UserName", userName), func(ctx context.Context) error {
			_, err := p.IAM.DeleteUser(ctx, &iam.DeleteUserInput{UserName: &userName})
			if isCode(err, "NoSuchEntity") {
				return nil
			}
			return err
		})
	}
	q, err := p.readQueue(ctx, userName, []string{"Policy"})
	if err != nil {
		return nil, err
	}
	topics := []string{AllTopic(p.Prefix)}
	for _, g := range groups {
		topics = append(topics, GroupTopic(p.Prefix, g))
	}
	for _, t := range p.policyTopics(q.attrs["Policy"]) {
		if !slices.Contains(topics, t) {
			topics = append(topics, t)
		}
	}
	qarn := p.Account.QueueARN(userName)
	for _, t := range topics {
		sub, err := p.subscription(ctx, t, qarn)
		if err != nil {
			return nil, err
		}
		if sub != "" {
			p.planUnsubscribe(pl, sub)
		}
	}
	p.planDeleteQueue(pl, userName, q)
	dlq, err := p.readQueue(ctx, DeadLetterQueue(p.Prefix, name), nil)
	if err != nil {
		return nil, err
	}
	p.planDeleteQueue(pl, DeadLetterQueue(p.Prefix, name), dlq)
	return pl, nil
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
