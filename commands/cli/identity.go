package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

// ErrNoIdentity is returned when a command needs a key and there is none.
var ErrNoIdentity = errors.New("no key")

// LoadIdentity reads $SERA_HOME/key, refusing a key file others can read.
func LoadIdentity(cfg *settings.Config) (*crypto.Identity, error) {
	path := cfg.KeyFile()
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist; create it with 'sera keygen'", ErrNoIdentity, path)
	} else if err != nil {
		return nil, fmt.Errorf("failed to read key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is readable by others (mode %o); run 'chmod 600 %s'", path, fi.Mode().Perm(), path)
	}
	b, err := safefile.ReadNoFollow(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read key: %w", err)
	}
	id, err := crypto.ParseIdentityFile(b)
	if err != nil {
		return nil, fmt.Errorf("failed to read key %s: %w", filepath.Clean(path), err)
	}
	return id, nil
}
