package settings

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/transport"
)

// Setting names, one per setting, the same in the env file, the
// environment and the documentation.
const (
	KeyHome       = "SERA_HOME"
	KeyState      = "SERA_STATE"
	KeyTransport  = "SERA_TRANSPORT"
	KeySpool      = "SERA_SPOOL"
	KeyName       = "SERA_NAME"
	KeyGroups     = "SERA_GROUPS"
	KeyPrefix     = "SERA_PREFIX"
	KeyRegion     = "SERA_REGION"
	KeyAccessKey  = "SERA_ACCESS_KEY"
	KeySecretKey  = "SERA_SECRET_KEY"
	KeyTimeout    = "SERA_TIMEOUT"
	KeyRequestTTL = "SERA_REQUEST_TTL"
	// KeyExecTimeout is the watcher's limit on how long a command runs.
	KeyExecTimeout = "SERA_EXEC_TIMEOUT"
	// Temporary firewall openings ('sera allow'): the client's address
	// service, the watcher's default and longest lifetime.
	KeyIPURL        = "SERA_IP_URL"
	KeyAllowDefault = "SERA_ALLOW_DEFAULT"
	KeyAllowMax     = "SERA_ALLOW_MAX"
	// SNS fan-out: how a client delivers a request for a group or --all,
	// and the AWS account of the topics it publishes to.
	KeyFanout  = "SERA_FANOUT"
	KeyAccount = "SERA_ACCOUNT"
	// KeyDomain is the DNS domain of the watchers' hosts, set by the
	// admin: 'known-hosts sync' trusts each watcher's host keys for
	// NAME.DOMAIN too.
	KeyDomain = "SERA_DOMAIN"
	// KeyReplyQueues is how many reply queues a client identity has, so
	// that as many of its processes as that run at once without sharing.
	KeyReplyQueues = "SERA_REPLY_QUEUES"
	// The watcher's audit log rotation: its size limit in MiB, and how
	// many old files it keeps.
	KeyAuditMaxMB = "SERA_AUDIT_MAX_MB"
	KeyAuditKeep  = "SERA_AUDIT_KEEP"
	KeyHeartbeat  = "SERA_HEARTBEAT"
)

// Defaults of the settings that have a fixed one; the table (All) shows
// them as strings, computed from these.
const (
	// DefaultPrefix names every queue and topic: P-w-NAME, P-c-FP, P-all.
	DefaultPrefix = "sera"
	// DefaultTimeout is how long a client waits for replies.
	DefaultTimeout = 60 * time.Second
	// DefaultRequestTTL is a request's lifetime (expires_at - issued_at).
	DefaultRequestTTL = 5 * time.Minute
	// DefaultFanout sends a request for a group or --all to each watcher.
	DefaultFanout = FanoutDirect
	// DefaultSystemState is SERA_STATE of root and of --system.
	DefaultSystemState = "/var/lib/sera"

	// DefaultIPURL answers an HTTPS GET with the caller's public IPv4
	// address and nothing else.
	DefaultIPURL = "https://checkip.amazonaws.com"
	// DefaultAllowFor and DefaultAllowMax are SERA_ALLOW_DEFAULT and
	// SERA_ALLOW_MAX when unset.
	DefaultAllowFor = time.Hour
	DefaultAllowMax = 24 * time.Hour
	// MaxAllowLifetime bounds SERA_ALLOW_MAX: an opening is temporary; a
	// longer one belongs in the host's own firewall configuration.
	MaxAllowLifetime = 30 * 24 * time.Hour
	// DefaultReplyQueues is SERA_REPLY_QUEUES when unset: a script or CI
	// job runs this many sera processes of one key at once before any
	// two share a reply queue.
	DefaultReplyQueues = 16
	// DefaultHeartbeat is SERA_HEARTBEAT when unset: how often a watcher
	// tells its clients it is alive (SSM's agents report every 5 minutes).
	DefaultHeartbeat = 5 * time.Minute
)

// ErrUnknown is returned for a key that is not a sera setting.
var ErrUnknown = errors.New("unknown setting")

// The values of SERA_FANOUT.
const (
	FanoutDirect = "direct"
	FanoutSNS    = "sns"
)

// Def describes one setting: the one place its name, default, help and
// check are spelled.
type Def struct {
	Key  string
	Help string
	// Default is the value when neither the environment nor the env file
	// sets it, computed from the Go constant it mirrors; "" for none, or
	// for a default that depends on the machine (Derived).
	Default string
	// Derived says how a default that depends on the environment or on
	// an earlier setting is found, for people ("config list", man pages).
	Derived string
	// Secret settings are shown masked by "config list".
	Secret bool
	// check validates a value before it is stored or used.
	check func(string) error
	// derive computes a Derived default from the environment and the
	// settings resolved before it.
	derive func(env Env, system bool, c *Config) string
}

