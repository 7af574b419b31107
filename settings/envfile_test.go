package settings_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/sera-dev/sera/settings"
)

const sampleEnv = `# sera settings
SERA_PREFIX=sera

; systemd comment style
SERA_NAME = web1
export SERA_REGION=eu-west-1
SERA_GROUPS="web,eu"
SERA_SPOOL='/var/spool/my sera'
not a setting line
# trailing comment
`

func TestEnvFileGet(t *testing.T) {
	t.Parallel()
	f := settings.ParseEnvFile([]byte(sampleEnv))
	for k, want := range map[string]string{
		"SERA_PREFIX": "sera",
		"SERA_NAME":   "web1",
		"SERA_REGION": "eu-west-1",
		"SERA_GROUPS": "web,eu",
		"SERA_SPOOL":  "/var/spool/my sera",
	} {
		if got, ok := f.Get(k); !ok || got != want {
			t.Errorf("Get(%s) = %q, %v; want %q", k, got, ok, want)
		}
	}
	for _, k := range []string{"SERA_TIMEOUT", "not a setting line", "# sera settings", ""} {
		if v, ok := f.Get(k); ok {
			t.Errorf("Get(%q) = %q, want not found", k, v)
		}
	}
	if string(f.Bytes()) != sampleEnv {
		t.Errorf("unchanged file rewritten as\n%s", f.Bytes())
	}
}

func TestEnvFileSetKeepsLayout(t *testing.T) {
	t.Parallel()
	f := settings.ParseEnvFile([]byte(sampleEnv))
	if f.Set("SERA_PREFIX", "sera") {
		t.Error("setting the same value reported a change")
	}
	if !f.Set("SERA_NAME", "web2") || !f.Set("SERA_TIMEOUT", "30s") || !f.Unset("SERA_REGION") || f.Unset("SERA_STATE") {
		t.Error("changes not reported")
	}
	want := `# sera settings
SERA_PREFIX=sera

; systemd comment style
SERA_NAME=web2
SERA_GROUPS="web,eu"
SERA_SPOOL='/var/spool/my sera'
not a setting line
# trailing comment
SERA_TIMEOUT=30s
`
	if got := string(f.Bytes()); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestEnvFileDuplicates(t *testing.T) {
	t.Parallel()
	f := settings.ParseEnvFile([]byte("A=1\n# c\nB=2\nA=3\n"))
	// The last one wins, as with systemd.
	if v, _ := f.Get("A"); v != "3" {
		t.Errorf("Get(A) = %q", v)
	}
	// Setting the value it already has still collapses the duplicates.
	if !f.Set("A", "3") {
		t.Error("Set did not collapse duplicates")
	}
	if got := string(f.Bytes()); got != "# c\nB=2\nA=3\n" {
		t.Errorf("after Set: %q", got)
	}
	f = settings.ParseEnvFile([]byte("A=1\nA=2\nB=0\nA=3\n"))
	if !f.Unset("A") || string(f.Bytes()) != "B=0\n" {
		t.Errorf("Unset left %q", f.Bytes())
	}
}

func TestEnvFileValuesRoundTrip(t *testing.T) {
	t.Parallel()
	values := []string{
		"", "plain", "a=b", "a==b=", "with space", " leading", "trailing ", `"double"`, "'single'",
		`it's`, `say "hi"`, `back\slash`, `trailing\`, `\"`, `"`, `'`, "tab\there", "#hash", "semi;colon",
		"$HOME", "`cmd`", "ünïcödé", "=", "a b = c d",
		"\v", "x\u00a0", "\u00a0x", "\u0085", "\fform",
	}
	f := &settings.EnvFile{}
	for i, v := range values {
		k := "K" + string(rune('A'+i))
		f.Set(k, v)
		if got, ok := f.Get(k); !ok || got != v {
			t.Errorf("Set/Get %q: got %q", v, got)
		}
	}
	path := filepath.Join(t.TempDir(), "env")
	if err := f.Write(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("env file mode %v, %v", fi.Mode(), err)
	}
	g, err := settings.ReadEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range values {
		k := "K" + string(rune('A'+i))
		if got, ok := g.Get(k); !ok || got != v {
			t.Errorf("%q read back as %q", v, got)
		}
	}
}

func TestEnvFileLineBreakRefused(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"a\nSERA_PREFIX=evil", "a\rb", "a\x00b"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Set(%q) did not refuse the value", v)
				}
			}()
			(&settings.EnvFile{}).Set("K", v)
		}()
	}
}

func TestReadEnvFileMissing(t *testing.T) {
	t.Parallel()
	f, err := settings.ReadEnvFile(filepath.Join(t.TempDir(), "env"))
	if !errors.Is(err, fs.ErrNotExist) || f == nil {
		t.Fatalf("missing file: %v, %v", f, err)
	}
	if _, ok := f.Get("X"); ok || f.Bytes() != nil {
		t.Error("missing file is not empty")
	}
}
