package cli

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"

	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
)

// takeReplyQueue picks the reply queue this process receives on: the
// lowest of the identity's SERA_REPLY_QUEUES that no other process on this
// machine holds, held by a lock file per queue in SERA_STATE/replies until
// release. A process that finds every one held shares one at random; so
// does a process of the same key on another machine that picked the same
// queue. Sharing is correct, only slower: a reply for another process is
// handed back for it (see sera.Client). warn is told why a process shares.
func takeReplyQueue(cfg *settings.Config, fp string, warn func(string)) (queue string, release func()) {
	prefix := cfg.Get(settings.KeyPrefix)
	n := max(min(cfg.Int(settings.KeyReplyQueues), transport.MaxReplyQueues), 1)
	dir := filepath.Join(cfg.Get(settings.KeyState), "replies", transport.ClientQueue(prefix, fp))
	if err := safefile.MkdirPrivate(dir); err != nil {
		warn(fmt.Sprintf("cannot hold a reply queue of this process's own, so it may share one with other processes of this identity: %v", err))
		return transport.ReplyQueue(prefix, fp, rand.IntN(n)), func() {}
	}
	for i := range n {
		unlock, ok, err := safefile.TryLock(filepath.Join(dir, strconv.Itoa(i)+".lock"))
		if err != nil {
			warn(fmt.Sprintf("cannot hold a reply queue of this process's own, so it may share one with other processes of this identity: %v", err))
			break
		}
		if ok {
			return transport.ReplyQueue(prefix, fp, i), unlock
		}
	}
	// Every queue is held: replies still arrive, a little later.
	return transport.ReplyQueue(prefix, fp, rand.IntN(n)), func() {}
}
