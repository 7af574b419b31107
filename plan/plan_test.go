package plan_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sera-dev/sera/plan"
)

// recorder is a Runner that records argv and fails the programs in fail.
type recorder struct {
	ran  [][]string
	fail map[string]bool
}

func (r *recorder) Run(_ context.Context, argv ...string) ([]byte, error) {
	r.ran = append(r.ran, argv)
	if r.fail[argv[0]] {
		return nil, errors.New("exit status 1")
	}
	return nil, nil
}

func TestExecute(t *testing.T) {
	build := func(r *recorder) plan.Plan {
		var p plan.Plan
		p.Found = []string{"group ops"}
		p.Run(r, "useradd", "--comment", "Alice Example", "--", "alice")
		p.Note("alice is in %s", "sudo")
		p.Run(r, "usermod", "-aG", "ops", "alice")
		p.Notes = []string{"log in again to see the groups"}
		return p
	}
	for _, tt := range []struct {
		name    string
		dryRun  bool
		fail    string
		out     string
		ran     int
		err     string
		changed bool // the error says something was done
	}{
		{name: "run", out: "unchanged: group ops\ndone: useradd --comment 'Alice Example' -- alice\nnote: alice is in sudo\ndone: usermod -aG ops alice\nnote: log in again to see the groups\n", ran: 2},
		{name: "dry run", dryRun: true, out: "unchanged: group ops\nwould: useradd --comment 'Alice Example' -- alice\nnote: alice is in sudo\nwould: usermod -aG ops alice\nnote: log in again to see the groups\n"},
		{name: "first step fails", fail: "useradd", out: "unchanged: group ops\n", ran: 1,
			err: "failed to useradd --comment 'Alice Example' -- alice: exit status 1; nothing was changed"},
		{name: "later step fails", fail: "usermod", ran: 2, changed: true,
			out: "unchanged: group ops\ndone: useradd --comment 'Alice Example' -- alice\nnote: alice is in sudo\n",
			err: "failed to usermod -aG ops alice: exit status 1 (done before it: useradd --comment 'Alice Example' -- alice)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{fail: map[string]bool{tt.fail: true}}
			p := build(r)
			var out bytes.Buffer
			err := p.Execute(context.Background(), &out, tt.dryRun, "already so")
			if out.String() != tt.out {
				t.Errorf("output\n%s\nwant\n%s", out.String(), tt.out)
			}
			if len(r.ran) != tt.ran {
				t.Errorf("ran %q, want %d programs", r.ran, tt.ran)
			}
			if got := fmt.Sprint(err); tt.err == "" && err != nil || tt.err != "" && got != tt.err {
				t.Errorf("error %v, want %q", err, tt.err)
			}
			if err != nil && plan.IsUnchanged(err) == tt.changed {
				t.Errorf("IsUnchanged(%v) = %v", err, !tt.changed)
			}
		})
	}
}

func TestExecuteNothingToDo(t *testing.T) {
	var p plan.Plan
	p.Found = []string{"user alice"}
	p.Note("alice has no password")
	var out bytes.Buffer
	if err := p.Execute(context.Background(), &out, false, "user alice already present"); err != nil {
		t.Fatal(err)
	}
	if want := "unchanged: user alice\nnote: alice has no password\nuser alice already present\n"; out.String() != want {
		t.Errorf("output\n%s\nwant\n%s", out.String(), want)
	}
}

func TestBuildMarksItsErrorsUnchanged(t *testing.T) {
	sentinel := errors.New("no user ghost on this host")
	var out bytes.Buffer
	err := plan.Build(context.Background(), &out, false, func() (plan.Plan, string, error) {
		return plan.Plan{}, "", sentinel
	})
	if !errors.Is(err, sentinel) || err.Error() != "no user ghost on this host; nothing was changed" || out.Len() != 0 {
		t.Errorf("error %v, output %q", err, out.String())
	}
	ran := false
	err = plan.Build(context.Background(), &out, false, func() (plan.Plan, string, error) {
		var p plan.Plan
		p.Add("touch it", func(context.Context) error { ran = true; return nil })
		return p, "", nil
	})
	if err != nil || !ran || out.String() != "done: touch it\n" {
		t.Errorf("error %v, ran %v, output %q", err, ran, out.String())
	}
}

func TestUnchanged(t *testing.T) {
	if plan.Unchanged(nil) != nil {
		t.Error("Unchanged(nil) is not nil")
	}
	err := plan.Unchanged(plan.Unchanged(fmt.Errorf("wrapped: %w", context.Canceled)))
	if err.Error() != "wrapped: context canceled; nothing was changed" || !errors.Is(err, context.Canceled) {
		t.Errorf("%v", err)
	}
	if wrapped := fmt.Errorf("outer: %w", err); plan.Unchanged(wrapped) != wrapped {
		t.Error("an error already marked somewhere in its chain is marked again")
	}
	if got := plan.Nothing("no opening from 203.0.113.7"); !strings.HasSuffix(got, "; "+plan.NothingChanged) {
		t.Errorf("Nothing: %q", got)
	}
}

func TestQuote(t *testing.T) {
	got := strings.Join(plan.Quote([]string{"usermod", "--comment", "it's", "", "a;b", "plain"}), " ")
	if want := `usermod --comment 'it'\''s' '' 'a;b' plain`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
