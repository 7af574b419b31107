package admin

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/host/hostkeys"
	"github.com/sera-dev/sera/host/hostkeys/keystest"
)

func fp(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

func mustEntry(t *testing.T, names string, keys ...ssh.PublicKey) *hostkeys.Host {
	t.Helper()
	name, aliases, err := hostkeys.ParseHostList(names)
	if err != nil {
		t.Fatal(err)
	}
	e, err := hostkeys.NewHost(name, aliases, keys)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func khReport(t testing.TB, host string, names, addrs []string, keys ...ssh.PublicKey) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, k := range keys {
		j, _ := json.Marshal(hostkeys.Report{Host: host, Names: names, Addrs: addrs, Type: k.Type(), Fingerprint: fp(k), Key: hostkeys.KeyText(k)})
		b.Write(append(j, '\n'))
	}
	return b.Bytes()
}

func TestParseHostKeyReport(t *testing.T) {
	ed, ec := keystest.Ed25519(t), keystest.ECDSA(t)
	w := &sera.KnownWatcher{Name: "Web2", Addrs: []string{"192.0.2.7", "bad_addr"}}
	h, warn, err := parseHostKeyReport(w, "example.com", khReport(t, "web2", []string{"web2", "web2.example", "*", "Web2.Example.com"}, []string{"10.0.0.2", "192.0.2.7"}, ed, ec, ed))
	if err != nil {
		t.Fatal(err)
	}
	// What the admin gave it (known_watchers, SERA_DOMAIN) and what it
	// says of itself are kept apart; a reported name the admin gave it
	// too is the admin's.
	if h.name != "web2" || !slices.Equal(h.reported, []string{"web2.example", "10.0.0.2"}) || !slices.Equal(h.admin, []string{"192.0.2.7", "web2.example.com"}) || len(h.keys) != 2 {
		t.Errorf("report: %+v", h)
	}
	if len(warn) != 4 || !strings.Contains(strings.Join(warn, "\n"), "bad_addr") {
		t.Errorf("warnings: %q", warn)
	}
	if h, _, err := parseHostKeyReport(w, "", khReport(t, "web2", nil, nil, ed)); err != nil || !slices.Equal(h.admin, []string{"192.0.2.7"}) {
		t.Errorf("without SERA_DOMAIN: %+v, %v", h, err)
	}
	ok := &sera.KnownWatcher{Name: "web2"}
	for name, tc := range map[string]struct {
		w    *sera.KnownWatcher
		out  []byte
		want string
	}{
		"no keys":     {ok, nil, "no host keys"},
		"not json":    {ok, []byte("ssh-ed25519 AAAA\n"), "unreadable"},
		"bad key":     {ok, []byte(`{"type":"ssh-ed25519","key":"ssh-ed25519 AAAA"}`), "reported key"},
		"cert":        {ok, []byte(`{"type":"ssh-ed25519-cert-v01@openssh.com","key":"` + hostkeys.KeyText(keystest.Cert(t, ed)) + `"}`), "certificate"},
		"wrong type":  {ok, []byte(`{"type":"ssh-rsa","key":"` + hostkeys.KeyText(ed) + `"}`), "not ssh-rsa"},
		"two of type": {ok, khReport(t, "web2", nil, nil, ed, keystest.Ed25519(t)), "two ssh-ed25519 keys"},
		"bad name":    {&sera.KnownWatcher{Name: "web_2"}, khReport(t, "web_2", nil, nil, ed), "not a host name"},
	} {
		if _, _, err := parseHostKeyReport(tc.w, "", tc.out); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

// A host's entry carries the names the admin gave it, and what it reports
// only when accepted; a name is one host's only, and the admin's
// assignment (known_watchers, SERA_DOMAIN, watcher names, selected in
// this sync or not) wins over anything a host reports.
func TestBuildSyncSet(t *testing.T) {
	const domain = "example.com"
	k1, k2, k3 := keystest.Ed25519(t), keystest.Ed25519(t), keystest.Ed25519(t)
	all := []*sera.KnownWatcher{
		{Name: "Dup"}, {Name: "dup"},
		{Name: "web1", Addrs: []string{"10.0.0.9", "10.0.0.1"}},
		{Name: "web2"},
		{Name: "web3", Addrs: []string{"10.0.0.5", "web9"}},
		{Name: "web4", Addrs: []string{"10.0.0.5"}},
		{Name: "web5"},
		{Name: "web9", Addrs: []string{"10.0.0.99"}}, // not in this sync
	}
	host := func(i int, key ssh.PublicKey, reported ...string) *syncHost {
		w := all[i]
		name := strings.ToLower(w.Name)
		admin, _ := adminNames(w, name, domain)
		return &syncHost{watcher: w, name: name, admin: admin, reported: reported, keys: []ssh.PublicKey{key}}
	}
	hosts := []*syncHost{
		host(0, k1), host(1, k2),
		// Not accepted: all it says of itself is shown, nothing trusted.
		host(3, k2, "github.com", "web1.example.com", "web2.example", "10.0.0.9", "10.0.0.99", "172.17.0.1"),
		host(2, k1, "172.17.0.1"),
		host(4, k3),
		host(5, k3),
		host(6, k3, "db.example.com", "web3", "web9.example.com", "10.0.0.9", "172.17.0.1"),
	}
	set := buildSyncSet(hosts, all, domain, []string{"web1", "web5"})
	var got []string
	for _, e := range set.entries {
		got = append(got, strings.Join(e.Names(), ","))
	}
	want := []string{
		"web1,web1.example.com,10.0.0.1,10.0.0.9",
		"web2,web2.example.com",
		"web3,web3.example.com",
		"web4,web4.example.com",
		"web5,db.example.com,web5.example.com",
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
	if u := set.untrusted["web2"]; !slices.Equal(u, []string{"github.com", "web1.example.com", "web2.example", "10.0.0.9", "10.0.0.99", "172.17.0.1"}) || len(set.untrusted) != 1 {
		t.Errorf("untrusted %q", set.untrusted)
	}
	if len(set.accepted) != 1 || !slices.Equal(set.accepted["web5"], []string{"db.example.com"}) {
		t.Errorf("accepted %q", set.accepted)
	}
	all2 := strings.Join(set.warnings, "\n")
	for _, w := range []string{
		"172.17.0.1 is reported by web1, web5: accepted for none of them",
		"web5: reports the name web3, which is another watcher's: not accepted",
		"web5: reports 10.0.0.9, which known_watchers gives to web1: not accepted",
		"web5: reports web9.example.com, which known_watchers gives to web9: not accepted",
		"known_watchers and SERA_DOMAIN give 10.0.0.5 to web3, web4: left out of all of them",
		"web3: web9, a name known_watchers or SERA_DOMAIN gives it, is another watcher's name: left out",
		"watchers Dup, dup are all the host name dup: left out",
	} {
		if !strings.Contains(all2, w) {
			t.Errorf("warnings lack %q:\n%s", w, all2)
		}
	}
	if strings.Contains(all2, "web2") {
		t.Errorf("names of a host not accepted are reported as untrusted, not warned about:\n%s", all2)
	}
}

// A host larger than a part's budget still gets its own part.
func TestChunkEntries(t *testing.T) {
	if parts := chunkEntries([]*hostkeys.Host{mustEntry(t, "a", keystest.Ed25519(t)), mustEntry(t, "b", keystest.Ed25519(t))}, 1); len(parts) != 2 {
		t.Errorf("a host larger than the budget still gets its own part: %d", len(parts))
	}
}

// What a watcher answers to 'hostkey list' is the host's word: however it
// is made, it parses or is refused, never panics, and the entry built from
// it carries only the watcher's name and the names the admin gave it;
// what the host reported is kept apart, and trusted only when accepted.
func FuzzParseHostKeyReport(f *testing.F) {
	ed := keystest.Ed25519(f)
	f.Add(khReport(f, "web2", []string{"web2", "github.com"}, []string{"10.0.0.2", "203.0.113.9"}, ed), false)
	f.Add(khReport(f, "web2", []string{"web1", "WEB2.example.com", "*", "|1|x|y"}, []string{"10.0.0.1", "::ffff:1.2.3.4", "fe80::1%eth0"}, ed, keystest.ECDSA(f)), true)
	f.Add([]byte(`{"type":"ssh-ed25519","key":"`+hostkeys.KeyText(ed)+`","names":["a","a"],"addrs":[]}`+"\n{"), false)
	f.Add([]byte("null\n[]\n\"x\""), true)
	const domain = "example.com"
	w := &sera.KnownWatcher{Name: "web2", Addrs: []string{"10.0.0.2", "web2.lan"}}
	all := []*sera.KnownWatcher{{Name: "web1", Addrs: []string{"10.0.0.1"}}, w}
	f.Fuzz(func(t *testing.T, out []byte, accept bool) {
		h, _, err := parseHostKeyReport(w, domain, out)
		if err != nil {
			return
		}
		if len(h.keys) == 0 || h.name != "web2" || !slices.Equal(h.admin, []string{"10.0.0.2", "web2.lan", "web2.example.com"}) {
			t.Fatalf("report %+v", h)
		}
		types := map[string]bool{}
		for _, k := range h.keys {
			if hostkeys.CheckKey(k) != nil || types[k.Type()] {
				t.Fatalf("key %s accepted", k.Type())
			}
			types[k.Type()] = true
		}
		for _, n := range h.reported {
			if c, err := hostkeys.ParseHostName(n); err != nil || c != n || n == h.name || slices.Contains(h.admin, n) {
				t.Fatalf("reported name %q: %v", n, err)
			}
		}
		var acc []string
		if accept {
			acc = []string{"web2"}
		}
		set := buildSyncSet([]*syncHost{h}, all, domain, acc)
		if len(set.entries) != 1 {
			t.Fatalf("%d entries", len(set.entries))
		}
		for _, n := range set.entries[0].Names() {
			switch {
			case n == "web2", slices.Contains(h.admin, n):
			case !accept:
				t.Fatalf("a name the host reported, %q, is trusted without --accept", n)
			case n == "web1" || n == "10.0.0.1" || n == "web1.example.com":
				t.Fatalf("web1's name %q is trusted for web2", n)
			case !slices.Contains(set.accepted["web2"], n):
				t.Fatalf("%q is trusted but not reported as accepted", n)
			}
		}
	})
}
