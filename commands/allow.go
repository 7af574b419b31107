package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/host/firewall"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/settings"
)

// 'sera allow' and 'sera disallow': the wiring of package firewall, which
// holds the rules, their record and their expiry.

const (
	// ipFetchTimeout bounds the whole look-up of the client's address.
	ipFetchTimeout = 10 * time.Second
	// maxIPAnswer is the longest answer accepted from SERA_IP_URL.
	maxIPAnswer = 256
)

// inputErr marks a firewall refusal of the caller's input as a usage
// error that changed nothing.
func inputErr(err error) error { return cli.AsUsage(plan.Unchanged(err)) }

// parseSource is firewall.ParseSource for an argument.
func parseSource(s string) (string, error) {
	src, err := firewall.ParseSource(s)
	return src, inputErr(err)
}

func checkPort(port int) error      { return inputErr(firewall.CheckPort(port)) }
func checkProto(proto string) error { return inputErr(firewall.CheckProto(proto)) }

// firewallOf is the openings of h.
func firewallOf(h *Host) *firewall.Firewall { return &firewall.Firewall{Sys: h.Sys} }

// allowLimits are the watcher's SERA_ALLOW_DEFAULT and SERA_ALLOW_MAX; a
// default longer than the maximum is cut to it.
func (h *Host) allowLimits() (def, max time.Duration) {
	def, max = settings.DefaultAllowFor, settings.DefaultAllowMax
	if h != nil && h.Config != nil {
		if d := h.Config.Duration(settings.KeyAllowDefault); d > 0 {
			def = d
		}
		if d := h.Config.Duration(settings.KeyAllowMax); d > 0 {
			max = d
		}
	}
	return min(def, max), max
}

// callerName names the client of a remote call, "local" otherwise.
func callerName(who *sera.KnownClient) string {
	if who != nil {
		return who.Name
	}
	return "local"
}

// Housekeeper returns the watcher's housekeeping of h's firewall: it
// closes the openings that have expired, and at its first run (the
// watcher's start) also sera's rules whose record was lost.
func Housekeeper(h *Host, log *slog.Logger) func(ctx context.Context) {
	return firewallOf(h).Housekeeper(log)
}

// listOpenings prints allow --list.
func listOpenings(ctx context.Context, h *Host, out io.Writer, asJSON bool) error {
	infos, err := firewallOf(h).Openings(ctx)
	if infos == nil {
		if err == nil && !asJSON {
			fmt.Fprintln(out, "no open rules")
		}
		return err
	}
	now := h.Sys.Now()
	if !asJSON {
		fmt.Fprintf(out, "%-20s %-9s %-21s %-9s %-9s %-10s %s\n", "SOURCE", "PORT", "UNTIL", "LEFT", "RULE", "BY", "ID")
	}
	for _, info := range infos {
		if asJSON {
			json.NewEncoder(out).Encode(info)
			continue
		}
		fmt.Fprintf(out, "%-20s %-9s %-21s %-9s %-9s %-10s %s\n", info.Source, fmt.Sprintf("%d/%s", info.Port, info.Proto),
			info.Expires.UTC().Format(time.RFC3339), firewall.FormatLeft(info.Expires.Sub(now)), info.Rule, info.By, info.ID)
	}
	return err
}

// fetchPublicAddr asks url (SERA_IP_URL) for this machine's public
// address: an HTTPS GET whose whole answer, trimmed, is one address.
// Redirects must stay on HTTPS. rt is the HTTP transport (this machine's:
// Options.Host).
func fetchPublicAddr(ctx context.Context, rt http.RoundTripper, url string) (string, error) {
	if url == "" {
		return "", fmt.Errorf("%s is empty", settings.KeyIPURL)
	}
	if err := settings.Check(settings.KeyIPURL, url); err != nil {
		return "", err
	}
	client := &http.Client{
		Transport: rt,
		Timeout:   ipFetchTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("refusing a redirect to %s: not https", req.URL.Redacted())
			}
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(ctx, ipFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "sera")
	req.Header.Set("Accept", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("it answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIPAnswer+1))
	if err != nil {
		return "", err
	}
	if len(body) > maxIPAnswer {
		return "", errors.New("its answer is too long to be an address")
	}
	text := strings.TrimSpace(string(body))
	a, err := netip.ParseAddr(text)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("its answer %q is not an IP address", text)
	}
	src, err := firewall.ParseSource(a.Unmap().String())
	if err != nil {
		return "", fmt.Errorf("its answer %q: %w", text, err)
	}
	return src, nil
}

// prepareSource is the client's half of allow and disallow: the command
// sent always names the address. Without one (and without --ip) it is
// looked up at SERA_IP_URL, and said which.
func (t *hostTree) prepareSource(ip *string, list *bool) prepareFunc {
	return func(c *cobra.Command, args []string) ([]string, error) {
		if list != nil && *list {
			return args, nil
		}
		if c.Flags().Changed("ip") {
			src, err := parseSource(*ip)
			if err != nil {
				return nil, err
			}
			return []string{src}, nil
		}
		if len(args) > 0 {
			return args, nil
		}
		cfg, err := t.opts.Config()
		if err != nil {
			return nil, err
		}
		url := cfg.Get(settings.KeyIPURL)
		src, err := fetchPublicAddr(c.Context(), t.opts.HostSystem(cfg).HTTP.Transport, url)
		if err != nil {
			return nil, plan.Unchanged(fmt.Errorf("failed to find your public address at %s (%s): %w; give the address instead", url, settings.KeyIPURL, err))
		}
		fmt.Fprintf(c.ErrOrStderr(), "using your address %s (from %s)\n", src, url)
		return []string{src}, nil
	}
}

// sourceArgs is the positional check of allow and disallow: at most one
// address; on the watcher exactly one, since the client resolves "no
// address" before it sends.
func (t *hostTree) sourceArgs(list *bool) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if list != nil && *list {
			if len(args) > 0 {
				return cli.UsageErr("--list takes no address (see '%s --help')", c.CommandPath())
			}
			return nil
		}
		if len(args) > 1 {
			return cli.UsageErr("give one address, not %d (see '%s --help')", len(args), c.CommandPath())
		}
		if len(args) == 0 && t.host != nil {
			return cli.UsageErr("no address: the client sends the address to open the port to")
		}
		return nil
	}
}

