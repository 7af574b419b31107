package sqs_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
)

// The results of the IAM policy evaluator.
const (
	allow    = "Allowed"
	deny     = "ImplicitlyDenied" // no statement allows it
	denyHard = "ExplicitlyDenied" // the NothingElse statement denies it
)

// simCase is one request for the evaluator: principal does action on
// resource.
type simCase struct {
	Name      string `json:"name"`
	Principal string `json:"principal"`
	Account   string `json:"account"`
	Action    string `json:"action"`
	Resource  string `json:"resource"`
	Policies  []struct {
		Name   string          `json:"name"`
		Policy json.RawMessage `json:"policy"`
	} `json:"policies,omitempty"`
	ResourcePolicy json.RawMessage   `json:"resourcePolicy,omitempty"`
	Context        map[string]string `json:"context,omitempty"`

	want string
	user string // IAM user name, "" for a service
}

// simulate runs the cases through @cloud-copilot/iam-simulate (see
// testdata/iamsim.js) and returns the results by case name.
func simulate(t *testing.T, cases []simCase) map[string]string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat("testdata/npm/node_modules/@cloud-copilot/iam-simulate/package.json")
	}
	if err != nil {
		msg := fmt.Sprintf("the IAM policy evaluator is not installed, run make deps: %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	in, err := json.Marshal(map[string]any{"cases": cases})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "testdata/iamsim.js")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("iamsim.js: %v: %s", err, stderr.String())
	}
	var res []struct{ Name, Result string }
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iamsim.js output %q: %v", out, err)
	}
	got := map[string]string{}
	for _, r := range res {
		got[r.Name] = r.Result
	}
	return got
}

const (
	testAccount = "123456789012"
	testRegion  = "eu-west-1"
	testPrefix  = "sera"
)

