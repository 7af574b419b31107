package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/plan"
)

func (t *hostTree) clientsCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "clients",
		Short: "Manage the clients a watcher trusts, known_clients (not 'client')",
		Long: `Manage the clients a watcher trusts, in its known_clients file.

Without --to these commands change this machine's own known_clients; with
--to HOST they run on that watcher (the client needs the "clients" command
allowed there). A running watcher picks up changes without a restart.`,
	})
	c.AddCommand(t.clientsAddCmd(), t.clientsRemoveCmd(), t.clientsListCmd())
	return c
}

func (t *hostTree) clientsAddCmd() *cobra.Command {
	var name, allow, account string
	var dryRun bool
	c := &cobra.Command{
		Use:   "add PUBKEY --name NAME [--allow GRANT[,GRANT…]|'*'] [--account USER]",
		Short: "Trust a client key, allowing it to run some commands",
		Long: `Trust a client key. The client may run what --allow grants; with no
--allow it may run nothing but ping. Adding a key that is already trusted
updates its grants. A grant is:

  user, key, group, sudo, …   a command with all its subcommands
  user.add, group.members.add one subcommand
  key(alice|bob)              only on these accounts (names or globs:
  user(ext-*)                 key(dev-*)); user and key take accounts,
  group(devs), sudo(devs)     group and sudo take groups,
  allow(22|443|8000-8099)     allow and disallow take ports
  self                        self-service: the key commands on the
                              account given by --account, nothing else
  '*'                         everything

Root-equivalent grants — '*' and any grant on sudo.grant — make the client
root on the host; clients add says so when it gives one. A grant on
accounts cannot reach an account that can sudo (nor put anyone into a
group that carries sudo) without the sudo.grant grant as well.

Run on a watcher (--to), clients add, update and remove work only within
the caller's own grants: a client may give others only what it may do
itself, '*' only if it has '*', and may not change or remove a client that
holds more than it does. See docs/security.md.`,
		Example: `  sera clients add sera1… --name alice --allow '*' --local
  sera clients add sera1… --name helpdesk --allow 'user(ext-*),key(ext-*)' --to web1
  sera clients add sera1… --name bob --account bob --allow self --all`,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
		PreRunE: func(c *cobra.Command, args []string) error {
			if _, err := crypto.ParsePublicKey(args[0]); err != nil {
				return cli.UsageErr("%v", err)
			}
			if name == "" {
				return cli.UsageErr("--name is required: a name for the client, shown in the audit log")
			}
			if err := sera.CheckName(name); err != nil {
				return cli.UsageErr("invalid --name: %v", err)
			}
			if account != "" {
				if err := checkAccountName("user", account); err != nil {
					return err
				}
			}
			want, err := checkAllow(allow)
			if err != nil {
				return err
			}
			if slices.Contains(want, sera.SelfGrant) && account == "" {
				return cli.UsageErr("--allow self needs --account USER: the account whose keys the client may manage")
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "a name for the client, shown in the audit log (required)")
	c.Flags().StringVar(&allow, "allow", "", "grants, comma-separated (see above), or '*' for all (default: ping only)")
	c.Flags().StringVar(&account, "account", "", "the Unix account this client belongs to, for --allow self")
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, true, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		key, _ := crypto.ParsePublicKey(args[0])
		want, _ := sera.ParseAllow(allow)
		by := t.caller
		if err := mayDelegate(by, want, account); err != nil {
			return plan.Unchanged(err)
		}
		warn := ""
		err := updateKnownClients(h.KnownClients, func(kc *sera.KnownClients) (string, error) {
			if other := kc.ByName(name); other != nil && !other.Key.Equal(key) {
				return "", fmt.Errorf("the name %s is already used by another key (%s); remove it first", name, other.Key.Fingerprint())
			}
			if slices.ContainsFunc(want, rootEquivalent) {
				warn = fmt.Sprintf("sera: warning: client %s is root-equivalent on this host (%s)\n", name, strings.Join(rootGrants(want), ","))
			}
			added := h.Sys.Now().UTC().Truncate(time.Second)
			if cur := kc.ByKey(key); cur != nil {
				if cur.Name == name && slices.Equal(cur.Allow, want) && cur.Account == account {
					return fmt.Sprintf("client %s (%s) already present, allow %s\n", name, key.Fingerprint(), allowString(want)), nil
				}
				if err := mayDelegate(by, cur.Allow, cur.Account); err != nil {
					return "", fmt.Errorf("client %s holds grants the caller lacks: %w", cur.Name, err)
				}
				cur.Name, cur.Allow, cur.Account, cur.Added = name, want, account, added
				return fmt.Sprintf("client %s (%s) updated, allow %s\n", name, key.Fingerprint(), allowString(want)), nil
			}
			kc.Clients = append(kc.Clients, &sera.KnownClient{Key: key, Name: name, Allow: want, Account: account, Added: added})
			return fmt.Sprintf("client %s (%s) added, allow %s\n", name, key.Fingerprint(), allowString(want)), nil
		}, out, dryRun)
		if err == nil {
			io.WriteString(errOut, warn)
		}
		return err
	})
}

