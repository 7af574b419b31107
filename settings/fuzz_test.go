package settings_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/sera-dev/sera/settings"
)

var envKeyRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)

func FuzzParseEnvFile(f *testing.F) {
	f.Add([]byte(sampleEnv), "SERA_NAME", "web 2")
	f.Add([]byte("A=1\nA=2\n"), "A", `"quoted"`)
	f.Add([]byte("export K='x'\n# c\n"), "K", `back\slash`)
	f.Add([]byte(""), "NEW", "a=b")
	f.Add([]byte("K=\"unterminated\n"), "K", "")
	f.Fuzz(func(t *testing.T, b []byte, key, value string) {
		ef := settings.ParseEnvFile(b)
		out := ef.Bytes()
		ef2 := settings.ParseEnvFile(out)
		if !bytes.Equal(ef2.Bytes(), out) {
			t.Fatalf("not stable: %q then %q", out, ef2.Bytes())
		}
		v1, ok1 := ef.Get(key)
		if v2, ok2 := ef2.Get(key); v1 != v2 || ok1 != ok2 {
			t.Fatalf("Get(%q) = %q before and %q after a round trip", key, v1, v2)
		}
		if !envKeyRE.MatchString(key) || strings.ContainsAny(value, "\n\r\x00") {
			return
		}
		ef.Set(key, value)
		if got, ok := ef.Get(key); !ok || got != value {
			t.Fatalf("Set(%q, %q) then Get = %q, %v", key, value, got, ok)
		}
		ef3 := settings.ParseEnvFile(ef.Bytes())
		if got, ok := ef3.Get(key); !ok || got != value {
			t.Fatalf("Set(%q, %q) reads back as %q, %v from\n%s", key, value, got, ok, ef.Bytes())
		}
		ef3.Unset(key)
		if _, ok := ef3.Get(key); ok {
			t.Fatalf("Unset(%q) left it set", key)
		}
	})
}