// All lists every setting sera reads, in the order "config list"
// shows them.
var All = []Def{
	{Key: KeyHome, Help: "config directory (env, key, known_*); only from the environment",
		Derived: "/etc/sera for root and --system, else ~/.sera"},
	{Key: KeyState, Help: "watcher state: replay cache, audit log",
		Derived: DefaultSystemState + " for root and --system, else SERA_HOME/state",
		derive: func(env Env, system bool, c *Config) string {
			if env.IsRoot || system {
				return DefaultSystemState
			}
			return filepath.Join(c.Home, "state")
		}},
	{Key: KeyTransport, Help: strings.Join(Transports, " or "), Default: Transports[0], check: oneOf(Transports...)},
	{Key: KeySpool, Help: "spool directory shared by client and watcher", Derived: "SERA_STATE/spool",
		derive: func(_ Env, _ bool, c *Config) string { return filepath.Join(c.Get(KeyState), "spool") }},
	{Key: KeyName, Help: "this watcher's name", check: sera.CheckName, Derived: "the host name up to its first dot",
		derive: func(env Env, _ bool, _ *Config) string {
			short, _, _ := strings.Cut(env.Hostname, ".")
			return short
		}},
	{Key: KeyGroups, Help: "this watcher's groups, comma-separated", check: sera.CheckGroups},
	{Key: KeyPrefix, Help: "queue and topic name prefix", Default: DefaultPrefix, check: checkPrefix},
	{Key: KeyRegion, Help: "AWS region; else the SDK's default chain"},
	{Key: KeyAccessKey, Help: "AWS access key id; else the SDK's default chain"},
	{Key: KeySecretKey, Help: "AWS secret access key; else the SDK's default chain", Secret: true},
	{Key: KeyTimeout, Help: "how long a client waits for replies", Default: durationString(DefaultTimeout), check: checkDuration},
	{Key: KeyRequestTTL, Help: "request lifetime (expires_at)", Default: durationString(DefaultRequestTTL), check: checkTTL},
	{Key: KeyExecTimeout, Help: "watcher: the longest a command may run, and the limit for a request that names none; a command still running then is killed (exit status 124); at most 24h",
		Default: durationString(sera.DefaultExecTimeout), check: checkExecTimeout},
	{Key: KeyIPURL, Help: "client: HTTPS URL that answers with your public address, for 'allow' and 'disallow' without one", Default: DefaultIPURL, check: checkHTTPSURL},
	{Key: KeyAllowDefault, Help: "watcher: how long an 'allow' opening lasts without --for (capped at SERA_ALLOW_MAX)", Default: durationString(DefaultAllowFor), check: checkAllowLifetime},
	{Key: KeyAllowMax, Help: "watcher: the longest --for 'allow' accepts (at most 720h)", Default: durationString(DefaultAllowMax), check: checkAllowLifetime},
	{Key: KeyFanout, Help: "client: how a request for a group or --all is delivered: sns publishes once to the group's topic, direct sends to each watcher's queue",
		Default: DefaultFanout, check: oneOf(FanoutDirect, FanoutSNS)},
	{Key: KeyAccount, Help: "AWS account ID of the SNS topics (for SERA_FANOUT=sns)", check: checkAccount},
	{Key: KeyReplyQueues, Help: fmt.Sprintf("client: how many reply queues this identity has (1 to %d); each process running at the same time takes one of its own; 'client register' creates them", transport.MaxReplyQueues),
		Default: strconv.Itoa(DefaultReplyQueues), check: intIn(1, transport.MaxReplyQueues)},
	{Key: KeyAuditMaxMB, Help: "watcher: the audit log's size in MiB (1 to 1024) past which it moves to audit.log.1, audit.log.1 to .2, and so on",
		Default: strconv.Itoa(sera.DefaultAuditMaxSize >> 20), check: intIn(1, 1024)},
	{Key: KeyAuditKeep, Help: "watcher: how many old audit logs (audit.log.1 …) are kept (1 to 100); the oldest beyond them is removed",
		Default: strconv.Itoa(sera.DefaultAuditKeep), check: intIn(1, 100)},
	{Key: KeyHeartbeat, Help: "watcher: how often it sends each client allowed ping a heartbeat ('sera status'), 1s to 24h; 0 sends none",
		Default: durationString(DefaultHeartbeat), check: checkHeartbeat},
	{Key: KeyDomain, Help: "client: DNS domain of the watchers' hosts; 'known-hosts sync' trusts each watcher's host keys for NAME.DOMAIN too", check: checkDomain},
}

// durationString is d as a setting's value is written: "1h", "10m",
// "60s" (a minute reads better in seconds), not time.Duration's "1h0m0s".
func durationString(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d > time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	default:
		return d.String()
	}
}