// rootGrants are the root-equivalent grants of allow, as --allow spells
// them.
func rootGrants(allow []string) []string {
	var out []string
	for _, a := range allow {
		if rootEquivalent(a) {
			out = append(out, sera.FormatAllow([]string{a}))
		}
	}
	return out
}

func (t *hostTree) clientsRemoveCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "remove NAME|PUBKEY|FINGERPRINT",
		Short: "Stop trusting a client",
		Long: `Stop trusting a client. Run on a watcher (--to), the caller may remove only
clients whose grants are all within its own.`,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
	}
	var dryRun bool
	cli.AddDryRun(c, &dryRun)
	return t.leaf(c, true, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		sel := args[0]
		return updateKnownClients(h.KnownClients, func(kc *sera.KnownClients) (string, error) {
			i := slices.IndexFunc(kc.Clients, func(c *sera.KnownClient) bool {
				return c.Name == sel || c.Key.String() == sel || c.Key.Fingerprint() == sel
			})
			if i < 0 {
				return fmt.Sprintf("client %s already absent\n", sel), nil
			}
			gone := kc.Clients[i]
			if err := mayDelegate(t.caller, gone.Allow, gone.Account); err != nil {
				return "", fmt.Errorf("client %s holds grants the caller lacks: %w", gone.Name, err)
			}
			kc.Clients = slices.Delete(kc.Clients, i, i+1)
			return fmt.Sprintf("client %s (%s) removed\n", gone.Name, gone.Key.Fingerprint()), nil
		}, out, dryRun)
	})
}

func (t *hostTree) clientsListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List trusted clients, marking the root-equivalent ones",
		Args:  cli.UsageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per client")
	return t.leaf(c, true, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		kc, err := sera.ReadKnownClients(h.KnownClients)
		if err != nil {
			return err
		}
		for _, cl := range kc.Clients {
			root := slices.ContainsFunc(cl.Allow, rootEquivalent)
			if asJSON {
				obj := map[string]any{
					"name": cl.Name, "fingerprint": cl.Key.Fingerprint(), "key": cl.Key.String(),
					"allow": strings.Split(allowString(cl.Allow), ","), "root_equivalent": root,
				}
				if cl.Account != "" {
					obj["account"] = cl.Account
				}
				if !cl.Added.IsZero() {
					obj["added"] = cl.Added
				}
				json.NewEncoder(out).Encode(obj)
				continue
			}
			line := fmt.Sprintf("%-16s %s  %s", cl.Name, cl.Key.Fingerprint(), allowString(cl.Allow))
			if cl.Account != "" {
				line += "  account=" + cl.Account
			}
			if root {
				line += "  (root-equivalent)"
			}
			fmt.Fprintln(out, line)
		}
		return nil
	})
}

// allowString shows what a client may run, ping included.
func allowString(allow []string) string {
	if slices.Contains(allow, sera.AllowAll) {
		return sera.AllowAll
	}
	return sera.FormatAllow(append([]string{sera.PingCommand}, allow...))
}

// checkAllow validates an --allow list against the commands watchers
// offer, so a typo is an error instead of a silent denial, and returns it
// in normal form.
func checkAllow(s string) ([]string, error) {
	allow, err := sera.ParseAllow(s)
	if err != nil {
		return nil, cli.UsageErr("invalid --allow: %v", err)
	}
	known := HostCommands()
	for _, a := range allow {
		g, _ := sera.ParseGrant(strings.ReplaceAll(a, " ", "."))
		if g.Path == sera.AllowAll || g.Path == sera.SelfGrant {
			continue
		}
		if !slices.Contains(known, g.Path) {
			return nil, cli.UsageErr("invalid --allow: %q is not a host command (one of: %s, self, or '*')",
				strings.ReplaceAll(g.Path, " ", "."), strings.Join(topLevel(known), ", "))
		}
		if err := checkGrantScopes(g); err != nil {
			return nil, err
		}
	}
	return allow, nil
}

func topLevel(paths []string) []string {
	var out []string
	for _, p := range paths {
		if !strings.Contains(p, " ") {
			out = append(out, p)
		}
	}
	return out
}

// updateKnownClients applies change to the known_clients file at path.
func updateKnownClients(path string, change func(*sera.KnownClients) (string, error), out io.Writer, dryRun bool) error {
	return cli.UpdateFileDry(path, sera.ReadKnownClients, change, out, dryRun)
}
