package settings_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadConfigPrecedence(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	writeFile(t, filepath.Join(home, "env"), `# settings
SERA_PREFIX=filepfx
SERA_TIMEOUT=30s
SERA_REGION="eu-west-1"
SERA_HOME=/elsewhere
SERA_GROUPS=
`)
	env := settings.Env{
		Getenv: mapEnv(map[string]string{
			"SERA_HOME":    home,
			"SERA_TIMEOUT": "10s",
			"SERA_NAME":    "envname",
		}),
		UserHome: "/home/u", Hostname: "box.example.com",
	}
	c, err := settings.Load(env, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.Home != home || c.EnvFile != filepath.Join(home, "env") {
		t.Errorf("home %s, env file %s", c.Home, c.EnvFile)
	}
	want := map[string]settings.Value{
		settings.KeyHome:       {home, settings.SourceEnv},
		settings.KeyTimeout:    {"10s", settings.SourceEnv},
		settings.KeyName:       {"envname", settings.SourceEnv},
		settings.KeyPrefix:     {"filepfx", settings.SourceFile},
		settings.KeyRegion:     {"eu-west-1", settings.SourceFile},
		settings.KeyGroups:     {"", settings.SourceFile},
		settings.KeyState:      {filepath.Join(home, "state"), settings.SourceDefault},
		settings.KeySpool:      {filepath.Join(home, "state", "spool"), settings.SourceDefault},
		settings.KeyTransport:  {"spool", settings.SourceDefault},
		settings.KeyRequestTTL: {"5m", settings.SourceDefault},
		settings.KeyAccessKey:  {"", settings.SourceDefault},
		settings.KeySecretKey:  {"", settings.SourceDefault},
	}
	for k, v := range want {
		if got := c.Lookup(k); got != v {
			t.Errorf("%s = %+v, want %+v", k, got, v)
		}
	}
	// Every setting has a value and a source.
	for _, d := range settings.All {
		if c.Lookup(d.Key).Source == "" {
			t.Errorf("%s has no source", d.Key)
		}
	}
	if c.Duration(settings.KeyTimeout) != 10*time.Second || c.Duration(settings.KeyRequestTTL) != 5*time.Minute {
		t.Errorf("durations %s %s", c.Duration(settings.KeyTimeout), c.Duration(settings.KeyRequestTTL))
	}
	if c.KeyFile() != filepath.Join(home, "key") || c.KnownClientsFile() != filepath.Join(home, "known_clients") || c.KnownWatchersFile() != filepath.Join(home, "known_watchers") {
		t.Errorf("files %s %s %s", c.KeyFile(), c.KnownClientsFile(), c.KnownWatchersFile())
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nothing-here")
	tests := []struct {
		name string
		env  settings.Env
		want map[string]settings.Value
	}{
		{"user", settings.Env{Getenv: mapEnv(nil), UserHome: missing, Hostname: "laptop.local"}, map[string]settings.Value{
			settings.KeyHome:      {filepath.Join(missing, ".sera"), settings.SourceDefault},
			settings.KeyState:     {filepath.Join(missing, ".sera", "state"), settings.SourceDefault},
			settings.KeySpool:     {filepath.Join(missing, ".sera", "state", "spool"), settings.SourceDefault},
			settings.KeyName:      {"laptop", settings.SourceDefault},
			settings.KeyTransport: {"spool", settings.SourceDefault},
			settings.KeyPrefix:    {"sera", settings.SourceDefault},
			settings.KeyTimeout:   {"60s", settings.SourceDefault},
			settings.KeyFanout:    {"direct", settings.SourceDefault},
			settings.KeyAccount:   {"", settings.SourceDefault},
			settings.KeyDomain:    {"", settings.SourceDefault},
		}},
		// As root, SERA_HOME from the environment keeps the test away
		// from /etc/sera; the state default is still the system one.
		{"root", settings.Env{Getenv: mapEnv(map[string]string{"SERA_HOME": missing}), IsRoot: true, Hostname: "web1"}, map[string]settings.Value{
			settings.KeyHome:  {missing, settings.SourceEnv},
			settings.KeyState: {"/var/lib/sera", settings.SourceDefault},
			settings.KeySpool: {"/var/lib/sera/spool", settings.SourceDefault},
			settings.KeyName:  {"web1", settings.SourceDefault},
		}},
		{"state from env", settings.Env{Getenv: mapEnv(map[string]string{"SERA_HOME": missing, "SERA_STATE": "/srv/sera"}), IsRoot: true, Hostname: "web1"}, map[string]settings.Value{
			settings.KeyState: {"/srv/sera", settings.SourceEnv},
			settings.KeySpool: {"/srv/sera/spool", settings.SourceDefault},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := settings.Load(tt.env, false)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got := c.Lookup(k); got != v {
					t.Errorf("%s = %+v, want %+v", k, got, v)
				}
			}
		})
	}
	if h := settings.DefaultHome(settings.Env{IsRoot: true, UserHome: "/root"}, false); h != "/etc/sera" {
		t.Errorf("root's default home %s", h)
	}
	if h := settings.DefaultHome(settings.Env{UserHome: "/home/u"}, true); h != "/etc/sera" {
		t.Errorf("--system default home %s", h)
	}
	if h := settings.DefaultHome(settings.Env{UserHome: "/home/u"}, false); h != "/home/u/.sera" {
		t.Errorf("user's default home %s", h)
	}
}

func TestLoadConfigInvalid(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	writeFile(t, filepath.Join(home, "env"), "SERA_TRANSPORT=carrier-pigeon\n")
	env := settings.Env{Getenv: mapEnv(map[string]string{"SERA_HOME": home}), Hostname: "h"}
	if _, err := settings.Load(env, false); err == nil || !strings.Contains(err.Error(), "SERA_TRANSPORT") || !strings.Contains(err.Error(), "file") {
		t.Errorf("bad value in the file: %v", err)
	}
	// The environment overrides the bad file value.
	env.Getenv = mapEnv(map[string]string{"SERA_HOME": home, "SERA_TRANSPORT": "sqs"})
	if c, err := settings.Load(env, false); err != nil || c.Get(settings.KeyTransport) != "sqs" {
		t.Errorf("env over a bad file: %v", err)
	}
	env.Getenv = mapEnv(map[string]string{"SERA_HOME": home, "SERA_TRANSPORT": "spool", "SERA_TIMEOUT": "soon"})
	if _, err := settings.Load(env, false); err == nil || !strings.Contains(err.Error(), "SERA_TIMEOUT") || !strings.Contains(err.Error(), "env") {
		t.Errorf("bad value in the environment: %v", err)
	}
	// An env file that is a symlink is not read.
	home2 := t.TempDir()
	writeFile(t, filepath.Join(home2, "real"), "SERA_PREFIX=x\n")
	if err := os.Symlink(filepath.Join(home2, "real"), filepath.Join(home2, "env")); err != nil {
		t.Fatal(err)
	}
	env.Getenv = mapEnv(map[string]string{"SERA_HOME": home2})
	if _, err := settings.Load(env, false); !errors.Is(err, safefile.ErrSymlink) {
		t.Errorf("symlinked env file: %v", err)
	}
}

func TestCheckSetting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, value string
		ok         bool
	}{
		{"SERA_TRANSPORT", "spool", true},
		{"SERA_TRANSPORT", "sqs", true},
		{"SERA_TRANSPORT", "SQS", false},
		{"SERA_TRANSPORT", "ftp", false},
		{"SERA_TRANSPORT", "", true}, // unset
		{"SERA_NAME", "web-1_a", true},
		{"SERA_NAME", "bad name", false},
		{"SERA_NAME", "-leading", false},
		{"SERA_NAME", "a.b", false},
		{"SERA_NAME", strings.Repeat("a", sera.MaxNameLen), true},
		{"SERA_NAME", strings.Repeat("a", sera.MaxNameLen+1), false},
		{"SERA_GROUPS", "web,eu", true},
		{"SERA_GROUPS", "web, eu", true},
		{"SERA_GROUPS", "web,e u", false},
		{"SERA_GROUPS", "web,../x", false},
		{"SERA_PREFIX", "sera", true},
		{"SERA_PREFIX", "abcdefghijkl", true},
		{"SERA_PREFIX", "abcdefghijklm", false},
		{"SERA_PREFIX", "se ra", false},
		{"SERA_PREFIX", "se.ra", false},
		{"SERA_TIMEOUT", "60s", true},
		{"SERA_TIMEOUT", "1h30m", true},
		{"SERA_TIMEOUT", "0s", false},
		{"SERA_TIMEOUT", "-1s", false},
		{"SERA_TIMEOUT", "60", false},
		{"SERA_REQUEST_TTL", "24h", true},
		{"SERA_REQUEST_TTL", "24h1s", false},
		{"SERA_REQUEST_TTL", "5m", true},
		{"SERA_SPOOL", "/any/path", true},
		{"SERA_STATE", "/var/lib/sera", true},
		{"SERA_REGION", "eu-west-1", true},
		{"SERA_ACCESS_KEY", "AKIA", true},
		{"SERA_SECRET_KEY", "s3cr3t", true},
		{"SERA_FANOUT", "direct", true},
		{"SERA_FANOUT", "sns", true},
		{"SERA_FANOUT", "SNS", false},
		{"SERA_FANOUT", "sqs", false},
		{"SERA_ACCOUNT", "123456789012", true},
		{"SERA_ACCOUNT", "000000000000", true},
		{"SERA_ACCOUNT", "12345678901", false},
		{"SERA_ACCOUNT", "1234567890123", false},
		{"SERA_ACCOUNT", "12345678901x", false},
		{"SERA_ACCOUNT", "1234-5678-9012", false},
		{"SERA_ACCOUNT", " 123456789012", false},
		{"SERA_DOMAIN", "example.com", true},
		{"SERA_DOMAIN", "corp.Example.org", true},
		{"SERA_DOMAIN", "internal", true},
		{"SERA_DOMAIN", "x-1.io", true},
		{"SERA_DOMAIN", ".example.com", false},
		{"SERA_DOMAIN", "example.com.", false},
		{"SERA_DOMAIN", "*.example.com", false},
		{"SERA_DOMAIN", "ex ample.com", false},
		{"SERA_DOMAIN", "example..com", false},
		{"SERA_DOMAIN", "-x.com", false},
		{"SERA_DOMAIN", "10.0.0", false},
		{"SERA_DOMAIN", "a_b.com", false},
		{"SERA_DOMAIN", strings.Repeat("a.", 95) + "com", false},
		{"SERA_HOME", "/etc/sera", false}, // only from the environment
		{"SERA_NOPE", "x", false},
		{"sera_prefix", "x", false},
		{"PATH", "/bin", false},
		{"", "", false},
	}
	for _, tt := range tests {
		err := settings.Check(tt.key, tt.value)
		if (err == nil) != tt.ok {
			t.Errorf("CheckSetting(%q, %q) = %v, want ok %v", tt.key, tt.value, err, tt.ok)
		}
	}
	if err := settings.Check("SERA_NOPE", "x"); !errors.Is(err, settings.ErrUnknown) {
		t.Errorf("unknown key: %v", err)
	}
	if err := settings.Check(settings.KeySecretKey, "x"); err != nil {
		t.Error(err)
	}
	if d, ok := settings.Lookup(settings.KeySecretKey); !ok || !d.Secret {
		t.Errorf("%s is not secret", settings.KeySecretKey)
	}
	seen := map[string]bool{}
	for _, d := range settings.All {
		if seen[d.Key] || !strings.HasPrefix(d.Key, "SERA_") || d.Help == "" {
			t.Errorf("setting %+v", d)
		}
		seen[d.Key] = true
	}
	for _, k := range []string{"SERA_HOME", "SERA_STATE", "SERA_TRANSPORT", "SERA_SPOOL", "SERA_NAME", "SERA_GROUPS", "SERA_PREFIX",
		"SERA_REGION", "SERA_ACCESS_KEY", "SERA_SECRET_KEY", "SERA_TIMEOUT", "SERA_REQUEST_TTL"} {
		if !seen[k] {
			t.Errorf("DESIGN.md's setting %s is missing", k)
		}
	}
}

