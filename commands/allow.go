package commands

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

// Temporary firewall openings. 'sera allow' adds one ufw rule, from one
// source address (or a narrow network) to one port, tagged with the
// comment "sera ID until TIME", and records the opening in
// $SERA_STATE/allow.json. The watcher's housekeeping removes the rule when
// it expires, also after a restart, and only if the rule in ufw still
// carries that comment: a rule sera did not add is never deleted.
//
// What ufw 0.36 (bookworm) does, checked on real hosts:
//   - "ufw allow RULE comment C" for a rule that exists with another
//     comment (or none) replaces its comment ("Rule updated"); so sera never
//     runs it for a rule it did not add, and an identical rule re-added by
//     hand takes sera's comment away, and with it sera's claim.
//   - "ufw delete allow RULE comment C" deletes the rule only if its
//     comment is C ("Could not delete non-existent rule" otherwise, exit 0);
//     sera always deletes with the exact comment it read.
//   - Both work with ufw inactive; "ufw show added" lists the rules then
//     too, normalized (an address without /32, IPv6 compressed).

const (
	allowStateName = "allow.json"
	allowLockName  = "allow.lock"

	// Prefixes wider than these are refused: an opening is for one admin,
	// not for a provider's whole network.
	minPrefixBits4 = 16
	minPrefixBits6 = 48

	// ipFetchTimeout bounds the whole look-up of the client's address.
	ipFetchTimeout = 10 * time.Second
	// maxIPAnswer is the longest answer accepted from SERA_IP_URL.
	maxIPAnswer = 256
	// ufwTimeout bounds each housekeeping pass, which must not hold up the
	// watcher for long.
	ufwTimeout = time.Minute
)

// errNoUFW and errUFWInactive are the clear errors for a host without a
// usable ufw.
var (
	errNoUFW       = errors.New("ufw is not installed on this host (apt-get install ufw); nothing was changed")
	errUFWInactive = errors.New("ufw is inactive on this host; nothing was changed " +
		"(sera never enables ufw: with its default deny policy that could lock every admin out; " +
		"allow SSH, then run 'ufw enable' yourself)")
)

// allowSpec is one opening's rule: from Source to Port/Proto. Source is
// canonical (see parseSource), so equal specs are equal rules.
type allowSpec struct {
	Source string
	Port   int
	Proto  string
}

func (s allowSpec) String() string { return fmt.Sprintf("%s to port %d/%s", s.Source, s.Port, s.Proto) }

// ufwArgv is the ufw command line for spec: "allow" or "delete allow",
// with the comment if it is not empty.
func (s allowSpec) ufwArgv(del bool, comment string) []string {
	argv := []string{"ufw"}
	if del {
		argv = append(argv, "delete")
	}
	argv = append(argv, "allow", "from", s.Source, "to", "any", "port", strconv.Itoa(s.Port), "proto", s.Proto)
	if comment != "" {
		argv = append(argv, "comment", comment)
	}
	return argv
}

