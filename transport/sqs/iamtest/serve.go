package iamtest

import (
	"crypto/rand"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

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
