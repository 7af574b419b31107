package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/settings"
)

// manPages writes sera.1.gz, sera-ping.1.gz, … for every command a user
// can run: each titled by its command, each with EXIT STATUS, ENVIRONMENT
// (every setting, from the settings table) and FILES sections.
func manPages(root *cobra.Command, dir, version string, date time.Time) error {
	tmp, err := os.MkdirTemp("", "sera-man-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// The exit statuses are a section of their own: in the description,
	// where --help shows them, the man page's markdown would reflow them.
	stripExitCodes(root)
	// No Title: each page gets its own command's (SERA-USER-ADD).
	header := &doc.GenManHeader{Section: "1", Date: &date, Source: "sera " + version, Manual: "sera manual"}
	if err := doc.GenManTree(root, header, tmp); err != nil {
		return fmt.Errorf("failed to generate man pages: %w", err)
	}
	pages, err := filepath.Glob(filepath.Join(tmp, "*.1"))
	if err != nil {
		return err
	}
	if len(pages) == 0 {
		return errors.New("no man page was generated")
	}
	sections := exitStatusSection() + environmentSection() + filesSection()
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := writeGzip(filepath.Join(dir, filepath.Base(p)+".gz"), insertSections(b, sections)); err != nil {
			return err
		}
	}
	return nil
}

func stripExitCodes(c *cobra.Command) {
	c.Long = strings.TrimSpace(strings.ReplaceAll(c.Long, cli.ExitCodesHelp, ""))
	for _, s := range c.Commands() {
		stripExitCodes(s)
	}
}

// insertSections puts sections before the page's examples, or its SEE
// ALSO, as man-pages(7) orders them; at the end if it has neither.
func insertSections(page []byte, sections string) []byte {
	for _, h := range []string{".SH EXAMPLE", ".SH SEE ALSO"} {
		if i := bytes.Index(page, []byte("\n"+h)); i >= 0 {
			out := append([]byte{}, page[:i+1]...)
			out = append(out, sections...)
			return append(out, page[i+1:]...)
		}
	}
	if len(page) > 0 && page[len(page)-1] != '\n' {
		page = append(page, '\n')
	}
	return append(page, sections...)
}

// exitStatusSection is cli.ExitCodesHelp as a list of tagged paragraphs:
// a line "  N    text" starts an entry, deeper lines continue it.
func exitStatusSection() string {
	var b strings.Builder
	b.WriteString(".SH EXIT STATUS\n")
	lines := strings.Split(cli.ExitCodesHelp, "\n")[1:]
	var text []string
	flush := func() {
		if len(text) > 0 {
			b.WriteString(roff(strings.Join(text, " ")) + "\n")
			text = nil
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   ") {
			flush()
			code, rest, _ := strings.Cut(strings.TrimSpace(l), " ")
			fmt.Fprintf(&b, ".TP\n.B %s\n", roff(code))
			text = append(text, strings.TrimSpace(rest))
			continue
		}
		text = append(text, strings.TrimSpace(l))
	}
	flush()
	return b.String()
}

// environmentSection lists every setting of the settings table.
func environmentSection() string {
	var b strings.Builder
	b.WriteString(".SH ENVIRONMENT\n")
	b.WriteString(roff("Every setting is read from the environment first, then from the env file ($SERA_HOME/env, written by 'sera config set'); 'sera config list' shows each value and where it came from.") + "\n")
	for _, d := range settings.All {
		fmt.Fprintf(&b, ".TP\n.B %s\n", roff(d.Key))
		text := d.Help
		switch {
		case d.Default != "":
			text += "; default " + d.Default
		case d.Derived != "":
			text += "; default " + d.Derived
		}
		if d.Secret {
			text += "; a secret: 'config list' masks it"
		}
		b.WriteString(roff(text+".") + "\n")
	}
	fmt.Fprintf(&b, ".TP\n.B AWS_*\n%s\n", roff("The AWS SDK's own settings (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, …) apply to the sqs transport and the AWS commands, after sera's own."))
	return b.String()
}

// manFiles are the files sera reads and writes, with what they hold.
var manFiles = []struct{ path, what string }{
	{"$SERA_HOME/env", "settings, as KEY=VALUE lines ('sera config set'); mode 0600"},
	{"$SERA_HOME/key", "this machine's sera identity, secret ('sera keygen'); mode 0600"},
	{"$SERA_HOME/known_clients", "on a watcher: the clients it trusts and what each may run ('sera clients')"},
	{"$SERA_HOME/known_watchers", "on a client: the watchers it knows, their keys, groups and addresses ('sera watchers')"},
	{"$SERA_STATE/audit.log", "on a watcher: one JSON record per request and decision; older ones in audit.log.1 …"},
	{"$SERA_STATE/replay/", "on a watcher: the requests seen, until they expire, and their replies"},
	{"$SERA_STATE/allow.json", "on a watcher: the ufw openings 'sera allow' made, and when they end"},
	{"$SERA_STATE/archive/", "on a watcher: the homes of deleted users, root-only tarballs"},
	{"$SERA_STATE/replies/", "on a client: the locks by which each process holds a reply queue of its own"},
	{"$SERA_STATE/fleet.json", "on a client: the newest heartbeat of each watcher, which 'sera status' and 'watchers list' show"},
	{"$SERA_STATE/sqs-urls.json", "the base of the account's SQS queue URLs, so no process looks them up"},
	{"$SERA_SPOOL", "the spool transport's queues; a client and the watchers it talks to must share it"},
	{"/etc/sera, /var/lib/sera", "SERA_HOME and SERA_STATE for root and --system; ~/.sera and ~/.sera/state for other users"},
}

func filesSection() string {
	var b strings.Builder
	b.WriteString(".SH FILES\n")
	for _, f := range manFiles {
		fmt.Fprintf(&b, ".TP\n.I %s\n%s\n", roff(f.path), roff(f.what+"."))
	}
	return b.String()
}

// roff escapes text for a roff line: backslashes, and a leading dot or
// quote that would make it a request; hyphens as \- so they stay minus
// signs in flags and names.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
