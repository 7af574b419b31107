package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/crypto"
)

func (t *hostTree) clientsCmd() *cobra.Command {
	c := group(&cobra.Command{
		Use:   "clients",
		Short: "Manage the clients a watcher trusts (known_clients)",
		Long: `Manage the clients a watcher trusts, in its known_clients file.

Without --to these commands change this machine's own known_clients; with
--to HOST they run on that watcher (the client needs the "clients" command
allowed there). A running watcher picks up changes without a restart.`,
	})
	c.AddCommand(t.clientsAddCmd(), t.clientsRemoveCmd(), t.clientsListCmd())
	return c
}

func (t *hostTree) clientsAddCmd() *cobra.Command {
	var name, allow string
	c := &cobra.Command{
		Use:   "add PUBKEY --name NAME [--allow CMD[,CMD…]|'*']",
		Short: "Trust a client key, allowing it to run some commands",
		Long: `Trust a client key. The client may run the commands listed by --allow
(comma-separated command names, "user" for all of its subcommands or
"user.add" for one, '*' for all); with no --allow it may run nothing but
ping. Adding a key that is already trusted updates its allow list.`,
		Example: `  sera clients add sera1… --name alice --allow ping,user,key
  sera clients add sera1… --name ops --allow '*'`,
		Args: usageArgs(cobra.ExactArgs(1)),
		PreRunE: func(c *cobra.Command, args []string) error {
			if _, err := crypto.ParsePublicKey(args[0]); err != nil {
				return usageErr("%v", err)
			}
			if name == "" {
				return usageErr("--name is required: a name for the client, shown in the audit log")
			}
			if err := sera.CheckName(name); err != nil {
				return usageErr("invalid --name: %v", err)
			}
			return checkAllow(allow)
		},
	}
	c.Flags().StringVar(&name, "name", "", "a name for the client, shown in the audit log (required)")
	c.Flags().StringVar(&allow, "allow", "", "commands the client may run, comma-separated, or '*' for all (default: ping only)")
	return t.leaf(c, true, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		key, _ := crypto.ParsePublicKey(args[0])
		want := sera.ParseAllow(allow)
		return updateKnownClients(h.KnownClients, func(kc *sera.KnownClients) (string, error) {
			if other := kc.ByName(name); other != nil && !other.Key.Equal(key) {
				return "", fmt.Errorf("the name %s is already used by another key (%s); remove it first", name, other.Key.Fingerprint())
			}
			if cur := kc.ByKey(key); cur != nil {
				if cur.Name == name && slices.Equal(cur.Allow, want) {
					return fmt.Sprintf("client %s (%s) already present, allow %s\n", name, key.Fingerprint(), allowString(want)), nil
				}
				cur.Name, cur.Allow = name, want
				return fmt.Sprintf("client %s (%s) updated, allow %s\n", name, key.Fingerprint(), allowString(want)), nil
			}
			kc.Clients = append(kc.Clients, &sera.KnownClient{Key: key, Name: name, Allow: want})
			return fmt.Sprintf("client %s (%s) added, allow %s\n", name, key.Fingerprint(), allowString(want)), nil
		}, out)
	})
}

func (t *hostTree) clientsRemoveCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "remove NAME|PUBKEY|FINGERPRINT",
		Short: "Stop trusting a client",
		Args:  usageArgs(cobra.ExactArgs(1)),
	}
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
			kc.Clients = slices.Delete(kc.Clients, i, i+1)
			return fmt.Sprintf("client %s (%s) removed\n", gone.Name, gone.Key.Fingerprint()), nil
		}, out)
	})
}

func (t *hostTree) clientsListCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List trusted clients",
		Args:  usageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per client")
	return t.leaf(c, true, func(ctx context.Context, h *Host, out, errOut io.Writer, args []string) error {
		kc, err := sera.ReadKnownClients(h.KnownClients)
		if err != nil {
			return err
		}
		for _, cl := range kc.Clients {
			if asJSON {
				json.NewEncoder(out).Encode(map[string]any{
					"name": cl.Name, "fingerprint": cl.Key.Fingerprint(), "key": cl.Key.String(),
					"allow": strings.Split(allowString(cl.Allow), ","),
				})
				continue
			}
			fmt.Fprintf(out, "%-16s %s  %s\n", cl.Name, cl.Key.Fingerprint(), allowString(cl.Allow))
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
// offer, so a typo is an error instead of a silent denial.
func checkAllow(s string) error {
	known := HostCommands()
	for _, a := range sera.ParseAllow(s) {
		if a == sera.AllowAll {
			continue
		}
		if !slices.Contains(known, a) {
			return usageErr("invalid --allow: %q is not a host command (one of: %s, or '*')",
				strings.ReplaceAll(a, " ", "."), strings.Join(topLevel(known), ", "))
		}
	}
	return nil
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
func updateKnownClients(path string, change func(*sera.KnownClients) (string, error), out io.Writer) error {
	return updateFile(path, sera.ReadKnownClients, change, out)
}

// updateFile applies change to a trust file under a lock, writes it back
// atomically (0600) only if it changed, and prints change's message: two
// sera processes cannot lose each other's update, and a no-op writes
// nothing.
func updateFile[T interface{ Bytes() []byte }](path string, read func(string) (T, error), change func(T) (string, error), out io.Writer) error {
	if err := sera.MkdirPrivate(filepath.Dir(path)); err != nil {
		return err
	}
	unlock, err := sera.LockFile(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	v, err := read(path)
	if err != nil {
		return err
	}
	before := v.Bytes()
	msg, err := change(v)
	if err != nil {
		return err
	}
	if after := v.Bytes(); string(after) != string(before) {
		if err := sera.WriteFileAtomic(path, after, 0o600); err != nil {
			return err
		}
	}
	_, err = io.WriteString(out, msg)
	return err
}
