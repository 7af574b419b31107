package host

import (
	"context"
	"slices"
	"strings"
	"sync"
)

// Recorder is a Runner for unit tests: it records every argv it is given
// and answers with Respond (nil answers every call with no output and no
// error). Tests assert on Calls, the way tailscale's router tests assert
// on the commands a router ran.
type Recorder struct {
	// Respond answers one call; it may keep state (a fake systemd that
	// becomes active once started).
	Respond func(argv []string) ([]byte, error)

	mu    sync.Mutex
	calls [][]string
}

// Run records argv and answers it.
func (r *Recorder) Run(_ context.Context, argv ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, slices.Clone(argv))
	if r.Respond == nil {
		return nil, nil
	}
	return r.Respond(argv)
}

// RunInput records argv (stdin is not recorded: it holds secrets) and
// answers it.
func (r *Recorder) RunInput(ctx context.Context, _ []byte, argv ...string) ([]byte, error) {
	return r.Run(ctx, argv...)
}

// Calls returns every argv run so far, each joined by spaces.
func (r *Recorder) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.calls))
	for i, c := range r.calls {
		out[i] = strings.Join(c, " ")
	}
	return out
}