// checkSourceFlags checks the address (argument or --ip) of allow and
// disallow, and --port and --proto if checkPortProto.
func checkSourceFlags(c *cobra.Command, args []string, port int, proto string, checkPortProto bool) error {
	if c.Flags().Changed("ip") {
		if len(args) > 0 {
			return cli.UsageErr("give the address as an argument or with --ip, not both")
		}
		ip, _ := c.Flags().GetString("ip")
		if _, err := parseSource(ip); err != nil {
			return err
		}
	}
	if len(args) == 1 {
		if _, err := parseSource(args[0]); err != nil {
			return err
		}
	}
	if !checkPortProto {
		return nil
	}
	if err := checkPort(port); err != nil {
		return err
	}
	return checkProto(proto)
}

func (t *hostTree) allowCmd() *cobra.Command {
	var (
		port          int
		proto, ip     string
		lifetime      time.Duration
		dryRun, list  bool
		asJSON        bool
		defFor, maxFr = t.host.allowLimits()
	)
	c := &cobra.Command{
		Use:   "allow [IP|CIDR] [--port 22] [--proto tcp] [--for 1h]",
		Short: "Open a port in ufw to one address, for a while",
		Long: `Open a port in the host's ufw firewall to one address (or a network of at
most /16 for IPv4, /48 for IPv6), for a while: one rule
'ufw allow from SRC to any port PORT proto PROTO' with the comment
'sera ID until TIME'. The watcher removes it when it expires, within a
minute, also if it was stopped or restarted in between.

Without an address, sera finds your public address with an HTTPS request to
SERA_IP_URL (default ` + settings.DefaultIPURL + `) and says which it used.
0.0.0.0/0, ::/0, "any" and wider networks are refused.

--for defaults to the watcher's SERA_ALLOW_DEFAULT (1h) and may not exceed
its SERA_ALLOW_MAX (24h). Running allow again for the same address, port and
protocol extends the opening (never shortens it) instead of adding a rule.
If ufw already has an identical rule that sera did not add, sera records
the opening but never changes or deletes that rule. Close an opening early
with 'sera disallow'; list them with --list.

If ufw is inactive, allow says so and changes nothing: sera never enables
ufw itself, because enabling it with a default deny policy can lock every
admin out of the host. Allow SSH and enable ufw yourself.`,
		Example: `  sera allow --to web1                      # your public address, port 22/tcp, 1h
  sera allow 203.0.113.7 --for 20m --to web1
  sera allow 2001:db8:7::/64 --port 443 --to 'web*'
  sera allow --list --to web1`,
		Args: t.sourceArgs(&list),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if list {
			for _, f := range []string{"for", "port", "proto", "dry-run", "ip"} {
				if c.Flags().Changed(f) {
					return cli.UsageErr("--list shows the openings; it takes no --%s", f)
				}
			}
			return nil
		}
		if asJSON {
			return cli.UsageErr("--json goes with --list")
		}
		if err := checkSourceFlags(c, args, port, proto, true); err != nil {
			return err
		}
		if c.Flags().Changed("for") {
			limit, what := settings.MaxAllowLifetime, "the longest opening sera allows"
			if t.host != nil {
				_, limit = t.host.allowLimits()
				what = "this watcher's " + settings.KeyAllowMax
			}
			if lifetime <= 0 {
				return inputErr(fmt.Errorf("invalid --for %s: it must be positive", firewall.FormatDuration(lifetime)))
			}
			if lifetime > limit {
				return inputErr(fmt.Errorf("refusing --for %s: longer than %s (%s)", firewall.FormatDuration(lifetime), what, firewall.FormatDuration(limit)))
			}
		}
		return nil
	}
	c.Flags().IntVar(&port, "port", 22, "the port to open")
	c.Flags().StringVar(&proto, "proto", "tcp", "tcp or udp")
	c.Flags().DurationVar(&lifetime, "for", 0, fmt.Sprintf("how long it stays open (default: the watcher's %s, %s; at most its %s, %s)",
		settings.KeyAllowDefault, firewall.FormatDuration(defFor), settings.KeyAllowMax, firewall.FormatDuration(maxFr)))
	c.Flags().BoolVar(&list, "list", false, "list the openings with the time they have left")
	c.Flags().BoolVar(&asJSON, "json", false, "with --list: one JSON object per opening")
	cli.AddDryRun(c, &dryRun)
	if t.host == nil {
		c.Flags().StringVar(&ip, "ip", "", "the address to open the port to (instead of the argument, or of looking it up)")
		_ = c.Flags().SetAnnotation("ip", cli.AnnClientOnly, []string{"true"})
	}
	return t.leafPrepared(c, false, t.prepareSource(&ip, &list), func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		if list {
			return listOpenings(ctx, h, out, asJSON)
		}
		src, err := parseSource(args[0])
		if err != nil {
			return err
		}
		def, limit := h.allowLimits()
		d := def
		if c.Flags().Changed("for") {
			d = lifetime
		}
		if d > limit {
			return inputErr(fmt.Errorf("refusing --for %s: longer than this host's %s (%s)", firewall.FormatDuration(d), settings.KeyAllowMax, firewall.FormatDuration(limit)))
		}
		s := firewall.Spec{Source: src, Port: port, Proto: proto}
		return openPort(ctx, firewallOf(h), out, dryRun, s, d, callerName(t.caller))
	})
}