// TestPolicyEvaluation checks the least-privilege claims of the watcher
// and client policies with a real IAM policy evaluator, not by reading
// their text. Each principal's policy has ${aws:username} replaced by its
// user name first, as AWS does: the evaluator mis-parses a queue ARN made
// of only a variable (see TestPolicyVariableSimulatorBug).
func TestPolicyEvaluation(t *testing.T) {
	a := sqs.Account{Region: testRegion, ID: testAccount}
	watcherDoc := sqs.WatcherPolicy(a, testPrefix).JSON()
	clientDoc := sqs.ClientPolicy(a, testPrefix).JSON()
	q := a.QueueARN
	topic := a.TopicARN
	user := a.UserARN

	const (
		web1    = "sera-w-web1"
		web2    = "sera-w-web2"
		web10   = "sera-w-web10"
		client  = "sera-c-aaaaaaaaaaaaaaaa"
		client2 = "sera-c-bbbbbbbbbbbbbbbb"
	)
	var cases []simCase
	add := func(who, doc, action, resource, want string) {
		c := simCase{
			Name:      fmt.Sprintf("%s %s %s", who, action, resource),
			Principal: user(who), Account: testAccount, Action: action, Resource: resource,
			want: want, user: who,
		}
		policy := sqs.SubstituteUsername(doc, who)
		if strings.Contains(policy, "${") {
			t.Fatalf("policy for %s still has a variable: %s", who, policy)
		}
		c.Policies = append(c.Policies, struct {
			Name   string          `json:"name"`
			Policy json.RawMessage `json:"policy"`
		}{"group-policy", json.RawMessage(policy)})
		cases = append(cases, c)
	}
	w := func(action, resource, want string) { add(web1, watcherDoc, action, resource, want) }
	c := func(action, resource, want string) { add(client, clientDoc, action, resource, want) }

	// Watcher web1.
	for _, act := range []string{"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"} {
		w(act, q(web1), allow)
	}
	w("sqs:ReceiveMessage", q(web2), deny)
	// The case that catches a wrong substitution: a variable replaced by
	// a wildcard, or left for the evaluator, lets web1 read web10's queue
	// or no queue at all.
	w("sqs:ReceiveMessage", q(web10), deny)
	w("sqs:DeleteMessage", q(web2), deny)
	w("sqs:ReceiveMessage", q(client), deny)
	w("sqs:ReceiveMessage", q(sqs.DeadLetterQueue(testPrefix, "web1")), deny)
	w("sqs:ReceiveMessage", sqs.Account{Region: "us-east-1", ID: testAccount}.QueueARN(web1), deny)
	w("sqs:SendMessage", q(client), allow)
	w("sqs:SendMessage", q(web2), deny)
	w("sqs:SendMessage", q(web1), deny)
	w("sqs:SendMessage", q(sqs.DeadLetterQueue(testPrefix, "web1")), deny)
	w("sqs:DeleteQueue", q(web1), denyHard)
	w("sqs:CreateQueue", q("sera-w-new"), denyHard)
	w("sqs:ListQueues", "*", denyHard)
	w("sqs:PurgeQueue", q(web1), denyHard)
	w("sqs:SetQueueAttributes", q(web1), denyHard)
	w("sqs:AddPermission", q(web1), denyHard)
	w("sns:Publish", topic("sera-all"), denyHard)
	w("sns:Publish", topic("sera-g-web"), denyHard)
	w("sns:Subscribe", topic("sera-all"), denyHard)
	w("sns:CreateTopic", topic("sera-g-new"), denyHard)
	w("iam:CreateAccessKey", user(web1), denyHard)
	w("iam:CreateUser", user("intruder"), denyHard)
	w("iam:PutGroupPolicy", fmt.Sprintf("arn:aws:iam::%s:group/%s", testAccount, sqs.WatchersGroup(testPrefix)), denyHard)
	w("iam:AttachUserPolicy", user(web1), denyHard)

	// Watcher web2 gets the same policy and its own queue only.
	add(web2, watcherDoc, "sqs:ReceiveMessage", q(web2), allow)
	add(web2, watcherDoc, "sqs:ReceiveMessage", q(web1), deny)

	// Client.
	c("sqs:SendMessage", q(web1), allow)
	c("sqs:SendMessage", q(web2), allow)
	c("sqs:GetQueueUrl", q(web2), allow)
	c("sqs:SendMessage", q(sqs.DeadLetterQueue(testPrefix, "web1")), deny)
	c("sqs:SendMessage", q(client2), deny)
	c("sns:Publish", topic("sera-all"), allow)
	c("sns:Publish", topic("sera-g-web"), allow)
	c("sns:Publish", topic("other-all"), deny)
	for _, act := range []string{"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"} {
		c(act, q(client), allow)
	}
	c("sqs:ReceiveMessage", q(client2), deny)
	c("sqs:DeleteMessage", q(client2), deny)
	// Its reply queues, one per process at once: its own, no other's.
	for _, act := range []string{"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"} {
		c(act, q(client+"-1"), allow)
		c(act, q(client+"-63"), allow)
		c(act, q(client2+"-1"), deny)
	}
	c("sqs:ReceiveMessage", q(client+"x"), deny)
	c("sqs:SendMessage", q(client+"-1"), deny)
	c("sqs:CreateQueue", q(client+"-1"), denyHard)
	w("sqs:SendMessage", q(client+"-5"), allow)
	// Heartbeats: a watcher sends to a client's heartbeat queue and may
	// not read it; the client reads its own, no other's.
	hb := transport.HeartbeatQueue(testPrefix, strings.TrimPrefix(client, testPrefix+"-c-"))
	w("sqs:SendMessage", q(hb), allow)
	w("sqs:ReceiveMessage", q(hb), deny)
	c("sqs:ReceiveMessage", q(hb), allow)
	c("sqs:DeleteMessage", q(hb), allow)
	c("sqs:ReceiveMessage", q(client2+"-hb"), deny)
	c("sqs:ReceiveMessage", q(web1), deny)
	c("sqs:DeleteQueue", q(client), denyHard)
	c("sqs:DeleteQueue", q(web1), denyHard)
	c("sqs:CreateQueue", q("sera-w-new"), denyHard)
	c("sqs:ListQueues", "*", denyHard)
	c("sqs:PurgeQueue", q(web1), denyHard)
	c("sqs:SetQueueAttributes", q(web1), denyHard)
	c("sns:CreateTopic", topic("sera-g-new"), denyHard)
	c("sns:DeleteTopic", topic("sera-all"), denyHard)
	c("sns:SetTopicAttributes", topic("sera-all"), denyHard)
	c("sns:Subscribe", topic("sera-all"), denyHard)
	c("iam:CreateAccessKey", user(client), denyHard)
	c("iam:CreateUser", user("intruder"), denyHard)

	// The queue policy of web1 in groups web: SNS may deliver from its
	// topics only.
	qp := json.RawMessage(sqs.WatcherQueuePolicy(a, web1, []string{"sera-all", "sera-g-web"}).JSON())
	for _, tc := range []struct{ topic, want string }{
		{"sera-all", allow}, {"sera-g-web", allow}, {"sera-g-db", deny},
	} {
		cases = append(cases, simCase{
			Name:      "sns.amazonaws.com sqs:SendMessage " + q(web1) + " from " + tc.topic,
			Principal: "sns.amazonaws.com", Account: testAccount, Action: "sqs:SendMessage", Resource: q(web1),
			ResourcePolicy: qp, Context: map[string]string{"aws:SourceArn": topic(tc.topic)}, want: tc.want,
		})
	}

	got := simulate(t, cases)
	var table strings.Builder
	fmt.Fprintf(&table, "\n%-28s %-30s %-62s %s\n", "principal", "action", "resource", "result")
	for _, tc := range cases {
		who := tc.user
		if who == "" {
			who = tc.Principal
			if tc.Context["aws:SourceArn"] != "" {
				who += " via " + tc.Context["aws:SourceArn"][strings.LastIndex(tc.Context["aws:SourceArn"], ":")+1:]
			}
		}
		mark := ""
		if got[tc.Name] != tc.want {
			mark = "   <-- want " + tc.want
			t.Errorf("%s: %s, want %s", tc.Name, got[tc.Name], tc.want)
		}
		fmt.Fprintf(&table, "%-28s %-30s %-62s %s%s\n", who, tc.Action, tc.Resource, got[tc.Name], mark)
	}
	t.Log(table.String())
}

