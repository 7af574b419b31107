package commands

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/spool"
	"github.com/sera-dev/sera/transport/sqs"
)

// OpenTransport opens the transport SERA_TRANSPORT names: one case per
// kind of settings.Transports, the list the setting is checked against.
func OpenTransport(ctx context.Context, cfg *settings.Config) (transport.Transport, error) {
	switch t := cfg.Get(settings.KeyTransport); t {
	case settings.TransportSpool:
		return spool.New(cfg.Get(settings.KeySpool))
	case settings.TransportSQS:
		return sqs.New(ctx, sqs.Options{
			Region:    cfg.Get(settings.KeyRegion),
			AccessKey: cfg.Get(settings.KeyAccessKey),
			SecretKey: cfg.Get(settings.KeySecretKey),
			Account:   cfg.Get(settings.KeyAccount),
			// The account's queue URLs, so a command makes no
			// GetQueueUrl calls (see sqs.Options.URLCache).
			URLCache: filepath.Join(cfg.Get(settings.KeyState), "sqs-urls.json"),
		})
	default:
		return nil, fmt.Errorf("unknown %s %q", settings.KeyTransport, t)
	}
}
