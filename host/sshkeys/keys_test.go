package sshkeys

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sera-dev/sera/host/hostkeys/keystest"
	"golang.org/x/crypto/ssh"
)

// acctKey is a fresh ed25519 key: its authorized_keys line (with comment)
// and the parsed key.
func acctKey(t *testing.T, comment string) (string, ssh.PublicKey) {
	return keystest.AuthorizedLine(t, comment)
}

// acctBlock is the managed block holding lines.
func acctBlock(lines ...string) string {
	return BlockBegin + "\n" + strings.Join(lines, "\n") + "\n" + BlockEnd + "\n"
}

func TestAuthorizedKeysRoundTrip(t *testing.T) {
	k1, _ := acctKey(t, "one")
	k2, _ := acctKey(t, "two words")
	k3, _ := acctKey(t, "")
	own, _ := acctKey(t, "own")
	tests := []struct {
		name         string
		in           string
		before       []string
		after        []string
		managed      []string // line() of each managed key
		disabled     []bool
		hadBlock     bool
		out          string // bytes(), if not in
		ownKeysCount int
	}{
		{name: "empty"},
		{
			name: "only the user's lines", in: "# mine\n\n" + own + "\n  \n",
			before: []string{"# mine", "", own, "  "}, ownKeysCount: 1,
		},
		{
			name: "lines before and after the block, kept verbatim",
			in: "# my keys\n" + `no-agent-forwarding,command="echo hi" ` + own + "\n\n" +
				acctBlock(k1, `from="10.0.0.0/8",no-pty `+k2, "#sera-locked "+k3) +
				"\n# below\r\n" + own + " again\n",
			before:   []string{"# my keys", `no-agent-forwarding,command="echo hi" ` + own, ""},
			after:    []string{"", "# below\r", own + " again"},
			managed:  []string{k1, `from="10.0.0.0/8",no-pty ` + k2, "#sera-locked " + k3},
			disabled: []bool{false, false, true}, hadBlock: true, ownKeysCount: 2,
		},
		{
			name: "only the block", in: acctBlock(k1),
			managed: []string{k1}, disabled: []bool{false}, hadBlock: true,
		},
		{
			name: "no newline at the end gets one", in: "# mine",
			before: []string{"# mine"}, out: "# mine\n",
		},
		{
			name: "lines in the block that are not keys are dropped", in: acctBlock(k1, "# a note", "", "not a key"),
			managed: []string{k1}, disabled: []bool{false}, hadBlock: true, out: acctBlock(k1),
		},
		{
			name: "an empty block is dropped", in: "# mine\n" + acctBlock() + "# after\n",
			before: []string{"# mine"}, after: []string{"# after"}, hadBlock: true,
			// acctBlock() has an empty line in it, which is dropped too
			out: "# mine\n# after\n",
		},
		{
			name: "a second begin marker is the user's line", in: acctBlock(k1) + BlockBegin + "\n",
			after: []string{BlockBegin}, managed: []string{k1}, disabled: []bool{false}, hadBlock: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ak := Parse([]byte(tt.in))
			if !reflect.DeepEqual(ak.Before, tt.before) || !reflect.DeepEqual(ak.After, tt.after) || ak.hadBlock != tt.hadBlock {
				t.Errorf("before %q after %q hadBlock %v, want %q %q %v", ak.Before, ak.After, ak.hadBlock, tt.before, tt.after, tt.hadBlock)
			}
			var lines []string
			var disabled []bool
			for _, k := range ak.Managed {
				lines = append(lines, k.Line())
				disabled = append(disabled, k.Disabled)
			}
			if !reflect.DeepEqual(lines, tt.managed) || !reflect.DeepEqual(disabled, tt.disabled) {
				t.Errorf("managed %q disabled %v, want %q %v", lines, disabled, tt.managed, tt.disabled)
			}
			if n := len(ak.OwnKeys()); n != tt.ownKeysCount {
				t.Errorf("%d own keys, want %d", n, tt.ownKeysCount)
			}
			want := tt.out
			if want == "" {
				want = tt.in
			}
			if got := string(ak.Bytes()); got != want {
				t.Errorf("bytes()\n%q\nwant\n%q", got, want)
			}
			if again := string(Parse(ak.Bytes()).Bytes()); again != want {
				t.Errorf("second round trip %q", again)
			}
		})
	}
}

