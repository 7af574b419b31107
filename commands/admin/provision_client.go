package admin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
)

func newClientCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "client",
		Short: "AWS: register this client's IAM user, key and queues (not 'clients')",
	})
	c.AddCommand(newClientRegisterCmd(o), newClientRotateCmd(o))
	return c
}

// fanoutSettings make a client publish a request for a group or --all once
// to the group's topic, which provisioning made, in the account p looked up.
func fanoutSettings(p *sqs.Provisioner) [][2]string {
	return [][2]string{{settings.KeyFanout, "sns"}, {settings.KeyAccount, p.Account.ID}}
}

// clientKeyWriter stores a new key in this client's settings, with the
// transport and fan-out settings that go with it.
func clientKeyWriter(o *cli.Options, cfg *settings.Config, p *sqs.Provisioner) func(context.Context, sqs.AccessKey) error {
	return func(_ context.Context, k sqs.AccessKey) error {
		settings := append([][2]string{
			{settings.KeyTransport, settings.TransportSQS}, {settings.KeyRegion, p.Account.Region}, {settings.KeyPrefix, p.Prefix},
		}, keySettings(k)...)
		settings = append(settings, fanoutSettings(p)...)
		err := safefile.MkdirPrivate(cfg.Home)
		if err == nil {
			err = mergeEnvFile(cfg.EnvFile, settings)
		}
		if err == nil {
			fmt.Fprintf(o.Stdout, "wrote the new access key %s to %s (mode 0600)\n", k.ID, cfg.EnvFile)
			return nil
		}
		fmt.Fprintf(o.Stdout, "# could not write %s; this client's settings, with its new access key (shown only now):\n%s\n",
			cfg.EnvFile, configSetLine(settings))
		return fmt.Errorf("failed to save the new access key (it is printed above): %w", err)
	}
}

func newClientRegisterCmd(o *cli.Options) *cobra.Command {
	var f awsFlags
	var name string
	c := &cobra.Command{
		Use:   "register [--name NAME]",
		Short: "Create this client's IAM user, reply queue and access key",
		Long: `Register this client (the key 'sera keygen' made in SERA_HOME): IAM user
P-c-<fingerprint> in group P-clients, tagged sera-name=NAME with --name; its
reply queue P-c-<fingerprint> (retention longer than a request's lifetime,
server-side encryption); and one access key, written with SERA_TRANSPORT=sqs,
SERA_REGION, SERA_PREFIX, SERA_FANOUT=sns and SERA_ACCOUNT into this client's
settings ($SERA_HOME/env, mode 0600), so that sera then runs with that key,
not the admin's, and sends a request for a group or --all as one SNS publish
to the group's topic. A re-run adds SERA_FANOUT and SERA_ACCOUNT to settings
that lack them.

It makes SERA_REPLY_QUEUES (16) reply queues, P-c-<fingerprint> and
P-c-<fingerprint>-1 on: each sera process of this client running at the
same time takes one of its own.

AWS shows a key's secret only when it is made: a re-run does not make a
second key; 'sera client rotate-key' replaces a lost one.

With --no-iam it makes no IAM user or key (nor needs create-provider-keys'
groups): the reply queues only, and the transport settings without a key,
so sera uses the AWS SDK's own credentials (AWS_PROFILE, an instance
role…); it prints the policy those credentials need.
` + provisionHelp,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			if name != "" {
				if err := sera.CheckName(name); err != nil {
					return cli.UsageErr("invalid --name: %v", err)
				}
			}
			ctx := cmdContext(c)
			p, cfg, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			id, err := cli.LoadIdentity(cfg)
			if err != nil {
				return err
			}
			fp := id.Public().Fingerprint()
			pl, err := p.Client(ctx, fp, name, clientKeyWriter(o, cfg, p))
			if err != nil {
				return provisionErr(err)
			}
			var found []string
			steps := pl.Plan
			if f.noIAM {
				want := append([][2]string{{settings.KeyTransport, settings.TransportSQS}, {settings.KeyRegion, p.Account.Region},
					{settings.KeyPrefix, p.Prefix}}, fanoutSettings(p)...)
				have, err := planEnvSettings(cfg, want, &steps)
				if err != nil {
					return err
				}
				found = append(found, have...)
				if err := runPlan(ctx, o, steps, found, f.dryRun, fmt.Sprintf("nothing to change: client %s is registered", fp)); err != nil {
					return err
				}
				fmt.Fprintf(o.Stdout, "# This client's own AWS credentials need this policy (no more), with its reply queues named:\n%s\n",
					indentJSON(sqs.ClientPolicyFor(p.Account, p.Prefix, fp)))
				return nil
			}
			lacking := false
			if len(pl.Keys) > 0 {
				ids := make([]string, len(pl.Keys))
				for i, k := range pl.Keys {
					ids[i] = k.ID
				}
				if cur := cfg.Lookup(settings.KeyAccessKey); slices.Contains(ids, cur.Value) {
					found = append(found, fmt.Sprintf("access key %s in this client's settings (%s)", cur.Value, cur.Source))
					// A client registered before SNS fan-out lacks its
					// settings; a new key brings them (clientKeyWriter).
					fan, err := planEnvSettings(cfg, fanoutSettings(p), &steps)
					if err != nil {
						return err
					}
					found = append(found, fan...)
				} else {
					lacking = true
				}
			}
			if err := runPlan(ctx, o, steps, found, f.dryRun, fmt.Sprintf("nothing to change: client %s is registered", fp)); err != nil {
				return err
			}
			if lacking {
				fmt.Fprintf(o.Stdout, "note: IAM user %s has access key %s, which this client's settings lack; "+
					"AWS showed its secret only when it was made. Run 'sera client rotate-key' for a new one.\n",
					transport.ClientQueue(p.Prefix, fp), keyList(pl.Keys))
			}
			return nil
		},
	}
	f.add(c)
	f.addNoIAM(c)
	c.Flags().StringVar(&name, "name", "", "a name for this client, tagged on its IAM user (sera-name)")
	return c
}