// openPort opens s for d, under the openings' lock, if ufw is active.
func openPort(ctx context.Context, fw *firewall.Firewall, out io.Writer, dryRun bool, s firewall.Spec, d time.Duration, by string) error {
	return fw.WithState(func(st *firewall.State) error {
		return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
			active, err := fw.Active(ctx)
			if err != nil {
				return plan.Plan{}, "", err
			}
			if !active {
				return plan.Plan{}, "", firewall.ErrUFWInactive
			}
			rules, err := fw.Rules(ctx)
			if err != nil {
				return plan.Plan{}, "", err
			}
			p, noChange := fw.PlanAllow(st, rules, s, d, by)
			return p, noChange, nil
		})
	})
}

func (t *hostTree) disallowCmd() *cobra.Command {
	var (
		port      int
		proto, ip string
		dryRun    bool
	)
	c := &cobra.Command{
		Use:   "disallow [IP|CIDR] [--port N] [--proto tcp|udp]",
		Short: "Close the openings 'sera allow' made for an address, now",
		Long: `Close the openings 'sera allow' made for an address before they expire:
sera's ufw rule is deleted (only if ufw still has it with sera's comment)
and the record goes. Without --port and --proto, every opening for that
address closes. A rule sera did not add is never deleted.

Without an address, sera looks up your public address as 'sera allow'
does.`,
		Example: `  sera disallow --to web1
  sera disallow 203.0.113.7 --port 443 --to web1`,
		Args: t.sourceArgs(nil),
	}
	c.PreRunE = func(c *cobra.Command, args []string) error {
		if err := checkSourceFlags(c, args, port, proto, false); err != nil {
			return err
		}
		if c.Flags().Changed("port") {
			if err := checkPort(port); err != nil {
				return err
			}
		}
		if c.Flags().Changed("proto") {
			return checkProto(proto)
		}
		return nil
	}
	c.Flags().IntVar(&port, "port", 0, "close only the openings of this port (default: every port)")
	c.Flags().StringVar(&proto, "proto", "", "close only the openings of this protocol, tcp or udp (default: both)")
	cli.AddDryRun(c, &dryRun)
	if t.host == nil {
		c.Flags().StringVar(&ip, "ip", "", "the address to close the openings of (instead of the argument, or of looking it up)")
		_ = c.Flags().SetAnnotation("ip", cli.AnnClientOnly, []string{"true"})
	}
	return t.leafPrepared(c, false, t.prepareSource(&ip, nil), func(ctx context.Context, h *Host, out, _ io.Writer, args []string) error {
		src, err := parseSource(args[0])
		if err != nil {
			return err
		}
		return runDisallow(ctx, firewallOf(h), out, dryRun, src, port, proto)
	})
}

// runDisallow closes the openings from src (on port/proto if given).
func runDisallow(ctx context.Context, fw *firewall.Firewall, out io.Writer, dryRun bool, src string, port int, proto string) error {
	return fw.WithState(func(st *firewall.State) error {
		return plan.Build(ctx, out, dryRun, func() (plan.Plan, string, error) {
			rules, err := fw.Rules(ctx)
			if err != nil {
				return plan.Plan{}, "", err
			}
			p, noChange := fw.PlanDisallow(st, rules, src, port, proto)
			return p, noChange, nil
		})
	})
}
