package sqs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
)

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
