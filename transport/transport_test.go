package transport_test

import (
	"testing"

	"github.com/sera-dev/sera/transport"
)

func TestReplyQueues(t *testing.T) {
	const fp = "ABCDEFGHIJKLMNOP"
	if got := transport.ReplyQueue("sera", fp, 0); got != transport.ClientQueue("sera", fp) {
		t.Errorf("ReplyQueue 0 = %q, want the client queue", got)
	}
	for n := range transport.MaxReplyQueues {
		q := transport.ReplyQueue("sera", fp, n)
		if !transport.IsReplyQueue("sera", fp, q) || !transport.ValidQueueName(q) {
			t.Errorf("%q is not a reply queue of %s", q, fp)
		}
	}
	for _, q := range []string{
		transport.ReplyQueue("sera", fp, transport.MaxReplyQueues),
		transport.ReplyQueue("sera", "ABCDEFGHIJKLMNOQ", 1),
		transport.ReplyQueue("serb", fp, 1),
		"sera-c-" + fp + "-0", "sera-c-" + fp + "-01", "sera-c-" + fp + "-+1", "sera-c-" + fp + "-1x",
		"sera-c-" + fp + "-", "sera-c-" + fp + "1", "sera-c-" + fp + "--1", "sera-w-web1",
	} {
		if transport.IsReplyQueue("sera", fp, q) {
			t.Errorf("IsReplyQueue(%q) = true, want false", q)
		}
	}
}
