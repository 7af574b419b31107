// Package iamtest is an in-process IAM for tests: an HTTP server that
// speaks the IAM query protocol (form-encoded POST, XML answers) to the
// real AWS SDK client, keeps users, groups, group policies and access keys,
// and records every request. It answers STS GetCallerIdentity too, for the
// admin's key and the keys it issued, so a new key can be confirmed.
//
// It checks what IAM checks that sera relies on (names exist or not, two
// access keys per user, a user with keys or groups cannot be deleted); it
// does not check signatures or permissions.
package iamtest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Admin credentials that Config uses; GetCallerIdentity names them
// arn:aws:iam::ACCOUNT:user/admin.
const (
	AdminKeyID  = "AKIAADMINADMINADMIN0"
	AdminSecret = "admin-secret"
)

const (
	iamVersion = "2010-05-08"
	stsVersion = "2011-06-15"
	iamNS      = "https://iam.amazonaws.com/doc/2010-05-08/"
	stsNS      = "https://sts.amazonaws.com/doc/2011-06-15/"
	maxKeys    = 2 // IAM's quota of access keys per user
)

// Server is a running fake IAM and STS.
type Server struct {
	// URL is the server's endpoint, for BaseEndpoint.
	URL string
	// Account is the account ID in ARNs and GetCallerIdentity.
	Account string

	mu     sync.Mutex
	users  map[string]*User
	groups map[string]*Group
	keys   map[string]*Key // by access key ID
	calls  []Call
	faults []fault
	seq    int
	now    time.Time
}

// User is an IAM user.
type User struct {
	Name    string
	Tags    map[string]string
	Groups  []string
	Created time.Time
}

// Group is an IAM group with its inline policies (name → JSON).
type Group struct {
	Name     string
	Policies map[string]string
	Created  time.Time
}

// Key is an access key.
type Key struct {
	ID, Secret, User, Status string
	Created                  time.Time
}

// Call is one request: its Action and every other parameter but Version.
type Call struct {
	Action string
	Params map[string]string
}

// String formats the call as "Action K=V K=V…", parameters sorted.
func (c Call) String() string {
	ks := make([]string, 0, len(c.Params))
	for k := range c.Params {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	b.WriteString(c.Action)
	for _, k := range ks {
		fmt.Fprintf(&b, " %s=%s", k, c.Params[k])
	}
	return b.String()
}

type fault struct {
	action, code, message string
	status                int
}

// Start starts a server with account 000000000000 (fauxqs's) and closes
// it in t's cleanup.
func Start(t testing.TB) *Server {
	s := &Server{
		Account: "000000000000",
		users:   map[string]*User{}, groups: map[string]*Group{}, keys: map[string]*Key{},
		now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// Config is an AWS SDK configuration for this server with the admin's
// static credentials in us-east-1.
func (s *Server) Config() aws.Config {
	return aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider(AdminKeyID, AdminSecret, ""),
		BaseEndpoint: aws.String(s.URL),
	}
}

// Calls returns the requests so far, in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// CallStrings returns Calls formatted.
func (s *Server) CallStrings() []string {
	var out []string
	for _, c := range s.Calls() {
		out = append(out, c.String())
	}
	return out
}

// ResetCalls forgets the requests so far.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// FailNext makes the next request for action fail with the IAM error
// code (EntityAlreadyExists, NoSuchEntity, LimitExceeded, …) before it
// changes anything.
func (s *Server) FailNext(action, code, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{action, code, message, statusOf(code)})
}

// User returns a copy of the user called name.
func (s *Server) User(name string) (User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[name]
	if !ok {
		return User{}, false
	}
	c := *u
	c.Groups = slices.Clone(u.Groups)
	return c, true
}

// Users returns the names of all users, sorted.
func (s *Server) Users() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.users {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Keys returns the access keys of user, oldest first.
func (s *Server) Keys(user string) []Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.userKeys(user)
}

func (s *Server) userKeys(user string) []Key {
	var out []Key
	for _, k := range s.keys {
		if k.User == user {
			out = append(out, *k)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// GroupPolicy returns the inline policy of group.
func (s *Server) GroupPolicy(group, policy string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[group]
	if !ok {
		return "", false
	}
	doc, ok := g.Policies[policy]
	return doc, ok
}

// AddKey gives user an access key directly, as if made elsewhere.
func (s *Server) AddKey(user string) Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.newKey(user)
}

type apiError struct {
	status        int
	code, message string
}

func statusOf(code string) int {
	switch code {
	case "NoSuchEntity":
		return http.StatusNotFound
	case "EntityAlreadyExists", "LimitExceeded", "DeleteConflict":
		return http.StatusConflict
	case "InvalidClientTokenId":
		return http.StatusForbidden
	case "ServiceFailure":
		return http.StatusInternalServerError
	default:
		return http.StatusBadRequest
	}
}

func errorf(code, format string, args ...any) *apiError {
	return &apiError{statusOf(code), code, fmt.Sprintf(format, args...)}
}