// Lookup returns the definition of key.
func Lookup(key string) (Def, bool) {
	for _, d := range All {
		if d.Key == key {
			return d, true
		}
	}
	return Def{}, false
}

// Check validates value for key without storing it.
func Check(key, value string) error {
	d, ok := Lookup(key)
	if !ok {
		return fmt.Errorf("%w %q (see 'sera config list')", ErrUnknown, key)
	}
	if key == KeyHome {
		return fmt.Errorf("%s cannot be stored in the env file it locates; set it in the environment", KeyHome)
	}
	if d.check != nil && value != "" {
		if err := d.check(value); err != nil {
			return fmt.Errorf("invalid %s: %w", key, err)
		}
	}
	return nil
}

// Source says where a setting's value came from.
type Source string

// Where a value came from, in order of precedence.
const (
	SourceEnv     Source = "env"
	SourceFile    Source = "file"
	SourceDefault Source = "default"
)

// Value is a resolved setting.
type Value struct {
	Value  string
	Source Source
}

// Config is the resolved settings of one sera process.
type Config struct {
	// Home is the config directory; EnvFile is Home/env.
	Home    string
	EnvFile string
	values  map[string]Value
}

// Env is the process environment as sera sees it, injected so tests can
// use their own.
type Env struct {
	Getenv   func(string) string
	IsRoot   bool
	UserHome string
	Hostname string
}

// OSEnv returns the real environment.
func OSEnv() Env {
	home, _ := os.UserHomeDir()
	host, _ := os.Hostname()
	return Env{Getenv: os.Getenv, IsRoot: os.Geteuid() == 0, UserHome: home, Hostname: host}
}

// DefaultHome is SERA_HOME when the environment does not set it.
func DefaultHome(env Env, system bool) string {
	if system || env.IsRoot {
		return "/etc/sera"
	}
	return filepath.Join(env.UserHome, ".sera")
}

// Load resolves every setting: the environment wins over the env
// file, which wins over the default. A missing env file is not an error.
func Load(env Env, system bool) (*Config, error) {
	home := env.Getenv(KeyHome)
	homeSrc := SourceEnv
	if home == "" || system {
		home, homeSrc = DefaultHome(env, system), SourceDefault
	}
	c := &Config{Home: home, EnvFile: filepath.Join(home, "env"), values: map[string]Value{}}
	c.values[KeyHome] = Value{home, homeSrc}
	file, err := ReadEnvFile(c.EnvFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, d := range All {
		if d.Key == KeyHome {
			continue
		}
		if v := env.Getenv(d.Key); v != "" {
			c.values[d.Key] = Value{v, SourceEnv}
		} else if v, ok := file.Get(d.Key); ok {
			c.values[d.Key] = Value{v, SourceFile}
		}
	}
	// Defaults, in the table's order: a derived one may read the
	// settings before it (SERA_SPOOL reads SERA_STATE).
	for _, d := range All {
		if _, ok := c.values[d.Key]; ok {
			continue
		}
		v := d.Default
		if d.derive != nil {
			v = d.derive(env, system, c)
		}
		c.values[d.Key] = Value{v, SourceDefault}
	}
	for _, d := range All {
		v := c.values[d.Key]
		if d.check != nil && v.Value != "" {
			if err := d.check(v.Value); err != nil {
				return nil, fmt.Errorf("invalid %s (from %s): %w", d.Key, v.Source, err)
			}
		}
	}
	return c, nil
}

// Get returns the value of key ("" if unset).
func (c *Config) Get(key string) string { return c.values[key].Value }

// Lookup returns the value of key and its source.
func (c *Config) Lookup(key string) Value { return c.values[key] }

// Int returns an integer setting; Load has validated it.
func (c *Config) Int(key string) int {
	n, _ := strconv.Atoi(c.Get(key))
	return n
}

// Duration returns a duration setting; Load has validated it.
func (c *Config) Duration(key string) time.Duration {
	d, _ := time.ParseDuration(c.Get(key))
	return d
}

// Fanout reports whether a request for a group or --all is published once
// to the group's SNS topic (SERA_FANOUT=sns) rather than sent to each
// watcher's queue. SERA_FANOUT=sns needs SERA_TRANSPORT=sqs and
// SERA_ACCOUNT; without them it is an error, not a quiet fallback.
func (c *Config) Fanout() (sns bool, err error) {
	if c.Get(KeyFanout) != FanoutSNS {
		return false, nil
	}
	if t := c.Get(KeyTransport); t != TransportSQS {
		return false, fmt.Errorf("%s=sns needs %s=sqs, not %q", KeyFanout, KeyTransport, t)
	}
	if c.Get(KeyAccount) == "" {
		return false, fmt.Errorf("%s=sns needs %s, the AWS account ID of the topics", KeyFanout, KeyAccount)
	}
	return true, nil
}

// Groups returns SERA_GROUPS as a list.
func (c *Config) Groups() []string { return sera.SplitList(c.Get(KeyGroups)) }

// KeyFile, KnownClientsFile and KnownWatchersFile are the files under
// SERA_HOME.
func (c *Config) KeyFile() string { return filepath.Join(c.Home, "key") }

// KnownClientsFile is the watcher's list of trusted clients.
func (c *Config) KnownClientsFile() string { return filepath.Join(c.Home, "known_clients") }

// KnownWatchersFile is the client's list of watchers.
func (c *Config) KnownWatchersFile() string { return filepath.Join(c.Home, "known_watchers") }

// The transports SERA_TRANSPORT names: one list for the check, the
// default and the factory (commands.OpenTransport).
const (
	TransportSpool = "spool"
	TransportSQS   = "sqs"
)

// Transports are the values SERA_TRANSPORT takes, the default first.
var Transports = []string{TransportSpool, TransportSQS}

func checkPrefix(s string) error {
	if len(s) > 12 || !transport.ValidQueueName(s) {
		return fmt.Errorf("%q is not a valid prefix: use at most 12 letters, digits, '-' or '_'", s)
	}
	return nil
}

func intIn(lo, hi int) func(string) error {
	return func(s string) error {
		if n, err := strconv.Atoi(s); err != nil || n < lo || n > hi || strconv.Itoa(n) != s {
			return fmt.Errorf("%q is not a whole number from %d to %d", s, lo, hi)
		}
		return nil
	}
}

func checkDuration(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return fmt.Errorf("%q is not a positive duration (e.g. 60s, 5m)", s)
	}
	return nil
}

