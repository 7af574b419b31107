package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sera-dev/sera/settings"
)

// TestManPages reads every generated page with man(1), as a user would:
// each is titled by its own command and has the EXIT STATUS, ENVIRONMENT
// (every setting) and FILES sections, in that order, after the options.
func TestManPages(t *testing.T) {
	if _, err := exec.LookPath("man"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("man is not installed: bash .ci/install-host-deps")
		}
		t.Skip("man is not installed")
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1795000000")
	out := t.TempDir()
	if err := run(out, "1.2.3", "Sera Test <test@example.com>"); err != nil {
		t.Fatal(err)
	}
	pages, err := filepath.Glob(filepath.Join(out, "man", "*.1.gz"))
	if err != nil || len(pages) < 20 {
		t.Fatalf("%d pages (%v)", len(pages), err)
	}
	for _, p := range pages {
		cmd := exec.Command("man", "-l", p)
		cmd.Env = append(os.Environ(), "MANWIDTH=100", "MAN_KEEP_FORMATTING=0", "MANPAGER=cat", "PAGER=cat")
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("man -l %s: %v", p, err)
		}
		text := plain(b)
		name := strings.TrimSuffix(filepath.Base(p), ".1.gz") // sera-user-add
		title := strings.ToUpper(name) + "(1)"
		if first, _, _ := strings.Cut(text, "\n"); !strings.HasPrefix(first, title) {
			t.Errorf("%s: first line %q, want the title %s", name, first, title)
		}
		last := -1
		for _, h := range []string{"\nNAME\n", "\nDESCRIPTION\n", "\nEXIT STATUS\n", "\nENVIRONMENT\n", "\nFILES\n"} {
			i := strings.Index(text, h)
			if i < 0 || i < last {
				t.Errorf("%s: section %q missing or out of order", name, strings.TrimSpace(h))
			}
			last = i
		}
		if strings.Contains(text, "Exit status:") {
			t.Errorf("%s: the exit statuses are still in the description", name)
		}
		env, ok := strings.CutPrefix(text[max(strings.Index(text, "\nENVIRONMENT\n"), 0):], "\nENVIRONMENT\n")
		if !ok {
			continue
		}
		for _, d := range settings.All {
			if !strings.Contains(env, "\n       "+d.Key+"\n") {
				t.Errorf("%s: ENVIRONMENT lacks %s", name, d.Key)
			}
		}
		if !strings.Contains(text, "\n       75     nothing") {
			t.Errorf("%s: EXIT STATUS lacks 75 as an entry of its own", name)
		}
	}
}

// plain is man's output without its overstrikes (bold as "N\bN", underline
// as "_\bN"), which it writes when its output is not a terminal.
func plain(b []byte) string {
	var out []byte
	for i := 0; i < len(b); i++ {
		if i+1 < len(b) && b[i+1] == '\b' {
			i++
			continue
		}
		out = append(out, b[i])
	}
	return string(out)
}
