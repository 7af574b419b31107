package sqs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sera-dev/sera/safefile"
)

// urlCache is a file that keeps the base of the account's queue URLs (all
// but the queue's name) for one configuration: the region, the endpoint
// and the access key the SDK resolved. A process that finds its
// configuration there derives every queue URL instead of calling
// GetQueueUrl once per queue: two round trips of each `sera` command.
//
// A wrong base costs a retry, never a wrong delivery: a call that finds no
// queue (or no access) at a derived URL looks the URL up (see withURL),
// and what is sent is sealed to its recipients anyway. The file is the
// user's own, in SERA_STATE, written atomically; one that does not parse
// or is of another configuration is ignored and replaced.
type urlCache struct {
	path string
	key  string
	base string // "" when the file had none for key
}

type urlCacheFile struct {
	Key  string `json:"key"`
	Base string `json:"base"`
}

// openURLCache reads path for cfg's configuration. It never fails: a cache
// that cannot be read is an empty one.
func openURLCache(ctx context.Context, path string, cfg aws.Config) *urlCache {
	c := &urlCache{path: path, key: configKey(ctx, cfg)}
	b, err := safefile.ReadNoFollow(path)
	if err != nil {
		return c
	}
	var f urlCacheFile
	if json.Unmarshal(b, &f) == nil && f.Key == c.key && validBase(f.Base) {
		c.base = f.Base
	}
	return c
}

// configKey names what a queue URL depends on: the region, the endpoint
// and the credentials' access key (so the account). The SDK caches the
// credentials it retrieves here, so the first request signs without
// retrieving them again.
func configKey(ctx context.Context, cfg aws.Config) string {
	var id string
	if cfg.Credentials != nil {
		if creds, err := cfg.Credentials.Retrieve(ctx); err == nil {
			id = creds.AccessKeyID
		}
	}
	h := sha256.Sum256([]byte(strings.Join([]string{
		cfg.Region, aws.ToString(cfg.BaseEndpoint), os.Getenv("AWS_ENDPOINT_URL_SQS"), id,
	}, "\x00")))
	return hex.EncodeToString(h[:])
}

// validBase accepts what lookup stores: an http(s) URL ending in "/".
func validBase(b string) bool {
	return (strings.HasPrefix(b, "https://") || strings.HasPrefix(b, "http://")) && strings.HasSuffix(b, "/") && !strings.ContainsAny(b, " \n")
}

// store remembers base. Failing to is not an error: the next process
// looks the URL up again.
func (c *urlCache) store(base string) {
	if !validBase(base) {
		return
	}
	b, err := json.Marshal(urlCacheFile{Key: c.key, Base: base})
	if err != nil {
		return
	}
	_ = safefile.WriteAtomic(c.path, append(b, '\n'), 0o600)
}