func checkHeartbeat(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d != 0 && (d < time.Second || d > 24*time.Hour) {
		return fmt.Errorf("%q is not 0 or a duration from 1s to 24h", s)
	}
	return nil
}

func checkTTL(s string) error {
	if err := checkDuration(s); err != nil {
		return err
	}
	if d, _ := time.ParseDuration(s); d > sera.MaxRequestLifetime {
		return fmt.Errorf("%s is longer than the longest request lifetime watchers accept (%s)", s, sera.MaxRequestLifetime)
	}
	return nil
}

// checkExecTimeout accepts what a request's exec_timeout_ms may say: a
// positive duration of at most sera.MaxRequestLifetime (24h).
func checkExecTimeout(s string) error {
	if err := checkDuration(s); err != nil {
		return err
	}
	if d, _ := time.ParseDuration(s); d > sera.MaxRequestLifetime {
		return fmt.Errorf("%s is longer than the longest execution timeout sera allows (%s)", s, sera.MaxRequestLifetime)
	}
	return nil
}

func checkAllowLifetime(s string) error {
	if err := checkDuration(s); err != nil {
		return err
	}
	if d, _ := time.ParseDuration(s); d > MaxAllowLifetime {
		return fmt.Errorf("%s is longer than the longest opening sera allows (%s)", s, MaxAllowLifetime)
	}
	return nil
}

// checkAccount accepts an AWS account ID: 12 digits.
func checkAccount(s string) error {
	if len(s) != 12 || strings.Trim(s, "0123456789") != "" {
		return fmt.Errorf("%q is not an AWS account ID: use its 12 digits", s)
	}
	return nil
}

// MaxDomainLen leaves room in a 253-character host name for a watcher name
// (sera.MaxNameLen) and the dot before SERA_DOMAIN.
const MaxDomainLen = 253 - sera.MaxNameLen - 1

// checkDomain accepts a DNS domain as a host name's suffix: dot-separated
// RFC 1123 labels, no leading or trailing dot, no wildcard, a last label
// that is not all digits (so NAME.DOMAIN is never an IP address).
func checkDomain(s string) error {
	if len(s) > MaxDomainLen {
		return fmt.Errorf("%q is longer than %d characters", s, MaxDomainLen)
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' || !domainLabelRE().MatchString(l) {
			return fmt.Errorf("%q is not a DNS domain: use letters, digits and '-' in dot-separated labels, with no leading or trailing dot (e.g. example.com)", s)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("%q is not a DNS domain: its last label is all digits", s)
	}
	return nil
}

var domainLabelRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9-]+$`) })

// checkHTTPSURL accepts only an https URL with a host: the answer decides
// which address a firewall opens to, so it must not be forged on the way.
func checkHTTPSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return fmt.Errorf("%q is not an https:// URL", s)
	}
	return nil
}

func oneOf(vals ...string) func(string) error {
	return func(s string) error {
		for _, v := range vals {
			if s == v {
				return nil
			}
		}
		return fmt.Errorf("%q is not one of %s", s, strings.Join(vals, ", "))
	}
}
