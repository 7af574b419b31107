package settings

import (
	"strconv"
	"testing"
	"time"

	"github.com/sera-dev/sera"
)

// Every row of the table is complete: help, a default that passes its own
// check (or a derivation said in words), and defaults that are the Go
// constants the code uses, so the two cannot drift apart.
func TestSettingsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range All {
		if seen[d.Key] {
			t.Errorf("%s listed twice", d.Key)
		}
		seen[d.Key] = true
		if d.Help == "" {
			t.Errorf("%s has no help", d.Key)
		}
		if d.Default != "" && d.check != nil {
			if err := d.check(d.Default); err != nil {
				t.Errorf("%s's default %q fails its own check: %v", d.Key, d.Default, err)
			}
		}
		if (d.derive != nil) != (d.Derived != "") && d.Key != KeyHome {
			t.Errorf("%s: a derived default needs both its code and its words", d.Key)
		}
	}
	for key, want := range map[string]time.Duration{
		KeyTimeout: DefaultTimeout, KeyRequestTTL: DefaultRequestTTL, KeyExecTimeout: sera.DefaultExecTimeout,
		KeyAllowDefault: DefaultAllowFor, KeyAllowMax: DefaultAllowMax,
	} {
		d, _ := Lookup(key)
		if got, err := time.ParseDuration(d.Default); err != nil || got != want {
			t.Errorf("%s default %q, want the constant %s", key, d.Default, want)
		}
	}
	for key, want := range map[string]string{KeyReplyQueues: strconv.Itoa(DefaultReplyQueues),
		KeyAuditMaxMB: strconv.Itoa(sera.DefaultAuditMaxSize >> 20), KeyAuditKeep: strconv.Itoa(sera.DefaultAuditKeep), KeyPrefix: DefaultPrefix, KeyIPURL: DefaultIPURL, KeyFanout: DefaultFanout, KeyTransport: TransportSpool} {
		if d, _ := Lookup(key); d.Default != want {
			t.Errorf("%s default %q, want %q", key, d.Default, want)
		}
	}
	// Load gives exactly the table's defaults.
	env := Env{Getenv: func(string) string { return "" }, UserHome: t.TempDir(), Hostname: "web1.example.com"}
	c, err := Load(env, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range All {
		if v := c.Lookup(d.Key); d.derive == nil && d.Key != KeyHome && (v.Value != d.Default || v.Source != SourceDefault) {
			t.Errorf("%s loaded as %+v, want the default %q", d.Key, v, d.Default)
		}
	}
}
