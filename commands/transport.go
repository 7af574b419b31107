package commands

import (
	"context"
	"fmt"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
	"github.com/sera-dev/sera/transport/sqs"
)

// OpenTransport opens the transport SERA_TRANSPORT names.
func OpenTransport(ctx context.Context, cfg *sera.Config) (transport.Transport, error) {
	switch t := cfg.Get(sera.KeyTransport); t {
	case sera.TransportSpool:
		return spool.New(cfg.Get(sera.KeySpool))
	case sera.TransportSQS:
		return sqs.New(ctx, sqs.Options{
			Region:    cfg.Get(sera.KeyRegion),
			AccessKey: cfg.Get(sera.KeyAccessKey),
			SecretKey: cfg.Get(sera.KeySecretKey),
			Account:   cfg.Get(sera.KeyAccount),
		})
	default:
		return nil, fmt.Errorf("unknown %s %q", sera.KeyTransport, t)
	}
}
