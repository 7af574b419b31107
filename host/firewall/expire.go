package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/sera-dev/sera/plan"
)

// CloseExpired closes the openings that have expired. With all, it also
// goes through ufw's rules for sera's rules with no record (the state was
// lost): the expired ones are deleted, the others recorded again. It
// returns what it did, one line each.
func (fw *Firewall) CloseExpired(ctx context.Context, all bool) ([]string, error) {
	unlock, err := fw.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := fw.Sys.Now()
	st, stErr := fw.Load()
	if stErr != nil {
		// A corrupt record must not keep a port open: sera's rules still
		// close at the time in their comment.
		st, all = &State{}, true
	}
	var expired []*Opening
	needUFW := all
	for _, o := range st.Openings {
		if !o.Expires.After(now) {
			expired = append(expired, o)
			needUFW = needUFW || o.Owned
		}
	}
	if len(expired) == 0 && !needUFW {
		return nil, stErr
	}
	var rules []Rule
	ufwOK := false
	var ufwFailure error
	if needUFW {
		if rules, ufwFailure = fw.Rules(ctx); ufwFailure == nil {
			ufwOK = true
		}
	}
	var done []string
	var errs []error
	if stErr != nil {
		errs = append(errs, stErr)
	}
	handled := map[string]bool{}
	for _, o := range expired {
		handled[o.ID] = true
		if o.Owned && !ufwOK {
			continue // retried at the next pass
		}
		var p plan.Plan
		fw.planClose(&p, st, o, findRule(rules, o.spec()))
		for _, c := range p.Steps {
			if err := c.Do(ctx); err != nil {
				errs = append(errs, fmt.Errorf("failed to close opening %s (%s): %s: %w", o.ID, o.spec(), c.Desc, err))
				continue
			}
			done = append(done, fmt.Sprintf("opening %s (%s) expired at %s: %s", o.ID, o.spec(), o.Expires.Format(time.RFC3339), c.Desc))
		}
	}
	if ufwOK {
		changed := false
		for i := range rules {
			r := &rules[i]
			id, until, ok := parseSeraComment(r.comment)
			if !ok || handled[id] || st.byID(id) != nil || st.Find(r.spec) != nil {
				continue
			}
			if until.After(now) {
				if stErr != nil {
					continue // the file is not rewritten while it is corrupt
				}
				st.put(&Opening{ID: id, Source: r.spec.Source, Port: r.spec.Port, Proto: r.spec.Proto, Expires: until, Owned: true, Created: now, By: "recovered"})
				changed = true
				done = append(done, fmt.Sprintf("recorded again sera's rule %s with no record (comment %q)", r.spec, r.comment))
				continue
			}
			var p plan.Plan
			fw.planClose(&p, st, nil, r)
			if err := p.Steps[0].Do(ctx); err != nil {
				errs = append(errs, fmt.Errorf("failed to delete expired rule %s: %w", r.spec, err))
				continue
			}
			done = append(done, fmt.Sprintf("sera's rule %s with no record expired at %s: %s", r.spec, until.Format(time.RFC3339), p.Steps[0].Desc))
		}
		if changed {
			if err := fw.save(st); err != nil {
				errs = append(errs, err)
			}
		}
	} else if ufwFailure != nil && slices.ContainsFunc(expired, func(o *Opening) bool { return o.Owned }) {
		// A failed look for lost records alone is not worth a warning at
		// every start of a watcher on a host without ufw.
		errs = append(errs, fmt.Errorf("cannot close expired openings (retrying): %w", ufwFailure))
	}
	return done, errors.Join(errs...)
}

// ufwTimeout bounds each housekeeping pass, which must not hold up the
// watcher for long.
const ufwTimeout = time.Minute

// Housekeeper returns the watcher's housekeeping: it closes the openings
// that have expired, and at its first run (the watcher's start) also
// sera's rules whose record was lost. It logs what it does.
func (fw *Firewall) Housekeeper(log *slog.Logger) func(ctx context.Context) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	first := true
	return func(ctx context.Context) {
		// ufw is never killed half-way: a stopping watcher waits for it.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ufwTimeout)
		defer cancel()
		done, err := fw.CloseExpired(ctx, first)
		first = false
		for _, d := range done {
			log.Info("firewall: " + d)
		}
		if err != nil {
			log.Warn("firewall housekeeping failed", "err", err)
		}
	}
}

// OpeningInfo is what allow --list reports of an opening.
type OpeningInfo struct {
	ID          string    `json:"id"`
	Source      string    `json:"source"`
	Port        int       `json:"port"`
	Proto       string    `json:"proto"`
	Expires     time.Time `json:"expires"`
	SecondsLeft int64     `json:"seconds_left"`
	Owned       bool      `json:"owned"`
	// Rule is "sera" (sera's rule is in ufw), "not-sera" (an identical
	// rule sera did not add, left in place), "missing" or "unknown".
	Rule string `json:"rule"`
	By   string `json:"by,omitempty"`
}

// Openings lists the openings, soonest to close first, with what ufw has
// of each; an error reading ufw's rules leaves Rule "unknown" and is
// returned with the list.
func (fw *Firewall) Openings(ctx context.Context) ([]OpeningInfo, error) {
	var infos []OpeningInfo
	var ruleErr error
	err := fw.WithState(func(st *State) error {
		now := fw.Sys.Now()
		if len(st.Openings) == 0 {
			return nil
		}
		var rules []Rule
		rules, ruleErr = fw.Rules(ctx)
		if ruleErr != nil {
			ruleErr = fmt.Errorf("cannot check the rules in ufw: %w", ruleErr)
		}
		list := slices.Clone(st.Openings)
		slices.SortFunc(list, func(a, b *Opening) int { return a.Expires.Compare(b.Expires) })
		for _, o := range list {
			info := OpeningInfo{ID: o.ID, Source: o.Source, Port: o.Port, Proto: o.Proto, Expires: o.Expires,
				SecondsLeft: max(0, int64(o.Expires.Sub(now).Seconds())), Owned: o.Owned, By: o.By}
			r := findRule(rules, o.spec())
			switch {
			case ruleErr != nil:
				info.Rule = "unknown"
			case r == nil:
				info.Rule = "missing"
			case r.seraID() == o.ID && o.Owned:
				info.Rule = "sera"
			default:
				info.Rule = "not-sera"
			}
			infos = append(infos, info)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return infos, ruleErr
}
