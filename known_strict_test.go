package sera_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sera-dev/sera"
)

// TestClientFileFailsClosed: known_clients is re-checked on every request,
// and a lookup fails when the file has become writable to others.
func TestClientFileFailsClosed(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "known_clients")
	if err := os.WriteFile(file, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// ClientFile fails closed when the file becomes writable to others
	// while the watcher runs.
	kc := &sera.ClientFile{Path: file}
	if _, err := kc.Lookup(newIdentity(t).Public()); err != nil {
		t.Fatal(err)
	}
	os.Chmod(file, 0o666)
	if c, err := kc.Lookup(newIdentity(t).Public()); err == nil || c != nil {
		t.Errorf("world-writable known_clients: %v, %v; want a refusal", c, err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
