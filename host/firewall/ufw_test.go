package firewall

import (
	"slices"
	"testing"
)

func TestParseShowAdded(t *testing.T) {
	out := `Added user rules (see 'ufw status' for running firewall):
ufw allow 22/tcp
ufw allow from 10.1.1.1 to any port 22 proto tcp
ufw allow from 10.2.0.0/16 to any port 22 proto udp comment 'office'
ufw allow from 2001:db8::1 to any port 443 proto tcp comment 'sera 0123456789abcdef until 2026-11-23T10:00:20Z'
ufw allow in on eth0 from 10.3.3.3 to any port 22 proto tcp
ufw deny from 10.4.4.4 to any port 22 proto tcp
ufw allow from 10.5.5.5 to any port 22
ufw allow from 10.6.6.6 to 10.0.0.1 port 22 proto tcp
ufw allow from 10.7.7.7 to any port 22 proto tcp comment 'it''s'
`
	got := parseShowAdded([]byte(out))
	want := []Rule{
		{Spec{"10.1.1.1", 22, "tcp"}, ""},
		{Spec{"10.2.0.0/16", 22, "udp"}, "office"},
		{Spec{"2001:db8::1", 443, "tcp"}, "sera 0123456789abcdef until 2026-11-23T10:00:20Z"},
		{Spec{"10.7.7.7", 22, "tcp"}, "it''s"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n%+v\nwant\n%+v", got, want)
	}
	if id := got[2].seraID(); id != "0123456789abcdef" {
		t.Errorf("sera id %q", id)
	}
	if id := got[1].seraID(); id != "" {
		t.Errorf("hand-made rule has sera id %q", id)
	}
}
