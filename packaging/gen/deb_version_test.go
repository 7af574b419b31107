package main

import (
	"os/exec"
	"strings"
	"testing"
)

// packaging/deb-version turns what 'make' stamps into sera (git describe)
// into a Debian version that sorts right and has no '-' (a native
// package's version cannot).
func TestDebVersion(t *testing.T) {
	const epoch = "1795000000" // 2026-11-18 11:06:40 UTC
	for in, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"v1.2.3-rc.1":             "1.2.3~rc.1",
		"v1.2.3-4-gabc1234":       "1.2.3+git4.gabc1234",
		"v1.2.3-4-gabc1234-dirty": "1.2.3+git4.gabc1234.dirty",
		"v1.2.3-rc.1-4-gabc1234":  "1.2.3~rc.1+git4.gabc1234",
		"v2.0.0-beta-2":           "2.0.0~beta.2",
		"abc1234-dirty":           "0.0.0+git20261118110640.abc1234.dirty",
		"96763ec":                 "0.0.0+git20261118110640.96763ec",
		"devel":                   "0.0.0+git20261118110640.devel",
	} {
		out, err := exec.Command("sh", "../deb-version", in, epoch).CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != want {
			t.Errorf("deb-version %s = %q, %v; want %q", in, got, err, want)
		}
	}
	// dpkg's own order, where dpkg is installed.
	if _, err := exec.LookPath("dpkg"); err != nil {
		return
	}
	order := []string{"0.0.0+git20261118110640.96763ec", "1.2.3~rc.1", "1.2.3~rc.1+git4.gabc1234", "1.2.3", "1.2.3+git4.gabc1234", "1.2.3+git4.gabc1234.dirty"}
	for i := 1; i < len(order); i++ {
		if err := exec.Command("dpkg", "--compare-versions", order[i-1], "lt", order[i]).Run(); err != nil {
			t.Errorf("dpkg does not sort %s before %s", order[i-1], order[i])
		}
	}
}
