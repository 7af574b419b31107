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
	"crypto/rand"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
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

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	action := r.PostForm.Get("Action")
	params := map[string]string{}
	for k, v := range r.PostForm {
		if k != "Action" && k != "Version" {
			params[k] = v[0]
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, Call{Action: action, Params: params})
	s.seq++
	s.now = s.now.Add(time.Second)
	requestID := fmt.Sprintf("req-%06d", s.seq)

	ns, version := iamNS, iamVersion
	if action == "GetCallerIdentity" {
		ns, version = stsNS, stsVersion
	}
	var result any
	var aerr *apiError
	if v := r.PostForm.Get("Version"); v != version {
		aerr = errorf("InvalidAction", "%s needs Version %s, not %q", action, version, v)
	} else if i := slices.IndexFunc(s.faults, func(f fault) bool { return f.action == action }); i >= 0 {
		f := s.faults[i]
		s.faults = slices.Delete(s.faults, i, i+1)
		aerr = &apiError{f.status, f.code, f.message}
	} else {
		result, aerr = s.do(action, params, r)
	}
	w.Header().Set("Content-Type", "text/xml")
	if aerr != nil {
		w.WriteHeader(aerr.status)
		typ := "Sender"
		if aerr.status >= 500 {
			typ = "Receiver"
		}
		fmt.Fprintf(w, `<ErrorResponse xmlns="%s"><Error><Type>%s</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>`,
			ns, typ, aerr.code, escape(aerr.message), requestID)
		return
	}
	var inner []byte
	if result != nil {
		var err error
		if inner, err = xml.Marshal(result); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// The SDK reads the children of XxxResult: drop the wrapper.
		inner = []byte(strings.TrimSuffix(strings.TrimPrefix(string(inner), "<r>"), "</r>"))
	}
	fmt.Fprintf(w, `<%sResponse xmlns="%s">`, action, ns)
	if result != nil {
		fmt.Fprintf(w, "<%sResult>%s</%sResult>", action, inner, action)
	}
	fmt.Fprintf(w, "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></%sResponse>", requestID, action)
}

func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// XML shapes of the results, as the SDK's deserializers read them.
type (
	xTag struct {
		Key   string `xml:"Key"`
		Value string `xml:"Value"`
	}
	xTags struct {
		Member []xTag `xml:"member"`
	}
	xUser struct {
		Path       string `xml:"Path"`
		UserName   string `xml:"UserName"`
		UserID     string `xml:"UserId"`
		Arn        string `xml:"Arn"`
		CreateDate string `xml:"CreateDate"`
		Tags       *xTags `xml:"Tags,omitempty"`
	}
	xGroup struct {
		Path       string `xml:"Path"`
		GroupName  string `xml:"GroupName"`
		GroupID    string `xml:"GroupId"`
		Arn        string `xml:"Arn"`
		CreateDate string `xml:"CreateDate"`
	}
	xKeyMeta struct {
		UserName    string `xml:"UserName"`
		AccessKeyID string `xml:"AccessKeyId"`
		Status      string `xml:"Status"`
		CreateDate  string `xml:"CreateDate"`
	}
	xKey struct {
		UserName        string `xml:"UserName"`
		AccessKeyID     string `xml:"AccessKeyId"`
		Status          string `xml:"Status"`
		SecretAccessKey string `xml:"SecretAccessKey"`
		CreateDate      string `xml:"CreateDate"`
	}
)

// Results: xml.Marshal writes them inside <r>, which serve replaces by
// <XxxResult>.
type (
	rUser struct {
		XMLName xml.Name `xml:"r"`
		User    xUser    `xml:"User"`
	}
	rGroup struct {
		XMLName xml.Name `xml:"r"`
		Group   xGroup   `xml:"Group"`
	}
	rGetGroup struct {
		XMLName     xml.Name `xml:"r"`
		Group       xGroup   `xml:"Group"`
		Users       []xUser  `xml:"Users>member"`
		IsTruncated bool     `xml:"IsTruncated"`
	}
	rGroupPolicy struct {
		XMLName        xml.Name `xml:"r"`
		GroupName      string   `xml:"GroupName"`
		PolicyName     string   `xml:"PolicyName"`
		PolicyDocument string   `xml:"PolicyDocument"`
	}
	rGroups struct {
		XMLName     xml.Name `xml:"r"`
		Groups      []xGroup `xml:"Groups>member"`
		IsTruncated bool     `xml:"IsTruncated"`
	}
	rKeys struct {
		XMLName     xml.Name   `xml:"r"`
		UserName    string     `xml:"UserName"`
		Keys        []xKeyMeta `xml:"AccessKeyMetadata>member"`
		IsTruncated bool       `xml:"IsTruncated"`
	}
	rKey struct {
		XMLName   xml.Name `xml:"r"`
		AccessKey xKey     `xml:"AccessKey"`
	}
	rCaller struct {
		XMLName xml.Name `xml:"r"`
		Arn     string   `xml:"Arn"`
		UserID  string   `xml:"UserId"`
		Account string   `xml:"Account"`
	}
)

