package commands

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sera-dev/sera/settings"
)

// The factory knows every kind the setting accepts: one list
// (settings.Transports) for the check, the default and OpenTransport.
func TestOpenTransportKnowsEveryKind(t *testing.T) {
	for _, kind := range settings.Transports {
		dir := t.TempDir()
		env := map[string]string{
			settings.KeyHome: dir, settings.KeyState: filepath.Join(dir, "state"),
			settings.KeyTransport: kind, settings.KeyRegion: "eu-west-1",
			settings.KeyAccessKey: "AKIDTEST", settings.KeySecretKey: "secret",
		}
		cfg, err := settings.Load(settings.Env{Getenv: func(k string) string { return env[k] }, UserHome: dir}, false)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := OpenTransport(context.Background(), cfg)
		if err != nil && strings.Contains(err.Error(), "unknown "+settings.KeyTransport) {
			t.Errorf("%s: %v", kind, err)
		}
		if tr != nil {
			tr.Close()
		}
	}
	if err := settings.Check(settings.KeyTransport, "carrier-pigeon"); err == nil {
		t.Error("a kind the factory does not know is accepted")
	}
}
