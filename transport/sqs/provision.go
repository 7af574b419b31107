package sqs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
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
	// NoIAM plans the queues, topics and subscriptions only: no IAM
	// group, user, policy or access key is read or made. The hosts'
	// credentials are someone else's to issue (an instance role, keys
	// an organisation makes), with the policies WatcherPolicyFor and
	// ClientPolicyFor print.
	NoIAM bool
	// ReplyQueues is how many reply queues Client plans per client
	// (SERA_REPLY_QUEUES); zero means one.
	ReplyQueues int
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
	if p.NoIAM {
		if _, err := p.planTopic(ctx, pl, AllTopic(p.Prefix)); err != nil {
			return nil, err
		}
		return pl, nil
	}
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
