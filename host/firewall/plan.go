package firewall

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sera-dev/sera/plan"
)

// FormatLeft is the time an opening has left, or "expired".
func FormatLeft(d time.Duration) string {
	if d <= 0 {
		return "expired"
	}
	return FormatDuration(d.Round(time.Second))
}

// FormatDuration is d without zero minutes and seconds ("24h", "1h30m").
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// PlanAllow plans opening spec for d from now. An opening for the same
// spec is extended, never duplicated and never shortened; a rule sera did
// not add is recorded and left alone.
func (fw *Firewall) PlanAllow(st *State, rules []Rule, s Spec, d time.Duration, by string) (plan.Plan, string) {
	now := fw.Sys.Now()
	want := expiryAfter(now, d)
	cur := st.Find(s)
	rule := findRule(rules, s)
	path := fw.StatePath()
	var p plan.Plan

	save := func(o *Opening, then func(ctx context.Context) error) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			prev := st.clone()
			st.put(o)
			if err := fw.save(st); err != nil {
				*st = *prev
				return err
			}
			if then == nil {
				return nil
			}
			if err := then(ctx); err != nil {
				// Undo the record: the state says what ufw has.
				*st = *prev
				if serr := fw.save(st); serr != nil {
					return fmt.Errorf("%w (and failed to undo its record in %s: %v)", err, path, serr)
				}
				return err
			}
			return nil
		}
	}

	switch {
	case rule != nil && rule.seraID() == "":
		// An identical rule sera did not add: never change or delete it.
		o := &Opening{ID: newOpeningID(), Source: s.Source, Port: s.Port, Proto: s.Proto, Expires: want, Created: now, By: by}
		if cur != nil {
			x := *cur
			o = &x
			if o.Expires.After(want) {
				o.Expires = cur.Expires
			}
			if !cur.Owned && o.Expires.Equal(cur.Expires) {
				return plan.Plan{}, fmt.Sprintf("%s is already allowed by a ufw rule sera did not add (left in place); recorded until %s (%s left); %s",
					s, cur.Expires.Format(time.RFC3339), FormatLeft(cur.Expires.Sub(now)), plan.NothingChanged)
			}
		}
		o.Owned = false
		p.Add(fmt.Sprintf("record opening %s (%s) until %s in %s, without a rule of its own", o.ID, s, o.Expires.Format(time.RFC3339), path), save(o, nil))
		p.Note("%s", fmt.Sprintf("ufw already has a rule %s that sera did not add (comment %q): sera leaves it in place, also when the opening ends", s, rule.comment))

	case rule != nil:
		// sera's rule: extend it. The id is the rule's (an opening whose
		// state was lost is adopted again).
		id := rule.seraID()
		_, until, _ := parseSeraComment(rule.comment)
		o := &Opening{ID: id, Source: s.Source, Port: s.Port, Proto: s.Proto, Expires: until, Created: now, By: by}
		if cur != nil && cur.ID == id {
			x := *cur
			o = &x
		}
		if o.Expires.Before(until) {
			o.Expires = until
		}
		if !o.Expires.Before(want) && cur != nil && cur.ID == id && cur.Owned && o.Comment() == rule.comment {
			return plan.Plan{}, fmt.Sprintf("%s is already open until %s (%s left); %s (sera never shortens an opening: close it with 'sera disallow')",
				s, o.Expires.Format(time.RFC3339), FormatLeft(o.Expires.Sub(now)), plan.NothingChanged)
		}
		was := o.Expires
		o.Expires = laterOf(o.Expires, want)
		o.Owned = true
		argv := s.argv(false, o.Comment())
		if o.Comment() != rule.comment {
			p.Add(strings.Join(plan.Quote(argv), " "), save(o, func(ctx context.Context) error {
				_, err := fw.Sys.Exec.Run(ctx, argv...)
				return err
			}))
		} else {
			p.Add(fmt.Sprintf("record opening %s (%s) until %s in %s", o.ID, s, o.Expires.Format(time.RFC3339), path), save(o, nil))
		}
		if was.Before(o.Expires) {
			p.Note("%s", fmt.Sprintf("extends opening %s: open until %s (was until %s); sera closes it then", o.ID, o.Expires.Format(time.RFC3339), was.Format(time.RFC3339)))
		}

	default:
		// No rule in ufw: add sera's own.
		o := &Opening{ID: newOpeningID(), Source: s.Source, Port: s.Port, Proto: s.Proto, Expires: want, Created: now, By: by}
		if cur != nil {
			x := *cur
			o = &x
			o.Expires = laterOf(cur.Expires, want)
		}
		o.Owned = true
		argv := s.argv(false, o.Comment())
		// Recorded before ufw runs: a crash in between leaves a record of
		// a rule that is not there, never a rule without a record.
		p.Add(strings.Join(plan.Quote(argv), " "), save(o, func(ctx context.Context) error {
			_, err := fw.Sys.Exec.Run(ctx, argv...)
			return err
		}))
		p.Note("%s", fmt.Sprintf("%s open until %s (for %s); sera closes it then (recorded in %s)",
			s, o.Expires.Format(time.RFC3339), FormatLeft(o.Expires.Sub(now)), path))
	}
	return p, ""
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// planClose plans removing opening o (nil: an orphan rule of sera's with
// no record), given ufw's rules: sera's rule goes only if ufw still has
// it with the opening's id; otherwise only the record goes.
func (fw *Firewall) planClose(p *plan.Plan, st *State, o *Opening, rule *Rule) {
	forget := func(ctx context.Context) error {
		if o == nil {
			return nil
		}
		st.remove(o.ID)
		return fw.save(st)
	}
	if o != nil && !o.Owned {
		p.Add(fmt.Sprintf("forget opening %s (%s): its rule is not sera's and stays in place", o.ID, o.spec()), forget)
		return
	}
	if rule != nil && rule.seraID() != "" && (o == nil || rule.seraID() == o.ID) {
		s, comment := rule.spec, rule.comment
		p.Add(strings.Join(plan.Quote(s.argv(true, comment)), " "), func(ctx context.Context) error {
			if err := fw.delete(ctx, s, comment); err != nil {
				return err
			}
			return forget(ctx)
		})
		return
	}
	why := "its rule is no longer in ufw"
	if rule != nil {
		why = fmt.Sprintf("the rule in ufw is no longer sera's (comment %q) and stays in place", rule.comment)
	}
	p.Add(fmt.Sprintf("forget opening %s (%s): %s", o.ID, o.spec(), why), forget)
}