func (s *Server) date(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func (s *Server) xuser(u *User) xUser {
	x := xUser{Path: "/", UserName: u.Name, UserID: "AIDA" + strings.ToUpper(fmt.Sprintf("%016x", hash(u.Name))),
		Arn: fmt.Sprintf("arn:aws:iam::%s:user/%s", s.Account, u.Name), CreateDate: s.date(u.Created)}
	if len(u.Tags) > 0 {
		x.Tags = &xTags{}
		ks := make([]string, 0, len(u.Tags))
		for k := range u.Tags {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			x.Tags.Member = append(x.Tags.Member, xTag{k, u.Tags[k]})
		}
	}
	return x
}

func (s *Server) xgroup(g *Group) xGroup {
	return xGroup{Path: "/", GroupName: g.Name, GroupID: "AGPA" + strings.ToUpper(fmt.Sprintf("%016x", hash(g.Name))),
		Arn: fmt.Sprintf("arn:aws:iam::%s:group/%s", s.Account, g.Name), CreateDate: s.date(g.Created)}
}

func hash(s string) uint64 {
	var h uint64 = 14695981039346656037
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

const keyChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

func randString(n int, chars string) string {
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = chars[int(b[i])%len(chars)]
	}
	return string(b)
}

func (s *Server) newKey(user string) *Key {
	k := &Key{ID: "AKIA" + randString(16, keyChars), Secret: randString(40, keyChars+"abcdefghijklmnopqrstuvwxyz+/"),
		User: user, Status: "Active", Created: s.now}
	s.now = s.now.Add(time.Second)
	s.keys[k.ID] = k
	return k
}

var credentialRE = regexp.MustCompile(`Credential=([^/,\s]+)/`)

func (s *Server) do(action string, p map[string]string, r *http.Request) (any, *apiError) {
	user := func(name string) (*User, *apiError) {
		u, ok := s.users[name]
		if !ok {
			return nil, errorf("NoSuchEntity", "The user with name %s cannot be found.", name)
		}
		return u, nil
	}
	group := func(name string) (*Group, *apiError) {
		g, ok := s.groups[name]
		if !ok {
			return nil, errorf("NoSuchEntity", "The group with name %s cannot be found.", name)
		}
		return g, nil
	}
	switch action {
	case "GetCallerIdentity":
		m := credentialRE.FindStringSubmatch(r.Header.Get("Authorization"))
		if m == nil {
			return nil, errorf("MissingAuthenticationToken", "Request is missing Authentication Token")
		}
		if m[1] == AdminKeyID {
			return rCaller{Arn: fmt.Sprintf("arn:aws:iam::%s:user/admin", s.Account), UserID: "AIDAADMIN", Account: s.Account}, nil
		}
		k, ok := s.keys[m[1]]
		if !ok || k.Status != "Active" {
			return nil, errorf("InvalidClientTokenId", "The security token included in the request is invalid.")
		}
		return rCaller{Arn: fmt.Sprintf("arn:aws:iam::%s:user/%s", s.Account, k.User), UserID: "AIDA" + k.User, Account: s.Account}, nil

	case "CreateGroup":
		name := p["GroupName"]
		if _, ok := s.groups[name]; ok {
			return nil, errorf("EntityAlreadyExists", "Group with name %s already exists.", name)
		}
		g := &Group{Name: name, Policies: map[string]string{}, Created: s.now}
		s.groups[name] = g
		return rGroup{Group: s.xgroup(g)}, nil

	case "GetGroup":
		g, err := group(p["GroupName"])
		if err != nil {
			return nil, err
		}
		res := rGetGroup{Group: s.xgroup(g)}
		for _, n := range s.sortedUsers() {
			if slices.Contains(s.users[n].Groups, g.Name) {
				res.Users = append(res.Users, s.xuser(s.users[n]))
			}
		}
		return res, nil

	case "GetGroupPolicy":
		g, err := group(p["GroupName"])
		if err != nil {
			return nil, err
		}
		doc, ok := g.Policies[p["PolicyName"]]
		if !ok {
			return nil, errorf("NoSuchEntity", "The group policy with name %s cannot be found.", p["PolicyName"])
		}
		// IAM returns policy documents URL-encoded (RFC 3986).
		enc := strings.ReplaceAll(url.QueryEscape(doc), "+", "%20")
		return rGroupPolicy{GroupName: g.Name, PolicyName: p["PolicyName"], PolicyDocument: enc}, nil

	case "PutGroupPolicy":
		g, err := group(p["GroupName"])
		if err != nil {
			return nil, err
		}
		if !json.Valid([]byte(p["PolicyDocument"])) {
			return nil, errorf("MalformedPolicyDocument", "Syntax errors in policy.")
		}
		g.Policies[p["PolicyName"]] = p["PolicyDocument"]
		return nil, nil

	case "GetUser":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		return rUser{User: s.xuser(u)}, nil

	case "CreateUser":
		name := p["UserName"]
		if _, ok := s.users[name]; ok {
			return nil, errorf("EntityAlreadyExists", "User with name %s already exists.", name)
		}
		if len(name) > 64 {
			return nil, errorf("ValidationError", "1 validation error detected: Value at 'userName' failed to satisfy constraint: Member must have length less than or equal to 64")
		}
		u := &User{Name: name, Tags: tags(p), Created: s.now}
		s.users[name] = u
		return rUser{User: s.xuser(u)}, nil

	case "TagUser":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		for k, v := range tags(p) {
			u.Tags[k] = v
		}
		return nil, nil

	case "DeleteUser":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		if len(u.Groups) > 0 || len(s.userKeys(u.Name)) > 0 {
			return nil, errorf("DeleteConflict", "Cannot delete entity, must remove users from group first.")
		}
		delete(s.users, u.Name)
		return nil, nil

	case "ListGroupsForUser":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		var res rGroups
		for _, n := range u.Groups {
			res.Groups = append(res.Groups, s.xgroup(s.groups[n]))
		}
		return res, nil

	case "AddUserToGroup", "RemoveUserFromGroup":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		g, err := group(p["GroupName"])
		if err != nil {
			return nil, err
		}
		in := slices.Contains(u.Groups, g.Name)
		switch {
		case action == "AddUserToGroup" && !in:
			u.Groups = append(u.Groups, g.Name)
		case action == "RemoveUserFromGroup" && in:
			u.Groups = slices.DeleteFunc(u.Groups, func(n string) bool { return n == g.Name })
		case action == "RemoveUserFromGroup":
			return nil, errorf("NoSuchEntity", "User %s is not in group %s.", u.Name, g.Name)
		}
		return nil, nil

	case "ListAccessKeys":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		res := rKeys{UserName: u.Name}
		for _, k := range s.userKeys(u.Name) {
			res.Keys = append(res.Keys, xKeyMeta{UserName: k.User, AccessKeyID: k.ID, Status: k.Status, CreateDate: s.date(k.Created)})
		}
		return res, nil

	case "CreateAccessKey":
		u, err := user(p["UserName"])
		if err != nil {
			return nil, err
		}
		if len(s.userKeys(u.Name)) >= maxKeys {
			return nil, errorf("LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: %d", maxKeys)
		}
		k := s.newKey(u.Name)
		return rKey{AccessKey: xKey{UserName: k.User, AccessKeyID: k.ID, Status: k.Status, SecretAccessKey: k.Secret, CreateDate: s.date(k.Created)}}, nil

	case "DeleteAccessKey":
		k, ok := s.keys[p["AccessKeyId"]]
		if !ok || k.User != p["UserName"] {
			return nil, errorf("NoSuchEntity", "The Access Key with id %s cannot be found.", p["AccessKeyId"])
		}
		delete(s.keys, k.ID)
		return nil, nil
	}
	return nil, errorf("InvalidAction", "Could not find operation %s for version %s", action, iamVersion)
}

func (s *Server) sortedUsers() []string {
	var out []string
	for n := range s.users {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// tags reads Tags.member.N.Key and .Value.
func tags(p map[string]string) map[string]string {
	out := map[string]string{}
	for i := 1; ; i++ {
		k, ok := p[fmt.Sprintf("Tags.member.%d.Key", i)]
		if !ok {
			return out
		}
		out[k] = p[fmt.Sprintf("Tags.member.%d.Value", i)]
	}
}
