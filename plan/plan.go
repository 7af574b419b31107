// Package plan is how every changing command of sera works: it reads the
// state first and builds a Plan of steps, then prints it (--dry-run) or
// executes it. So a dry run shows exactly what a real run does, a bad
// input fails before anything is touched, and an empty plan means "already
// so". Host commands, the service installer and the AWS provisioning all
// use it.
package plan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Step is one change: what it does, said before it is done, and how to do
// it. A step with a nil Do is a note: shown in its place, never done.
type Step struct {
	Desc string
	Do   func(ctx context.Context) error
}

// Plan is the changes a command would make, in order.
type Plan struct {
	// Found lists what is already as wanted, shown first as
	// "unchanged: …".
	Found []string
	// Steps are the changes and notes, in order.
	Steps []Step
	// Notes are facts shown after the steps.
	Notes []string
}

// Add appends a step.
func (p *Plan) Add(desc string, do func(ctx context.Context) error) {
	p.Steps = append(p.Steps, Step{Desc: desc, Do: do})
}

// Note appends a line that is shown in its place, not done: a consequence
// the admin should know of.
func (p *Plan) Note(format string, args ...any) {
	p.Steps = append(p.Steps, Step{Desc: fmt.Sprintf(format, args...)})
}

// Runner runs a program with argv; no shell sees an argument.
type Runner interface {
	Run(ctx context.Context, argv ...string) (stdout []byte, err error)
}

// Run appends a step that runs argv with r, described as argv quoted for
// people.
func (p *Plan) Run(r Runner, argv ...string) {
	p.Add(strings.Join(Quote(argv), " "), func(ctx context.Context) error {
		_, err := r.Run(ctx, argv...)
		return err
	})
}

// Append adds q's found lines, steps and notes after p's.
func (p *Plan) Append(q Plan) {
	p.Found = append(p.Found, q.Found...)
	p.Steps = append(p.Steps, q.Steps...)
	p.Notes = append(p.Notes, q.Notes...)
}

// Changes reports whether the plan changes anything.
func (p *Plan) Changes() bool {
	for _, s := range p.Steps {
		if s.Do != nil {
			return true
		}
	}
	return false
}

// Execute prints and applies the plan, or with dryRun only prints it.
// noChange is printed when the plan changes nothing. On a failure it says
// which steps were done, so the admin knows what state the host is in;
// a failure of the first step is Unchanged.
func (p *Plan) Execute(ctx context.Context, out io.Writer, dryRun bool, noChange string) error {
	for _, f := range p.Found {
		fmt.Fprintf(out, "unchanged: %s\n", f)
	}
	if !p.Changes() {
		for _, s := range p.Steps {
			fmt.Fprintf(out, "note: %s\n", s.Desc)
		}
		if noChange != "" {
			if _, err := fmt.Fprintln(out, noChange); err != nil {
				return err
			}
		}
		return p.notes(out)
	}
	for i, s := range p.Steps {
		switch {
		case s.Do == nil:
			fmt.Fprintf(out, "note: %s\n", s.Desc)
		case dryRun:
			fmt.Fprintf(out, "would: %s\n", s.Desc)
		default:
			if err := s.Do(ctx); err != nil {
				if done := p.done(i); done != "" {
					return fmt.Errorf("failed to %s: %w (done before it: %s)", s.Desc, err, done)
				}
				return Unchanged(fmt.Errorf("failed to %s: %w", s.Desc, err))
			}
			MarkChanged(out)
			fmt.Fprintf(out, "done: %s\n", s.Desc)
		}
	}
	return p.notes(out)
}

func (p *Plan) notes(out io.Writer) error {
	for _, n := range p.Notes {
		if _, err := fmt.Fprintf(out, "note: %s\n", n); err != nil {
			return err
		}
	}
	return nil
}

// done describes the steps before the i-th that changed something.
func (p *Plan) done(i int) string {
	var d []string
	for _, s := range p.Steps[:i] {
		if s.Do != nil {
			d = append(d, s.Desc)
		}
	}
	return strings.Join(d, "; ")
}

// ChangeMarker is what a writer given to Execute may also be: it is told
// each time a step has changed something, so that whoever reads the output
// (the watcher, for its reply's "changed") learns it without parsing it.
type ChangeMarker interface{ MarkChanged() }

// MarkChanged tells out, if it is a ChangeMarker, that something changed.
// Code that changes the system outside a Plan calls it after the change.
func MarkChanged(out io.Writer) {
	if m, ok := out.(ChangeMarker); ok {
		m.MarkChanged()
	}
}

// Build runs build, which reads the state and returns the plan and what
// to say when it changes nothing, then executes the plan. An error of
// build is Unchanged: nothing is done before the plan is complete.
func Build(ctx context.Context, out io.Writer, dryRun bool, build func() (Plan, string, error)) error {
	p, noChange, err := build()
	if err != nil {
		return Unchanged(err)
	}
	return p.Execute(ctx, out, dryRun, noChange)
}

// NothingChanged is the suffix of every error that left the system as it
// was, and of the messages that say a command had nothing to do.
const NothingChanged = "nothing was changed"

// unchangedError is an error that changed nothing.
type unchangedError struct{ err error }

func (e *unchangedError) Error() string { return e.err.Error() + "; " + NothingChanged }
func (e *unchangedError) Unwrap() error { return e.err }

// Unchanged marks err as one that left the system as it was: its message
// ends "; nothing was changed", once however often it is marked. nil
// stays nil.
func Unchanged(err error) error {
	var u *unchangedError
	if err == nil || errors.As(err, &u) {
		return err
	}
	return &unchangedError{err: err}
}

// IsUnchanged reports whether err was marked Unchanged.
func IsUnchanged(err error) bool {
	var u *unchangedError
	return errors.As(err, &u)
}

// Nothing is msg said of a command that had nothing to do: "msg; nothing
// was changed".
func Nothing(msg string) string { return msg + "; " + NothingChanged }

// Quote shows argv unambiguously for people (it is never run by a shell).
func Quote(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`;&|<>*?") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			out[i] = a
		}
	}
	return out
}