func TestConfigFanout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		sns  bool
		err  string
	}{
		{"default", nil, false, ""},
		{"direct", map[string]string{"SERA_FANOUT": "direct", "SERA_TRANSPORT": "sqs"}, false, ""},
		{"sns", map[string]string{"SERA_FANOUT": "sns", "SERA_TRANSPORT": "sqs", "SERA_ACCOUNT": "123456789012"}, true, ""},
		{"sns on the spool", map[string]string{"SERA_FANOUT": "sns", "SERA_ACCOUNT": "123456789012"}, false, "SERA_TRANSPORT=sqs"},
		{"sns without an account", map[string]string{"SERA_FANOUT": "sns", "SERA_TRANSPORT": "sqs"}, false, "SERA_ACCOUNT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"SERA_HOME": t.TempDir()}
			for k, v := range tt.env {
				env[k] = v
			}
			c, err := settings.Load(settings.Env{Getenv: mapEnv(env), Hostname: "h"}, false)
			if err != nil {
				t.Fatal(err)
			}
			sns, err := c.Fanout()
			if sns != tt.sns || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Fanout() = %v, %v; want %v, error with %q", sns, err, tt.sns, tt.err)
			}
		})
	}
	// A bad account is refused when the settings load.
	env := settings.Env{Getenv: mapEnv(map[string]string{"SERA_HOME": t.TempDir(), "SERA_ACCOUNT": "12345"}), Hostname: "h"}
	if _, err := settings.Load(env, false); err == nil || !strings.Contains(err.Error(), "SERA_ACCOUNT") {
		t.Errorf("bad SERA_ACCOUNT: %v", err)
	}
}

func TestSplitList(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":           "",
		"a":          "a",
		"a,b":        "a|b",
		" a , ,b ,":  "a|b",
		",,,":        "",
		"web, db,eu": "web|db|eu",
	} {
		if got := strings.Join(sera.SplitList(in), "|"); got != want {
			t.Errorf("SplitList(%q) = %q, want %q", in, got, want)
		}
	}
}