// TestPolicyVariableSimulatorBug records why the cases above substitute
// ${aws:username} themselves: the evaluator denies a watcher its own
// queue when it is left to resolve the variable, which AWS allows. If a
// new version of the evaluator gets it right, this says so; the cases
// above stay correct either way.
func TestPolicyVariableSimulatorBug(t *testing.T) {
	a := sqs.Account{Region: testRegion, ID: testAccount}
	c := simCase{
		Name:      "unsubstituted",
		Principal: a.UserARN("sera-w-web1"), Account: testAccount,
		Action: "sqs:ReceiveMessage", Resource: a.QueueARN("sera-w-web1"),
		Context: map[string]string{"aws:username": "sera-w-web1"},
	}
	c.Policies = append(c.Policies, struct {
		Name   string          `json:"name"`
		Policy json.RawMessage `json:"policy"`
	}{"group-policy", json.RawMessage(sqs.WatcherPolicy(a, testPrefix).JSON())})
	got := simulate(t, []simCase{c})["unsubstituted"]
	if got == allow {
		t.Logf("the evaluator now resolves ${aws:username} in a queue ARN itself (%s)", got)
	} else {
		t.Logf("the evaluator still mis-resolves ${aws:username} in a queue ARN: %s where AWS allows", got)
	}
}