func TestParseKeyArg(t *testing.T) {
	k, pk := acctKey(t, "me@host")
	got, err := ParseArg(k, "")
	if err != nil || !got.Same(&Key{Key: pk}) || got.Comment != "me@host" || got.Options != nil {
		t.Fatalf("ParseArg(%q) = %+v, %v", k, got, err)
	}
	got, err = ParseArg(k, `from="10.0.0.0/8,192.168.1.0/24",no-pty,command="/usr/bin/rrsync -ro /srv"`)
	if err != nil || !reflect.DeepEqual(got.Options, []string{`from="10.0.0.0/8,192.168.1.0/24"`, "no-pty", `command="/usr/bin/rrsync -ro /srv"`}) {
		t.Fatalf("options: %+v, %v", got, err)
	}
	// The line written parses back to the same options.
	_, _, opts, _, err := ssh.ParseAuthorizedKey([]byte(got.Line()))
	if err != nil || !reflect.DeepEqual(opts, got.Options) {
		t.Errorf("line %q parses to options %q, %v", got.Line(), opts, err)
	}
	k2, _ := acctKey(t, "")
	for _, bad := range []struct{ key, options, want string }{
		{"", "", "invalid key"},
		{"ssh-ed25519", "", "invalid key"},
		{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBroken", "", "invalid key"},
		{"ssh-rsa " + strings.Fields(k)[1], "", "invalid key"}, // the blob says ed25519
		{k + "\n" + k2, "", "spans several lines"},
		{k + "\r", "", "spans several lines"},
		{`command="/bin/sh" ` + k, "", "carries options"},
		{`no-pty ` + k, "no-pty", "carries options"},
		{`environment="LD_PRELOAD=/tmp/x.so" ` + k, "", "carries options"},
		{k, "bogus", `"bogus" is not an sshd authorized_keys option`},
		{k, "no-pty,evil=\"x\"", `"evil" is not an sshd authorized_keys option`},
		{k, "no-pty\nssh-ed25519 AAAA", "line break"},
		{k, `command="unterminated`, "invalid --options"},
		{k, " ", "invalid --options"},
	} {
		if _, err := ParseArg(bad.key, bad.options); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseArg(%q, %q) = %v, want an error saying %q", bad.key, bad.options, err, bad.want)
		}
	}
}

// A begin marker without its end is a hand edit: every line is the user's
// and nothing the user wrote is dropped.
func TestAuthorizedKeysUnterminatedBlock(t *testing.T) {
	k1, _ := acctKey(t, "one")
	k2, _ := acctKey(t, "two")
	in := "# my keys\n" + BlockBegin + "\n" + k1 + "\n# a note\n" + k2 + "\n"
	ak := Parse([]byte(in))
	if len(ak.Managed) != 0 || len(ak.OwnKeys()) != 2 {
		t.Fatalf("managed %d, own %d; want 0, 2", len(ak.Managed), len(ak.OwnKeys()))
	}
	want := "# my keys\n" + k1 + "\n# a note\n" + k2 + "\n"
	if got := string(ak.Bytes()); got != want {
		t.Errorf("rewritten as %q, want %q", got, want)
	}
}

// FuzzParse feeds authorized_keys anything the user may have written:
// writing what was parsed and parsing it again gives the same file, and
// no line of the user's is lost.
func FuzzParse(f *testing.F) {
	k := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnpMPh3k0wVyV0q0yjnZ2nQk1C5WfzaUzS0EL5wExiR c"
	f.Add("# mine\n" + k + "\n")
	f.Add(BlockBegin + "\n" + k + "\n" + LockedPrefix + k + "\n" + BlockEnd + "\nafter\n")
	f.Add(BlockBegin + "\n" + k + "\n")
	f.Add(BlockBegin + "\n\n") // once rewritten "\n", then ""
	f.Fuzz(func(t *testing.T, in string) {
		ak := Parse([]byte(in))
		out := ak.Bytes()
		if again := Parse(out).Bytes(); string(again) != string(out) {
			t.Fatalf("%q: rewritten %q, then %q", in, out, again)
		}
		for _, line := range append(append([]string{}, ak.Before...), ak.After...) {
			if !strings.Contains(string(out), line) {
				t.Fatalf("%q: own line %q lost", in, line)
			}
		}
	})
}
