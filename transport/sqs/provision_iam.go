package sqs

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
)

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

var sqsARNRegion = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`arn:[a-z-]+:sqs:([a-z0-9-]+):`) })

// policyRegions lists the regions of the queue ARNs in a policy.
func policyRegions(doc string) []string {
	var out []string
	for _, m := range sqsARNRegion().FindAllStringSubmatch(doc, -1) {
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
