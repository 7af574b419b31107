// Command gen writes the generated files of sera's Debian package into a
// staging directory, for nfpm (packaging/nfpm.yaml): man pages and shell
// completions from the cobra command tree, the systemd unit and the env
// file from package install, the changelog and the copyright file.
//
//	go run ./packaging/gen -version 1.2.3 -out dist/stage
//
// Every file is reproducible: dates come from SOURCE_DATE_EPOCH (the last
// commit's time in 'make deb'), gzip headers carry no name or time.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/install"
	"github.com/sera-dev/sera/settings"
)

func main() {
	out := flag.String("out", "", "staging directory to write into (created)")
	version := flag.String("version", "", "the package version (Debian syntax)")
	maintainer := flag.String("maintainer", "", "the package maintainer, 'Name <address>'")
	flag.Parse()
	if *out == "" || *version == "" || *maintainer == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: gen -out DIR -version VERSION -maintainer 'NAME <ADDRESS>'")
		os.Exit(2)
	}
	if err := run(*out, *version, *maintainer); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}

func run(out, version, maintainer string) error {
	date, err := sourceDate()
	if err != nil {
		return err
	}
	for _, d := range []string{"man", "completion"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return err
		}
	}
	root := commands.NewRoot(&cli.Options{
		Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard,
		Env: settings.Env{Getenv: func(string) string { return "" }}, Version: version,
	})
	root.DisableAutoGenTag = true
	if err := manPages(root, filepath.Join(out, "man"), version, date); err != nil {
		return err
	}
	if err := completions(root, filepath.Join(out, "completion")); err != nil {
		return err
	}
	unit, err := install.Unit(install.PackageBinary)
	if err != nil {
		return err
	}
	files := map[string]string{
		"sera.service": unit,
		"env":          install.EnvTemplate,
		"copyright":    fmt.Sprintf(copyright, date.Year()),
		"lintian":      lintianOverrides,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(out, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return writeGzip(filepath.Join(out, "changelog.gz"), []byte(changelog(version, maintainer, date)))
}

// sourceDate is SOURCE_DATE_EPOCH, the reproducible-builds convention.
func sourceDate() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Time{}, errors.New("SOURCE_DATE_EPOCH is not set ('make deb' sets it to the last commit's time)")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad SOURCE_DATE_EPOCH %q", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

func completions(root *cobra.Command, dir string) error {
	gens := map[string]func(io.Writer) error{
		"sera.bash": func(w io.Writer) error { return root.GenBashCompletionV2(w, true) },
		"_sera":     root.GenZshCompletion,
		"sera.fish": func(w io.Writer) error { return root.GenFishCompletion(w, true) },
	}
	for name, gen := range gens {
		var b bytes.Buffer
		if err := gen(&b); err != nil {
			return fmt.Errorf("failed to generate %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeGzip compresses like 'gzip -9n': best compression, no file name
// or time in the header, as Debian policy asks of man pages and
// changelogs.
func writeGzip(path string, data []byte) error {
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// changelog is a one-entry Debian changelog for a package built from the
// source tree (a native package: the changelog is changelog.gz).
func changelog(version, maintainer string, date time.Time) string {
	return fmt.Sprintf(`sera (%s) unstable; urgency=medium

  * Built from the sera source tree with 'make deb'.
  * Changes: https://github.com/sera-dev/sera/commits

 -- %s  %s
`, version, maintainer, date.Format(time.RFC1123Z))
}

const copyright = `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sera
Source: https://github.com/sera-dev/sera
Comment: The sera source repository does not state a license yet; until it
 does, all rights are reserved by its authors. The binary also contains Go
 modules under their own licenses (BSD-3-Clause, Apache-2.0, MIT); 'go
 version -m /usr/bin/sera' lists them.

Files: *
Copyright: %d the sera authors
License: none-stated
 No license has been granted yet. See the source repository.
`

// lintianOverrides are the lintian warnings the package means to give.
const lintianOverrides = `# /etc/sera holds the watcher's private key: root only.
sera: non-standard-dir-perm 0700 != 0755 [etc/sera/]
# The env file may hold SERA_SECRET_KEY.
sera: non-standard-file-perm 0600 != 0644 [etc/sera/env]
# A static position-independent Go binary: it needs no library, not even libc.
sera: shared-library-lacks-prerequisites [usr/bin/sera]
`
