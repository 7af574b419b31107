package firewall

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/safefile"
)

// Firewall is the openings of one host: its ufw and its record of them.
type Firewall struct {
	Sys *host.System
}

// Opening is one temporary firewall opening in the watcher's state.
type Opening struct {
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

func (o *Opening) spec() Spec { return Spec{Source: o.Source, Port: o.Port, Proto: o.Proto} }

// Comment is the ufw comment of o's rule.
func (o *Opening) Comment() string { return seraComment(o.ID, o.Expires) }

// seraComment is the ufw comment of sera's rules: it names the opening and
// its expiry, so a rule sera added can be told from a hand-made one and
// closed at its time even if the state file is lost.
func seraComment(id string, expires time.Time) string {
	return "sera " + id + " until " + expires.UTC().Format(time.RFC3339)
}

var (
	seraCommentRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^sera ([0-9a-f]{16}) until (\S+)$`) })
	openingIDRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{16}$`) })
)

// parseSeraComment returns the id and expiry in a sera comment; ok is
// false for any other comment.
func parseSeraComment(c string) (id string, until time.Time, ok bool) {
	m := seraCommentRE().FindStringSubmatch(c)
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

// State is $SERA_STATE/allow.json.
type State struct {
	Openings []*Opening `json:"openings"`
}

// Find returns the opening of s, or nil.
func (st *State) Find(s Spec) *Opening {
	for _, o := range st.Openings {
		if o.spec() == s {
			return o
		}
	}
	return nil
}

func (st *State) byID(id string) *Opening {
	for _, o := range st.Openings {
		if o.ID == id {
			return o
		}
	}
	return nil
}

// put adds o, replacing an opening with its id or spec.
func (st *State) put(o *Opening) {
	st.Openings = slices.DeleteFunc(st.Openings, func(x *Opening) bool { return x.ID == o.ID || x.spec() == o.spec() })
	st.Openings = append(st.Openings, o)
}

func (st *State) remove(id string) {
	st.Openings = slices.DeleteFunc(st.Openings, func(x *Opening) bool { return x.ID == id })
}

func (st *State) clone() *State {
	c := &State{}
	for _, o := range st.Openings {
		x := *o
		c.Openings = append(c.Openings, &x)
	}
	return c
}

func (fw *Firewall) dir() string {
	if fw.Sys.State != "" {
		return fw.Sys.State
	}
	return fw.Sys.Path("/var/lib/sera")
}

func (fw *Firewall) StatePath() string { return filepath.Join(fw.dir(), allowStateName) }

// Load reads the state file; a missing file is no openings.
// Every entry is checked as a command-line input would be: its fields go
// into ufw's argv.
func (fw *Firewall) Load() (*State, error) {
	path := fw.StatePath()
	b, err := safefile.ReadNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &State{}, nil
	}
	if err != nil {
		return nil, err
	}
	st := &State{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %v (fix or remove it; rules sera added still close at the time in their comment)", path, err)
	}
	for i, o := range st.Openings {
		src, err := ParseSource(o.Source)
		if o == nil || err != nil || src != o.Source || CheckPort(o.Port) != nil || CheckProto(o.Proto) != nil || !openingIDRE().MatchString(o.ID) {
			return nil, fmt.Errorf("%s is corrupt: entry %d is not a valid opening (fix or remove it)", path, i+1)
		}
	}
	return st, nil
}

func (fw *Firewall) save(st *State) error {
	if st.Openings == nil {
		st.Openings = []*Opening{}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return safefile.WriteAtomic(fw.StatePath(), append(b, '\n'), 0o600)
}

// Lock serializes the openings of a host: a request, a --local
// command and the watcher's housekeeping never interleave.
func (fw *Firewall) Lock() (unlock func(), err error) {
	dir := fw.dir()
	if err := safefile.MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return safefile.Lock(filepath.Join(dir, allowLockName))
}

// WithState runs fn with the openings loaded under the lock.
func (fw *Firewall) WithState(fn func(st *State) error) error {
	unlock, err := fw.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	st, err := fw.Load()
	if err != nil {
		return err
	}
	return fn(st)
}
