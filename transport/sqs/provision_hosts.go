package sqs

import (
	"context"
	"fmt"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/sera-dev/sera/transport"
)

// WatcherUser is the IAM user (and queue) name of watcher name.
func (p *Provisioner) WatcherUser(name string) (string, error) {
	u := transport.WatcherQueue(p.Prefix, name)
	if len(u) > MaxUserNameLen || !transport.ValidQueueName(DeadLetterQueue(p.Prefix, name)) {
		return "", fmt.Errorf("watcher name %q is too long: %s must fit IAM's %d characters", name, u, MaxUserNameLen)
	}
	return u, nil
}

// Watcher plans the AWS side of watcher name in groups: its IAM user in
// the watchers group (not with NoIAM); its dead-letter queue; its queue (20 s long polls,
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
	pl := &Plan{}
	var u *user
	// create-provider-keys made the all topic; without IAM nothing did,
	// and it is the watcher's to make.
	allExists := true
	if p.NoIAM {
		if allExists, err = p.planTopic(ctx, pl, AllTopic(p.Prefix)); err != nil {
			return nil, err
		}
	} else {
		if err := p.requireProvisioned(ctx, WatchersGroup(p.Prefix)); err != nil {
			return nil, err
		}
		if u, err = p.planUser(ctx, pl, userName, WatchersGroup(p.Prefix), nil); err != nil {
			return nil, err
		}
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
	exists := map[string]bool{AllTopic(p.Prefix): allExists}
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
	if !p.NoIAM {
		p.firstKey(pl, u, userName, onKey)
	}
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
// its reply queues (ReplyQueues of them); and last, an access key, unless
// the user has one (see firstKey). With NoIAM, the reply queues only.
func (p *Provisioner) Client(ctx context.Context, fp, label string, onKey func(context.Context, AccessKey) error) (*Plan, error) {
	userName := transport.ClientQueue(p.Prefix, fp)
	if len(userName) > MaxUserNameLen || !transport.ValidQueueName(userName) {
		return nil, fmt.Errorf("invalid client fingerprint %q", fp)
	}
	if _, err := p.Lookup(ctx); err != nil {
		return nil, err
	}
	pl := &Plan{}
	var u *user
	if !p.NoIAM {
		if err := p.requireProvisioned(ctx, ClientsGroup(p.Prefix)); err != nil {
			return nil, err
		}
		var tags map[string]string
		if label != "" {
			tags = map[string]string{"sera-name": label}
		}
		var err error
		if u, err = p.planUser(ctx, pl, userName, ClientsGroup(p.Prefix), tags); err != nil {
			return nil, err
		}
	}
	// One reply queue per process of the client running at once.
	for n := range min(max(p.ReplyQueues, 1), transport.MaxReplyQueues) {
		if _, err := p.planQueue(ctx, pl, transport.ReplyQueue(p.Prefix, fp, n), p.replyQueueAttributes()); err != nil {
			return nil, err
		}
	}
	// The watchers' heartbeats ('sera status'): only the newest of each
	// matters, so an hour's worth is kept, however long no one reads.
	if _, err := p.planQueue(ctx, pl, transport.HeartbeatQueue(p.Prefix, fp), heartbeatQueueAttributes()); err != nil {
		return nil, err
	}
	if !p.NoIAM {
		p.firstKey(pl, u, userName, onKey)
	}
	return pl, nil
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
	u := &user{}
	if !p.NoIAM {
		if u, err = p.readUser(ctx, userName); err != nil {
			return nil, err
		}
	}
	if p.NoIAM {
		// Its credentials are not sera's to revoke: whoever issued
		// them must.
		pl.note("no IAM user of %s is read or deleted (--no-iam): revoke the host's own credentials where they were issued", name)
	} else if !u.exists {
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