// PlanDisallow plans closing the openings from source (on port/proto if
// given), and sera's rules from source that lost their record.
func (fw *Firewall) PlanDisallow(st *State, rules []Rule, source string, port int, proto string) (plan.Plan, string) {
	match := func(s Spec) bool {
		return s.Source == source && (port == 0 || s.Port == port) && (proto == "" || s.Proto == proto)
	}
	var p plan.Plan
	for _, o := range st.Openings {
		if match(o.spec()) {
			fw.planClose(&p, st, o, findRule(rules, o.spec()))
		}
	}
	var handMade []string
	for i := range rules {
		r := &rules[i]
		if !match(r.spec) {
			continue
		}
		if id := r.seraID(); id != "" && st.byID(id) == nil && st.Find(r.spec) == nil {
			fw.planClose(&p, st, nil, r)
		} else if id == "" && st.Find(r.spec) == nil {
			handMade = append(handMade, r.spec.String())
		}
	}
	what := source
	if port != 0 {
		what += " to port " + strconv.Itoa(port)
	}
	if proto != "" {
		what += " (" + proto + ")"
	}
	noChange := fmt.Sprintf("no opening from %s on this host; %s", what, plan.NothingChanged)
	if len(handMade) > 0 {
		noChange += fmt.Sprintf(" (ufw has rules sera did not add, left alone: %s)", strings.Join(handMade, ", "))
	}
	return p, noChange
}