// The policies are the documents docs/aws.md shows and create-provider-keys
// puts: deterministic, and with the variable AWS needs.
func TestPolicyJSON(t *testing.T) {
	a := sqs.Account{Region: testRegion, ID: testAccount}
	w1, w2 := sqs.WatcherPolicy(a, testPrefix).JSON(), sqs.WatcherPolicy(a, testPrefix).JSON()
	if w1 != w2 {
		t.Fatal("watcher policy JSON differs between calls")
	}
	want := `{"Version":"2012-10-17","Statement":[` +
		`{"Sid":"OwnQueue","Effect":"Allow","Action":["sqs:ChangeMessageVisibility","sqs:DeleteMessage","sqs:GetQueueAttributes","sqs:GetQueueUrl","sqs:ReceiveMessage"],"Resource":["arn:aws:sqs:eu-west-1:123456789012:${aws:username}"]},` +
		`{"Sid":"SendReplies","Effect":"Allow","Action":["sqs:GetQueueUrl","sqs:SendMessage"],"Resource":["arn:aws:sqs:eu-west-1:123456789012:sera-c-*"]},` +
		`{"Sid":"NothingElse","Effect":"Deny","NotAction":["sqs:ChangeMessageVisibility","sqs:DeleteMessage","sqs:GetQueueAttributes","sqs:GetQueueUrl","sqs:ReceiveMessage","sqs:SendMessage"],"Resource":["*"]}]}`
	if w1 != want {
		t.Errorf("watcher policy\n%s\nwant\n%s", w1, want)
	}
	if !sqs.SameJSON(w1, sqs.WatcherPolicy(a, testPrefix).Indent()) {
		t.Error("indented policy is not the same JSON")
	}
	// AWS may return a list of one as a string.
	if !sqs.SameJSON(`{"A":["x"],"N":5}`, `{"N":"5","A":"x"}`) || sqs.SameJSON(`{"A":["x","y"]}`, `{"A":["y","x"]}`) {
		t.Error("SameJSON")
	}
}

// TestPolicyGuardCatchesWrongSubstitution shows that the guard case of
// TestPolicyEvaluation (web1 receiving on web10's queue is denied) fails
// when the variable is replaced wrongly, by a wildcard: it would catch it.
func TestPolicyGuardCatchesWrongSubstitution(t *testing.T) {
	a := sqs.Account{Region: testRegion, ID: testAccount}
	c := simCase{
		Name:      "wildcard",
		Principal: a.UserARN("sera-w-web1"), Account: testAccount,
		Action: "sqs:ReceiveMessage", Resource: a.QueueARN("sera-w-web10"),
	}
	c.Policies = append(c.Policies, struct {
		Name   string          `json:"name"`
		Policy json.RawMessage `json:"policy"`
	}{"group-policy", json.RawMessage(sqs.SubstituteUsername(sqs.WatcherPolicy(a, testPrefix).JSON(), "sera-w-*"))})
	if got := simulate(t, []simCase{c})["wildcard"]; got != allow {
		t.Errorf("with a wildcard for the user name, web1 on web10's queue: %s; the guard case would not catch it", got)
	}
}

// docs/aws.md shows the policies exactly as sera puts them.
func TestPoliciesInDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/aws.md")
	if err != nil {
		t.Fatal(err)
	}
	a := sqs.Account{Region: testRegion, ID: testAccount}
	for name, p := range map[string]*sqs.Policy{"watcher": sqs.WatcherPolicy(a, testPrefix), "client": sqs.ClientPolicy(a, testPrefix)} {
		if !strings.Contains(string(doc), "```json\n"+p.Indent()+"\n```") {
			t.Errorf("docs/aws.md lacks the %s policy as sera puts it:\n%s", name, p.Indent())
		}
	}
}

// The policies for credentials sera did not make name the queues; they
// are the group policies as AWS evaluates them for sera's own users.
func TestPoliciesFor(t *testing.T) {
	a := sqs.Account{Region: testRegion, ID: testAccount}
	w := sqs.WatcherPolicyFor(a, testPrefix, "web1")
	c := sqs.ClientPolicyFor(a, testPrefix, "aaaaaaaaaaaaaaaa")
	if strings.Contains(w+c, "${") {
		t.Fatalf("a variable is left:\n%s\n%s", w, c)
	}
	if !strings.Contains(w, `"arn:aws:sqs:eu-west-1:123456789012:sera-w-web1"`) ||
		!strings.Contains(c, `"arn:aws:sqs:eu-west-1:123456789012:sera-c-aaaaaaaaaaaaaaaa","arn:aws:sqs:eu-west-1:123456789012:sera-c-aaaaaaaaaaaaaaaa-*"`) {
		t.Errorf("queues not named:\n%s\n%s", w, c)
	}
	if w != sqs.SubstituteUsername(sqs.WatcherPolicy(a, testPrefix).JSON(), "sera-w-web1") {
		t.Error("WatcherPolicyFor is not the evaluated watcher policy")
	}
}