// planEnvSettings adds a step that writes want to the client's env file
// when the file lacks them, or says they are there.
func planEnvSettings(cfg *settings.Config, want [][2]string, steps *plan.Plan) (found []string, err error) {
	file, err := settings.ReadEnvFile(cfg.EnvFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var kv []string
	same := true
	for _, s := range want {
		kv = append(kv, s[0]+"="+s[1])
		if v, ok := file.Get(s[0]); !ok || v != s[1] {
			same = false
		}
	}
	if same {
		return []string{fmt.Sprintf("%s in %s", strings.Join(kv, " "), cfg.EnvFile)}, nil
	}
	steps.Add(fmt.Sprintf("write %s to %s", strings.Join(kv, " "), cfg.EnvFile), func(context.Context) error {
		if err := safefile.MkdirPrivate(cfg.Home); err != nil {
			return err
		}
		return mergeEnvFile(cfg.EnvFile, want)
	})
	return nil, nil
}

func newClientRotateCmd(o *cli.Options) *cobra.Command {
	var f awsFlags
	var r rotateFlags
	c := &cobra.Command{
		Use:   "rotate-key",
		Short: "Replace this client's access key",
		Long: `Replace this client's access key; the new one is written into its
settings ($SERA_HOME/env, mode 0600).
` + rotateHelp + "\n" + credentialsHelp + " See docs/aws.md.",
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := cmdContext(c)
			p, cfg, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			id, err := cli.LoadIdentity(cfg)
			if err != nil {
				return err
			}
			user := transport.ClientQueue(p.Prefix, id.Public().Fingerprint())
			pl, err := p.RotateKey(ctx, user, sqs.RotateOptions{KeepOld: r.keepOld, Finish: r.finish}, clientKeyWriter(o, cfg, p))
			if err != nil {
				return rotateErr(err, "sera client rotate-key")
			}
			return runPlan(ctx, o, pl.Plan, nil, f.dryRun, "nothing to change: this client has one access key")
		},
	}
	f.add(c)
	r.add(c)
	return c
}

func newPolicyCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "policy",
		Short: "Show the IAM policies sera's AWS keys get",
	})
	var f awsFlags
	var role, account string
	p := &cobra.Command{
		Use:   "print [--role watcher|client]",
		Short: "Print the exact JSON policy documents create-provider-keys puts",
		Long: `Print the inline policies of the IAM groups P-watchers and P-clients as
create-provider-keys puts them, for the account (--account, else STS
GetCallerIdentity with the admin's credentials) and region. With --role,
only that policy, as plain JSON. With --dry-run it makes no AWS call and
shows ACCOUNT_ID where --account is not given.`,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			if role != "" && role != "watcher" && role != "client" {
				return cli.UsageErr("invalid --role %q: watcher or client", role)
			}
			ctx := cmdContext(c)
			p, _, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			switch {
			case account != "":
				p.Account.ID = account
			case f.dryRun:
				p.Account.ID = "ACCOUNT_ID"
			}
			a, err := p.Lookup(ctx)
			if err != nil {
				return err
			}
			type doc struct{ group, name, json string }
			docs := []doc{
				{sqs.WatchersGroup(p.Prefix), sqs.WatcherPolicyName(p.Prefix), sqs.WatcherPolicy(a, p.Prefix).Indent()},
				{sqs.ClientsGroup(p.Prefix), sqs.ClientPolicyName(p.Prefix), sqs.ClientPolicy(a, p.Prefix).Indent()},
			}
			switch role {
			case "watcher":
				docs = docs[:1]
			case "client":
				docs = docs[1:]
			}
			for _, d := range docs {
				if role == "" {
					fmt.Fprintf(o.Stdout, "# IAM group %s, inline policy %s\n", d.group, d.name)
				}
				fmt.Fprintln(o.Stdout, d.json)
			}
			return nil
		},
	}
	f.add(p)
	p.Flags().Lookup("dry-run").Usage = "make no AWS call (the account ID is --account or ACCOUNT_ID)"
	p.Flags().StringVar(&role, "role", "", "watcher or client (default both)")
	p.Flags().StringVar(&account, "account", "", "AWS account ID (default: ask STS)")
	c.AddCommand(p)
	return c
}
