package admin

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
)

type keygenOptions struct {
	*cli.Options
	force bool
}

func newKeygenCmd(o *cli.Options) *cobra.Command {
	ko := &keygenOptions{Options: o}
	c := &cobra.Command{
		Use:   "keygen",
		Short: "Create this machine's sera identity (signing and encryption keys)",
		Long: `Create an identity: an Ed25519 signing key and a Curve25519 encryption key.
The private key is written to $SERA_HOME/key (mode 0600); the public key is
printed on stdout as one string, for 'sera clients add' on a watcher or
'sera watchers add' on a client, and its fingerprint on stderr.

As root, or with --system, SERA_HOME is /etc/sera; otherwise ~/.sera.`,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error { return runKeygen(ko) },
	}
	c.Flags().BoolVar(&ko.force, "force", false, "replace an existing key (clients and watchers that trusted it must be updated)")
	return c
}

func runKeygen(o *keygenOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	path := cfg.KeyFile()
	if _, err := os.Lstat(path); err == nil && !o.force {
		return cli.UsageErr("%s already exists; use --force to replace it (everything that trusts the old key must then be updated)", path)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to check %s: %w", path, err)
	}
	r := o.Rand
	if r == nil {
		r = rand.Reader
	}
	id, err := crypto.GenerateIdentity(r)
	if err != nil {
		return err
	}
	if err := safefile.MkdirPrivate(cfg.Home); err != nil {
		return err
	}
	pub := id.Public()
	body := fmt.Sprintf("# sera identity, created %s\n# public key: %s\n# fingerprint: %s\n%s\n",
		o.Time().UTC().Format("2006-01-02T15:04:05Z"), pub, pub.Fingerprint(), id.SecretString())
	if err := safefile.WriteAtomic(path, []byte(body), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(o.Stdout, "%s\n", pub)
	fmt.Fprintf(o.Stderr, "fingerprint %s; private key written to %s\n", pub.Fingerprint(), path)
	return nil
}

func newPubkeyCmd(o *cli.Options) *cobra.Command {
	return &cobra.Command{
		Use:   "pubkey",
		Short: "Print this machine's public key (and its fingerprint on stderr)",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			id, err := cli.LoadIdentity(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(o.Stdout, "%s\n", id.Public())
			fmt.Fprintf(o.Stderr, "fingerprint %s\n", id.Public().Fingerprint())
			return nil
		},
	}
}

func newVersionCmd(o *cli.Options) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print sera's version",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := io.WriteString(o.Stdout, "sera "+o.Version+"\n")
			return err
		},
	}
}
