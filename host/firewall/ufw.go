package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/sera-dev/sera/host"
)

// ErrNoUFW and ErrUFWInactive are the clear errors for a host without a
// usable ufw.
var (
	ErrNoUFW       = host.Missing("ufw is not installed on this host (apt-get install ufw)")
	ErrUFWInactive = errors.New("ufw is inactive on this host " +
		"(sera never enables ufw: with its default deny policy that could lock every admin out; " +
		"allow SSH, then run 'ufw enable' yourself)")
)

// Rule is one rule of "ufw show added" that sera could have added.
type Rule struct {
	spec    Spec
	comment string
}

// seraID is the opening id in the rule's comment, "" if the comment is
// not sera's.
func (r *Rule) seraID() string {
	id, _, _ := parseSeraComment(r.comment)
	return id
}

func findRule(rules []Rule, s Spec) *Rule {
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
func parseShowAdded(out []byte) []Rule {
	var rules []Rule
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
		if err != nil || perr != nil || CheckPort(port) != nil || CheckProto(f[9]) != nil {
			continue
		}
		rules = append(rules, Rule{spec: Spec{Source: src, Port: port, Proto: f[9]}, comment: comment})
	}
	return rules
}

// canonicalUFWSource is ParseSource for what ufw prints, without sera's
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
		return ErrNoUFW
	}
	return err
}

// Active runs "ufw status".
func (fw *Firewall) Active(ctx context.Context) (bool, error) {
	out, err := fw.Sys.Exec.Run(ctx, "ufw", "status")
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
	return false, fmt.Errorf("unexpected output of 'ufw status': %q", first)
}

// Rules runs "ufw show added": the rules configured, active or not.
func (fw *Firewall) Rules(ctx context.Context) ([]Rule, error) {
	out, err := fw.Sys.Exec.Run(ctx, "ufw", "show", "added")
	if err != nil {
		return nil, ufwErr(err)
	}
	return parseShowAdded(out), nil
}

// delete deletes sera's rule for spec if its comment is still comment;
// ufw deletes nothing otherwise, and that is an error.
func (fw *Firewall) delete(ctx context.Context, s Spec, comment string) error {
	out, err := fw.Sys.Exec.Run(ctx, s.argv(true, comment)...)
	if err != nil {
		return err
	}
	if bytes.Contains(out, []byte("non-existent")) {
		return fmt.Errorf("ufw has no rule %s with comment %q any more (changed since sera read it); left as it is", s, comment)
	}
	return nil
}