// parseSource validates the address an opening is for and returns its
// canonical form: an address (IPv4-mapped IPv6 as IPv4, a /32 or /128 as
// the address), or a masked prefix. It refuses any-address forms, host
// bits in a prefix, prefixes wider than /16 (IPv4) or /48 (IPv6), zones,
// and addresses that are not unicast.
func parseSource(s string) (string, error) {
	bad := func(format string, args ...any) error {
		return cli.UsageErr("%s; nothing was changed", fmt.Sprintf(format, args...))
	}
	if s == "" {
		return "", bad("no address given")
	}
	if strings.EqualFold(s, "any") || s == "0.0.0.0/0" || s == "::/0" {
		return "", bad("refusing %q: sera opens a port to one address or a narrow network, never to every address", s)
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return "", bad("invalid address %q: not an IP address or CIDR prefix (e.g. 203.0.113.7 or 203.0.113.0/28)", s)
		}
		if a.Zone() != "" {
			return "", bad("invalid address %q: an address with a zone (%%%s) cannot be a firewall source", s, a.Zone())
		}
		a = a.Unmap()
		if err := checkUnicast(s, a); err != nil {
			return "", err
		}
		return a.String(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return "", bad("invalid address %q: not an IP address or CIDR prefix (e.g. 203.0.113.7 or 203.0.113.0/28)", s)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return "", bad("invalid prefix %q: an IPv4-mapped prefix shorter than /96", s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if p.Bits() == 0 {
		return "", bad("refusing %q: sera opens a port to one address or a narrow network, never to every address", s)
	}
	if m := p.Masked(); m != p {
		return "", bad("invalid prefix %q: host bits are set; the network is %s", s, m)
	}
	if p.IsSingleIP() {
		if err := checkUnicast(s, p.Addr()); err != nil {
			return "", err
		}
		return p.Addr().String(), nil
	}
	limit := minPrefixBits6
	if p.Addr().Is4() {
		limit = minPrefixBits4
	}
	if p.Bits() < limit {
		return "", bad("refusing %s: wider than /%d; open the port to your address or a network of at most /%d, and put wider rules in the host's own firewall configuration", p, limit, limit)
	}
	if err := checkUnicast(s, p.Addr()); err != nil {
		return "", err
	}
	return p.String(), nil
}

func checkUnicast(s string, a netip.Addr) error {
	switch {
	case a.IsUnspecified():
		return cli.UsageErr("refusing %q: it stands for every address; nothing was changed", s)
	case a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return cli.UsageErr("refusing %q: not a unicast address; nothing was changed", s)
	}
	return nil
}

func checkPort(port int) error {
	if port < 1 || port > 65535 {
		return cli.UsageErr("invalid --port %d: a port is 1-65535; nothing was changed", port)
	}
	return nil
}

func checkProto(proto string) error {
	if proto != "tcp" && proto != "udp" {
		return cli.UsageErr("invalid --proto %q: tcp or udp; nothing was changed", proto)
	}
	return nil
}

// opening is one temporary firewall opening in the watcher's state.
type opening struct {
	ID      string    `json:"id"`
	Source  string    `json:"source"`
	Port    int       `json:"port"`
	Proto   string    `json:"proto"`
	Expires time.Time `json:"expires"`
	// Owned is true when sera added the ufw rule, and will delete it.
	// False when an identical rule was there already: that rule is
	// never touched, the opening only records the request.
	Owned   bool      `json:"owned"`
	Created time.Time `json:"created"`
	// By is the client that opened it ("local" with --local).
	By string `json:"by,omitempty"`
}

func (o *opening) spec() allowSpec { return allowSpec{Source: o.Source, Port: o.Port, Proto: o.Proto} }

func (o *opening) comment() string { return seraComment(o.ID, o.Expires) }

// seraComment is the ufw comment of sera's rules: it names the opening and
// its expiry, so a rule sera added can be told from a hand-made one and
// closed at its time even if the state file is lost.
func seraComment(id string, expires time.Time) string {
	return "sera " + id + " until " + expires.UTC().Format(time.RFC3339)
}

var (
	seraCommentRE = regexp.MustCompile(`^sera ([0-9a-f]{16}) until (\S+)$`)
	openingIDRE   = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// parseSeraComment returns the id and expiry in a sera comment; ok is
// false for any other comment.
func parseSeraComment(c string) (id string, until time.Time, ok bool) {
	m := seraCommentRE.FindStringSubmatch(c)
	if m == nil {
		return "", time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, m[2])
	if err != nil {
		return "", time.Time{}, false
	}
	return m[1], t, true
}

func newOpeningID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// expiryAfter is now+d rounded up to a whole second: the comment shows
// seconds, and the opening never closes before the time it shows.
func expiryAfter(now time.Time, d time.Duration) time.Time {
	e := now.Add(d).UTC()
	if t := e.Truncate(time.Second); !t.Equal(e) {
		return t.Add(time.Second)
	}
	return e
}

// allowState is $SERA_STATE/allow.json.
type allowState struct {
	Openings []*opening `json:"openings"`
}

func (st *allowState) find(s allowSpec) *opening {
	for _, o := range st.Openings {
		if o.spec() == s {
			return o
		}
	}
	return nil
}

func (st *allowState) byID(id string) *opening {
	for _, o := range st.Openings {
		if o.ID == id {
			return o
		}
	}
	return nil
}

// put adds o, replacing an opening with its id or spec.
func (st *allowState) put(o *opening) {
	st.Openings = slices.DeleteFunc(st.Openings, func(x *opening) bool { return x.ID == o.ID || x.spec() == o.spec() })
	st.Openings = append(st.Openings, o)
}

func (st *allowState) remove(id string) {
	st.Openings = slices.DeleteFunc(st.Openings, func(x *opening) bool { return x.ID == id })
}

func (st *allowState) clone() *allowState {
	c := &allowState{}
	for _, o := range st.Openings {
		x := *o
		c.Openings = append(c.Openings, &x)
	}
	return c
}

func (h *Host) allowDir() string {
	if h.Sys.State != "" {
		return h.Sys.State
	}
	return h.Sys.Path("/var/lib/sera")
}

func (h *Host) allowStatePath() string { return filepath.Join(h.allowDir(), allowStateName) }

// loadAllowState reads the state file; a missing file is no openings.
// Every entry is checked as a command-line input would be: its fields go
// into ufw's argv.
func (h *Host) loadAllowState() (*allowState, error) {
	path := h.allowStatePath()
	b, err := safefile.ReadNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &allowState{}, nil
	}
	if err != nil {
		return nil, err
	}
	st := &allowState{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %v (fix or remove it; rules sera added still close at the time in their comment)", path, err)
	}
	for i, o := range st.Openings {
		src, err := parseSource(o.Source)
		if o == nil || err != nil || src != o.Source || checkPort(o.Port) != nil || checkProto(o.Proto) != nil || !openingIDRE.MatchString(o.ID) {
			return nil, fmt.Errorf("%s is corrupt: entry %d is not a valid opening (fix or remove it)", path, i+1)
		}
	}
	return st, nil
}

func (h *Host) saveAllowState(st *allowState) error {
	if st.Openings == nil {
		st.Openings = []*opening{}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return safefile.WriteAtomic(h.allowStatePath(), append(b, '\n'), 0o600)
}

// lockAllow serializes the openings of a host: a request, a --local
// command and the watcher's housekeeping never interleave.
func (h *Host) lockAllow() (unlock func(), err error) {
	dir := h.allowDir()
	if err := safefile.MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return safefile.Lock(filepath.Join(dir, allowLockName))
}

// withAllowState runs fn with the openings loaded under the lock.
func (h *Host) withAllowState(fn func(st *allowState) error) error {
	unlock, err := h.lockAllow()
	if err != nil {
		return err
	}
	defer unlock()
	st, err := h.loadAllowState()
	if err != nil {
		return err
	}
	return fn(st)
}

// allowLimits are the watcher's SERA_ALLOW_DEFAULT and SERA_ALLOW_MAX; a
// default longer than the maximum is cut to it.
func (h *Host) allowLimits() (def, max time.Duration) {
	def, max = settings.DefaultAllowFor, settings.DefaultAllowMax
	if h != nil && h.Config != nil {
		if d := h.Config.Duration(settings.KeyAllowDefault); d > 0 {
			def = d
		}
		if d := h.Config.Duration(settings.KeyAllowMax); d > 0 {
			max = d
		}
	}
	return min(def, max), max
}

// ufwRule is one rule of "ufw show added" that sera could have added.
type ufwRule struct {
	spec    allowSpec
	comment string
}

// seraID is the opening id in the rule's comment, "" if the comment is
// not sera's.
func (r *ufwRule) seraID() string {
	id, _, _ := parseSeraComment(r.comment)
	return id
}

func findRule(rules []ufwRule, s allowSpec) *ufwRule {
	for i := range rules {
		if rules[i].spec == s {
			return &rules[i]
		}
	}
	return nil
}

// parseShowAdded reads the rules of "ufw show added" that have the shape
// sera adds ("ufw allow from SRC to any port P proto T [comment 'C']");
// every other line is skipped.
func parseShowAdded(out []byte) []ufwRule {
	var rules []ufwRule
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		var comment string
		if i := strings.Index(line, " comment '"); i >= 0 && strings.HasSuffix(line, "'") && len(line) >= i+len(" comment '")+1 {
			comment = line[i+len(" comment '") : len(line)-1]
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) != 10 || f[0] != "ufw" || f[1] != "allow" || f[2] != "from" || f[4] != "to" || f[5] != "any" || f[6] != "port" || f[8] != "proto" {
			continue
		}
		src, err := canonicalUFWSource(f[3])
		port, perr := strconv.Atoi(f[7])
		if err != nil || perr != nil || checkPort(port) != nil || checkProto(f[9]) != nil {
			continue
		}
		rules = append(rules, ufwRule{spec: allowSpec{Source: src, Port: port, Proto: f[9]}, comment: comment})
	}
	return rules
}

// canonicalUFWSource is parseSource for what ufw prints, without sera's
// policy (a hand-made rule may be for any network).
func canonicalUFWSource(s string) (string, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return "", err
		}
		return a.Unmap().String(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return "", err
	}
	p = p.Masked()
	if p.IsSingleIP() {
		return p.Addr().Unmap().String(), nil
	}
	return p.String(), nil
}

// ufwErr says plainly that ufw is missing.
func ufwErr(err error) error {
	if errors.Is(err, exec.ErrNotFound) {
		return errNoUFW
	}
	return fmt.Errorf("%w; nothing was changed", err)
}

// ufwActive runs "ufw status".
func (h *Host) ufwActive(ctx context.Context) (bool, error) {
	out, err := h.Sys.Exec.Run(ctx, "ufw", "status")
	if err != nil {
		return false, ufwErr(err)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	switch strings.TrimSpace(first) {
	case "Status: active":
		return true, nil
	case "Status: inactive":
		return false, nil
	}
	return false, fmt.Errorf("unexpected output of 'ufw status': %q; nothing was changed", first)
}

// ufwRules runs "ufw show added": the rules configured, active or not.
func (h *Host) ufwRules(ctx context.Context) ([]ufwRule, error) {
	out, err := h.Sys.Exec.Run(ctx, "ufw", "show", "added")
	if err != nil {
		return nil, ufwErr(err)
	}
	return parseShowAdded(out), nil
}

// ufwDelete deletes sera's rule for spec if its comment is still comment;
// ufw deletes nothing otherwise, and that is an error.
func (h *Host) ufwDelete(ctx context.Context, s allowSpec, comment string) error {
	out, err := h.Sys.Exec.Run(ctx, s.ufwArgv(true, comment)...)
	if err != nil {
		return err
	}
	if bytes.Contains(out, []byte("non-existent")) {
		return fmt.Errorf("ufw has no rule %s with comment %q any more (changed since sera read it); left as it is", s, comment)
	}
	return nil
}

// callerName names the client of a remote call, "local" otherwise.
func callerName(who *sera.KnownClient) string {
	if who != nil {
		return who.Name
	}
	return "local"
}

func formatLeft(d time.Duration) string {
	if d <= 0 {
		return "expired"
	}
	return fmtDuration(d.Round(time.Second))
}

// fmtDuration is d without zero minutes and seconds ("24h", "1h30m").
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// planAllow plans opening spec for d from now. An opening for the same
// spec is extended, never duplicated and never shortened; a rule sera did
// not add is recorded and left alone.
func (h *Host) planAllow(st *allowState, rules []ufwRule, s allowSpec, d time.Duration, by string) (plan.Plan, string) {
	now := h.Sys.Now()
	want := expiryAfter(now, d)
	cur := st.find(s)
	rule := findRule(rules, s)
	path := h.allowStatePath()
	var p plan.Plan

	save := func(o *opening, then func(ctx context.Context) error) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			prev := st.clone()
			st.put(o)
			if err := h.saveAllowState(st); err != nil {
				*st = *prev
				return err
			}
			if then == nil {
				return nil
			}
			if err := then(ctx); err != nil {
				// Undo the record: the state says what ufw has.
				*st = *prev
				if serr := h.saveAllowState(st); serr != nil {
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
		o := &opening{ID: newOpeningID(), Source: s.Source, Port: s.Port, Proto: s.Proto, Expires: want, Created: now, By: by}
		if cur != nil {
			x := *cur
			o = &x
			if o.Expires.After(want) {
				o.Expires = cur.Expires
			}
			if !cur.Owned && o.Expires.Equal(cur.Expires) {
				return plan.Plan{}, fmt.Sprintf("%s is already allowed by a ufw rule sera did not add (left in place); recorded until %s (%s left); nothing was changed",
					s, cur.Expires.Format(time.RFC3339), formatLeft(cur.Expires.Sub(now)))
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
		o := &opening{ID: id, Source: s.Source, Port: s.Port, Proto: s.Proto, Expires: until, Created: now, By: by}
		if cur != nil && cur.ID == id {
			x := *cur
			o = &x
		}
		if o.Expires.Before(until) {
			o.Expires = until
		}
		if !o.Expires.Before(want) && cur != nil && cur.ID == id && cur.Owned && o.comment() == rule.comment {
			return plan.Plan{}, fmt.Sprintf("%s is already open until %s (%s left); nothing was changed (sera never shortens an opening: close it with 'sera disallow')",
				s, o.Expires.Format(time.RFC3339), formatLeft(o.Expires.Sub(now)))
		}
		was := o.Expires
		o.Expires = laterOf(o.Expires, want)
		o.Owned = true
		argv := s.ufwArgv(false, o.comment())
		if o.comment() != rule.comment {
			p.Add(strings.Join(plan.Quote(argv), " "), save(o, func(ctx context.Context) error {
				_, err := h.Sys.Exec.Run(ctx, argv...)
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
		o := &opening{ID: newOpeningID(), Source: s.Source, Port: s.Port, Proto: s.Proto, Expires: want, Created: now, By: by}
		if cur != nil {
			x := *cur
			o = &x
			o.Expires = laterOf(cur.Expires, want)
		}
		o.Owned = true
		argv := s.ufwArgv(false, o.comment())
		// Recorded before ufw runs: a crash in between leaves a record of
		// a rule that is not there, never a rule without a record.
		p.Add(strings.Join(plan.Quote(argv), " "), save(o, func(ctx context.Context) error {
			_, err := h.Sys.Exec.Run(ctx, argv...)
			return err
		}))
		p.Note("%s", fmt.Sprintf("%s open until %s (for %s); sera closes it then (recorded in %s)",
			s, o.Expires.Format(time.RFC3339), formatLeft(o.Expires.Sub(now)), path))
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
func (h *Host) planClose(p *plan.Plan, st *allowState, o *opening, rule *ufwRule) {
	forget := func(ctx context.Context) error {
		if o == nil {
			return nil
		}
		st.remove(o.ID)
		return h.saveAllowState(st)
	}
	if o != nil && !o.Owned {
		p.Add(fmt.Sprintf("forget opening %s (%s): its rule is not sera's and stays in place", o.ID, o.spec()), forget)
		return
	}
	if rule != nil && rule.seraID() != "" && (o == nil || rule.seraID() == o.ID) {
		s, comment := rule.spec, rule.comment
		p.Add(strings.Join(plan.Quote(s.ufwArgv(true, comment)), " "), func(ctx context.Context) error {
			if err := h.ufwDelete(ctx, s, comment); err != nil {
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

// planDisallow plans closing the openings from source (on port/proto if
// given), and sera's rules from source that lost their record.
func (h *Host) planDisallow(st *allowState, rules []ufwRule, source string, port int, proto string) (plan.Plan, string) {
	match := func(s allowSpec) bool {
		return s.Source == source && (port == 0 || s.Port == port) && (proto == "" || s.Proto == proto)
	}
	var p plan.Plan
	for _, o := range st.Openings {
		if match(o.spec()) {
			h.planClose(&p, st, o, findRule(rules, o.spec()))
		}
	}
	var handMade []string
	for i := range rules {
		r := &rules[i]
		if !match(r.spec) {
			continue
		}
		if id := r.seraID(); id != "" && st.byID(id) == nil && st.find(r.spec) == nil {
			h.planClose(&p, st, nil, r)
		} else if id == "" && st.find(r.spec) == nil {
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
	noChange := fmt.Sprintf("no opening from %s on this host; nothing was changed", what)
	if len(handMade) > 0 {
		noChange += fmt.Sprintf(" (ufw has rules sera did not add, left alone: %s)", strings.Join(handMade, ", "))
	}
	return p, noChange
}

// closeExpired closes the openings that have expired. With all, it also
// goes through ufw's rules for sera's rules with no record (the state was
// lost): the expired ones are deleted, the others recorded again. It
// returns what it did, one line each.
func (h *Host) closeExpired(ctx context.Context, all bool) ([]string, error) {
	unlock, err := h.lockAllow()
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := h.Sys.Now()
	st, stErr := h.loadAllowState()
	if stErr != nil {
		// A corrupt record must not keep a port open: sera's rules still
		// close at the time in their comment.
		st, all = &allowState{}, true
	}
	var expired []*opening
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
	var rules []ufwRule
	ufwOK := false
	var ufwFailure error
	if needUFW {
		if rules, ufwFailure = h.ufwRules(ctx); ufwFailure == nil {
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
		h.planClose(&p, st, o, findRule(rules, o.spec()))
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
			if !ok || handled[id] || st.byID(id) != nil || st.find(r.spec) != nil {
				continue
			}
			if until.After(now) {
				if stErr != nil {
					continue // the file is not rewritten while it is corrupt
				}
				st.put(&opening{ID: id, Source: r.spec.Source, Port: r.spec.Port, Proto: r.spec.Proto, Expires: until, Owned: true, Created: now, By: "recovered"})
				changed = true
				done = append(done, fmt.Sprintf("recorded again sera's rule %s with no record (comment %q)", r.spec, r.comment))
				continue
			}
			var p plan.Plan
			h.planClose(&p, st, nil, r)
			if err := p.Steps[0].Do(ctx); err != nil {
				errs = append(errs, fmt.Errorf("failed to delete expired rule %s: %w", r.spec, err))
				continue
			}
			done = append(done, fmt.Sprintf("sera's rule %s with no record expired at %s: %s", r.spec, until.Format(time.RFC3339), p.Steps[0].Desc))
		}
		if changed {
			if err := h.saveAllowState(st); err != nil {
				errs = append(errs, err)
			}
		}
	} else if ufwFailure != nil && slices.ContainsFunc(expired, func(o *opening) bool { return o.Owned }) {
		// A failed look for lost records alone is not worth a warning at
		// every start of a watcher on a host without ufw.
		errs = append(errs, fmt.Errorf("cannot close expired openings (retrying): %w", ufwFailure))
	}
	return done, errors.Join(errs...)
}

// Housekeeper returns the watcher's housekeeping: it closes the openings
// that have expired, and at its first run (the watcher's start) also
// sera's rules whose record was lost. It logs what it does.
func Housekeeper(h *Host, log *slog.Logger) func(ctx context.Context) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	first := true
	return func(ctx context.Context) {
		// ufw is never killed half-way: a stopping watcher waits for it.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ufwTimeout)
		defer cancel()
		done, err := h.closeExpired(ctx, first)
		first = false
		for _, d := range done {
			log.Info("firewall: " + d)
		}
		if err != nil {
			log.Warn("firewall housekeeping failed", "err", err)
		}
	}
}

// openingInfo is what allow --list reports.
type openingInfo struct {
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

func (h *Host) listOpenings(ctx context.Context, out io.Writer, asJSON bool) error {
	return h.withAllowState(func(st *allowState) error {
		now := h.Sys.Now()
		if len(st.Openings) == 0 {
			if !asJSON {
				fmt.Fprintln(out, "no open rules")
			}
			return nil
		}
		rules, ruleErr := h.ufwRules(ctx)
		if ruleErr != nil {
			ruleErr = fmt.Errorf("cannot check the rules in ufw: %w", ruleErr)
		}
		list := slices.Clone(st.Openings)
		slices.SortFunc(list, func(a, b *opening) int { return a.Expires.Compare(b.Expires) })
		if !asJSON {
			fmt.Fprintf(out, "%-20s %-9s %-21s %-9s %-9s %-10s %s\n", "SOURCE", "PORT", "UNTIL", "LEFT", "RULE", "BY", "ID")
		}
		for _, o := range list {
			info := openingInfo{ID: o.ID, Source: o.Source, Port: o.Port, Proto: o.Proto, Expires: o.Expires,
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
			if asJSON {
				json.NewEncoder(out).Encode(info)
				continue
			}
			fmt.Fprintf(out, "%-20s %-9s %-21s %-9s %-9s %-10s %s\n", o.Source, fmt.Sprintf("%d/%s", o.Port, o.Proto),
				o.Expires.UTC().Format(time.RFC3339), formatLeft(o.Expires.Sub(now)), info.Rule, o.By, o.ID)
		}
		return ruleErr
	})
}

// fetchPublicAddr asks url (SERA_IP_URL) for this machine's public
// address: an HTTPS GET whose whole answer, trimmed, is one address.
// Redirects must stay on HTTPS. rt is the HTTP transport (this machine's:
// Options.Host).
func fetchPublicAddr(ctx context.Context, rt http.RoundTripper, url string) (string, error) {
	if url == "" {
		return "", fmt.Errorf("%s is empty", settings.KeyIPURL)
	}
	if err := settings.Check(settings.KeyIPURL, url); err != nil {
		return "", err
	}
	client := &http.Client{
		Transport: rt,
		Timeout:   ipFetchTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("refusing a redirect to %s: not https", req.URL.Redacted())
			}
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(ctx, ipFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "sera")
	req.Header.Set("Accept", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("it answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIPAnswer+1))
	if err != nil {
		return "", err
	}
	if len(body) > maxIPAnswer {
		return "", errors.New("its answer is too long to be an address")
	}
	text := strings.TrimSpace(string(body))
	a, err := netip.ParseAddr(text)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("its answer %q is not an IP address", text)
	}
	src, err := parseSource(a.Unmap().String())
	if err != nil {
		return "", fmt.Errorf("its answer %q: %w", text, err)
	}
	return src, nil
}

// prepareSource is the client's half of allow and disallow: the command
// sent always names the address. Without one (and without --ip) it is
// looked up at SERA_IP_URL, and said which.
func (t *hostTree) prepareSource(ip *string, list *bool) prepareFunc {
	return func(c *cobra.Command, args []string) ([]string, error) {
		if list != nil && *list {
			return args, nil
		}
		if c.Flags().Changed("ip") {
			src, err := parseSource(*ip)
			if err != nil {
				return nil, err
			}
			return []string{src}, nil
		}
		if len(args) > 0 {
			return args, nil
		}
		cfg, err := t.opts.Config()
		if err != nil {
			return nil, err
		}
		url := cfg.Get(settings.KeyIPURL)
		src, err := fetchPublicAddr(c.Context(), t.opts.HostSystem(cfg).HTTP.Transport, url)
		if err != nil {
			return nil, fmt.Errorf("failed to find your public address at %s (%s): %w; give the address instead; nothing was changed", url, settings.KeyIPURL, err)
		}
		fmt.Fprintf(c.ErrOrStderr(), "using your address %s (from %s)\n", src, url)
		return []string{src}, nil
	}
}

// sourceArgs is the positional check of allow and disallow: at most one
// address; on the watcher exactly one, since the client resolves "no
// address" before it sends.
func (t *hostTree) sourceArgs(list *bool) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if list != nil && *list {
			if len(args) > 0 {
				return cli.UsageErr("--list takes no address (see '%s --help')", c.CommandPath())
			}
			return nil
		}
		if len(args) > 1 {
			return cli.UsageErr("give one address, not %d (see '%s --help')", len(args), c.CommandPath())
		}
		if len(args) == 0 && t.host != nil {
			return cli.UsageErr("no address: the client sends the address to open the port to")
		}
		return nil
	}
}

// checkSourceFlags checks the address (argument or --ip) of allow and
// disallow, and --port and --proto if checkPortProto.
func checkSourceFlags(c *cobra.Command, args []string, port int, proto string, checkPortProto bool) error {
	if c.Flags().Changed("ip") {
		if len(args) > 0 {
			return cli.UsageErr("give the address as an argument or with --ip, not both")
		}
		ip, _ := c.Flags().GetString("ip")
		if _, err := parseSource(ip); err != nil {
			return err
		}
	}
	if len(args) == 1 {
		if _, err := parseSource(args[0]); err != nil {
			return err
		}
	}
	if !checkPortProto {
		return nil
	}
	if err := checkPort(port); err != nil {
		return err
	}
	return checkProto(proto)
}

func (t *hostTree) allowCmd() *cobra.Command {
	var (
		port          int
		proto, ip     string
		lifetime      time.Duration
		dryRun, list  bool
		asJSON        bool
		defFor, maxFr = t.host.allowLimits()
	)
	c := &cobra.Command{
		Use:   "allow [IP|CIDR] [--port 22] [--proto tcp] [--for 1h]",
		Short: "Open a port in ufw to one address, for a while",
		Long: `Open a port in the host's ufw firewall to one address (or a network of at
most /16 for IPv4, /48 for IPv6), for a while: one rule
'ufw allow from SRC to any port PORT proto PROTO' with the comment
'sera ID until TIME'. The watcher removes it when it expires, within a
minute, also if it was stopped or restarted in between.

Without an address, sera finds your public address with an HTTPS request to
SERA_IP_URL (default ` + settings.DefaultIPURL + `) and says which it used.
0.0.0.0/0, ::/0, "any" and wider networks are refused.

--for defaults to the watcher's SERA_ALLOW_DEFAULT (1h) and may not exceed
its SERA_ALLOW_MAX (24h). Running allow again for the same address, port and
protocol extends the opening (never shortens it) instead of adding a rule.
If ufw already has an identical rule that sera did not add, sera records
the opening but never changes or deletes that rule. Close an opening early
with 'sera disallow'; list them with --list.

If ufw is inactive, allow says so and changes nothing: sera never enables
ufw itself, because enabling it with a default deny policy can lock every
admin out of the host. Allow SSH and enable ufw yourself.`,
		Example: `  sera allow --to web1                      # your public address, port 22/tcp, 1h
  sera allow 203.0.113.7 --for 20m --to web1
  sera allow 2001:db8:7::/64 --port 443 --to 'web*'
  sera allow --list --to web1`,
		Args: t.sourceArgs(&list),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if list {
			for _, f := range []string{"for", "port", "proto", "dry-run", "ip"} {
				if c.Flags().Changed(f) {
					return cli.UsageErr("--list shows the openings; it takes no --%s", f)
				}
			}
			return nil
		}
		if asJSON {
			return cli.UsageErr("--json goes with --list")
		}
		if err := checkSourceFlags(c, args, port, proto, true); err != nil {
			return err
		}
		if c.Flags().Changed("for") {
			limit, what := settings.MaxAllowLifetime, "the longest opening sera allows"
			if t.host != nil {
				_, limit = t.host.allowLimits()
				what = "this watcher's " + settings.KeyAllowMax
			}
			if lifetime <= 0 {
				return cli.UsageErr("invalid --for %s: it must be positive; nothing was changed", fmtDuration(lifetime))
			}
			if lifetime > limit {
				return cli.UsageErr("refusing --for %s: longer than %s (%s); nothing was changed", fmtDuration(lifetime), what, fmtDuration(limit))
			}
		}
		return nil
	}
	c.Flags().IntVar(&port, "port", 22, "the port to open")
	c.Flags().StringVar(&proto, "proto", "tcp", "tcp or udp")
	c.Flags().DurationVar(&lifetime, "for", 0, fmt.Sprintf("how long it stays open (default: the watcher's %s, %s; at most its %s, %s)",
		settings.KeyAllowDefault, fmtDuration(defFor), settings.KeyAllowMax, fmtDuration(maxFr)))
	c.Flags().BoolVar(&list, "list", false, "list the openings with the time they have left")
	c.Flags().BoolVar(&asJSON, "json", false, "with --list: one JSON object per opening")
	cli.AddDryRun(c, &dryRun)
	if t.host == nil {
		c.Flags().StringVar(&ip, "ip", "", "the address to open the port to (instead of the argument, or of looking it up)")
		_ = c.Flags().SetAnnotation("ip", cli.AnnClientOnly, []string{"true"})
	}
	return t.leafPrepared(c, false, t.prepareSource(&ip, &list), func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		if list {
			return h.listOpenings(ctx, out, asJSON)
		}
		src, err := parseSource(args[0])
		if err != nil {
			return err
		}
		def, limit := h.allowLimits()
		d := def
		if c.Flags().Changed("for") {
			d = lifetime
		}
		if d > limit {
			return cli.UsageErr("refusing --for %s: longer than this host's %s (%s); nothing was changed", fmtDuration(d), settings.KeyAllowMax, fmtDuration(limit))
		}
		s := allowSpec{Source: src, Port: port, Proto: proto}
		return h.withAllowState(func(st *allowState) error {
			active, err := h.ufwActive(ctx)
			if err != nil {
				return err
			}
			if !active {
				return errUFWInactive
			}
			rules, err := h.ufwRules(ctx)
			if err != nil {
				return err
			}
			p, noChange := h.planAllow(st, rules, s, d, callerName(t.caller))
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}

func (t *hostTree) disallowCmd() *cobra.Command {
	var (
		port      int
		proto, ip string
		dryRun    bool
	)
	c := &cobra.Command{
		Use:   "disallow [IP|CIDR] [--port N] [--proto tcp|udp]",
		Short: "Close the openings 'sera allow' made for an address, now",
		Long: `Close the openings 'sera allow' made for an address before they expire:
sera's ufw rule is deleted (only if ufw still has it with sera's comment)
and the record goes. Without --port and --proto, every opening for that
address closes. A rule sera did not add is never deleted.

Without an address, sera looks up your public address as 'sera allow'
does.`,
		Example: `  sera disallow --to web1
  sera disallow 203.0.113.7 --port 443 --to web1`,
		Args: t.sourceArgs(nil),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkSourceFlags(c, args, port, proto, false); err != nil {
			return err
		}
		if c.Flags().Changed("port") {
			if err := checkPort(port); err != nil {
				return err
			}
		}
		if c.Flags().Changed("proto") {
			return checkProto(proto)
		}
		return nil
	}
	c.Flags().IntVar(&port, "port", 0, "close only the openings of this port (default: every port)")
	c.Flags().StringVar(&proto, "proto", "", "close only the openings of this protocol, tcp or udp (default: both)")
	cli.AddDryRun(c, &dryRun)
	if t.host == nil {
		c.Flags().StringVar(&ip, "ip", "", "the address to close the openings of (instead of the argument, or of looking it up)")
		_ = c.Flags().SetAnnotation("ip", cli.AnnClientOnly, []string{"true"})
	}
	return t.leafPrepared(c, false, t.prepareSource(&ip, nil), func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		src, err := parseSource(args[0])
		if err != nil {
			return err
		}
		return h.withAllowState(func(st *allowState) error {
			rules, err := h.ufwRules(ctx)
			if err != nil {
				return err
			}
			p, noChange := h.planDisallow(st, rules, src, port, proto)
			return p.Execute(ctx, out, dryRun, noChange)
		})
	})
}
