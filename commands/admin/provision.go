package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/plan"
	"github.com/sera-dev/sera/settings"
	"github.com/sera-dev/sera/transport"
	"github.com/sera-dev/sera/transport/sqs"
)

// The AWS provisioning commands. They run with an admin's credentials from
// the AWS SDK's default chain (or --profile), never with SERA_ACCESS_KEY,
// which is a watcher's or client's own, least-privileged key. Each reads
// the account first and builds a plan: --dry-run prints it; a run applies
// it and says what it found unchanged; a re-run that finds everything in
// place changes nothing.

const credentialsHelp = `
Run it with an AWS admin's credentials: the SDK's default chain
(AWS_ACCESS_KEY_ID…, AWS_PROFILE, ~/.aws, an instance role) or --profile.
SERA_ACCESS_KEY and SERA_SECRET_KEY are never used here. The region is
--region, else SERA_REGION, else the SDK's (AWS_REGION, the profile's).

It reads the account first and prints every change as the exact API call
with its parameters; --dry-run prints them and changes nothing (it still
reads).`

const provisionHelp = credentialsHelp + ` A re-run changes nothing and says so; after a failure, a
re-run finishes the job. See docs/aws.md.`

// awsFlags are the flags every provisioning command shares.
type awsFlags struct {
	prefix, region, profile string
	dryRun                  bool
	// noIAM and account: see addNoIAM.
	noIAM   bool
	account string
}

// addNoIAM adds --no-iam and --account, for the commands that can set up
// queues only, for hosts whose credentials sera does not make.
func (f *awsFlags) addNoIAM(c *cobra.Command) {
	c.Flags().BoolVar(&f.noIAM, "no-iam", false, "make the queues, topics and subscriptions only: no IAM group, user, policy or access key (for an instance role or keys your organisation issues); print the policy those credentials need (see docs/aws.md)")
	c.Flags().StringVar(&f.account, "account", "", "AWS account ID, for the ARNs (default SERA_ACCOUNT, else STS GetCallerIdentity)")
}

func (f *awsFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.prefix, "prefix", "", "queue, topic and IAM name prefix (default SERA_PREFIX, sera)")
	c.Flags().StringVar(&f.region, "region", "", "AWS region (default SERA_REGION, else the AWS SDK's)")
	c.Flags().StringVar(&f.profile, "profile", "", "AWS shared config profile with admin credentials")
	cli.AddDryRun(c, &f.dryRun)
	c.Flags().Lookup("dry-run").Usage = "print the AWS calls it would make, with the policy JSON, and make none (it still reads)"
}

// setup resolves the prefix and region and returns the provisioner.
func (f *awsFlags) setup(ctx context.Context, o *cli.Options) (*sqs.Provisioner, *settings.Config, error) {
	cfg, err := o.Config()
	if err != nil {
		return nil, nil, err
	}
	prefix := f.prefix
	if prefix == "" {
		prefix = cfg.Get(settings.KeyPrefix)
	}
	if err := settings.Check(settings.KeyPrefix, prefix); err != nil {
		return nil, nil, cli.UsageErr("invalid --prefix: %v", err)
	}
	region := f.region
	if region == "" {
		region = cfg.Get(settings.KeyRegion)
	}
	acfg, err := sqs.LoadAdminConfig(ctx, region, f.profile)
	if err != nil {
		return nil, nil, err
	}
	p := sqs.NewProvisioner(acfg, prefix)
	p.RequestLifetime = sera.MaxRequestLifetime
	p.ReplyQueues = cfg.Int(settings.KeyReplyQueues)
	p.NoIAM = f.noIAM
	account := f.account
	if account == "" && f.noIAM {
		account = cfg.Get(settings.KeyAccount)
	}
	if account != "" {
		if !sqs.ValidAccountID(account) {
			return nil, nil, cli.UsageErr("invalid --account %q: want 12 digits", account)
		}
		p.Account.ID = account
	}
	return p, cfg, nil
}

func cmdContext(c *cobra.Command) context.Context {
	if ctx := c.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// provisionErr adds what to do to the errors of planning.
func provisionErr(err error) error {
	switch {
	case errors.Is(err, sqs.ErrNotProvisioned):
		return fmt.Errorf("%w; run 'sera create-provider-keys' first", err)
	default:
		return err
	}
}

// runPlan executes (or with dryRun prints) p, after what was found as
// wanted outside it.
func runPlan(ctx context.Context, o *cli.Options, p plan.Plan, found []string, dryRun bool, noChange string) error {
	p.Found = append(p.Found, found...)
	return p.Execute(ctx, o.Stdout, dryRun, noChange)
}

func newProvisionCmd(o *cli.Options) *cobra.Command {
	var f awsFlags
	c := &cobra.Command{
		Use:     "create-provider-keys",
		Aliases: []string{"provision"},
		Short:   "AWS, once: the IAM groups and policies sera's keys get (keys: watcher/client register)",
		Long: `Create or update what every watcher and client key hangs off, with prefix P
(--prefix, default sera). The keys themselves, one per host and laptop, are
made by 'sera watcher register' and 'sera client register', and can do no
more than these policies allow:

  IAM group P-watchers, inline policy P-watcher: receive, delete, change
    visibility and get attributes/URL on the member's own queue (named like
    its IAM user, through the policy variable ${aws:username}); send to
    P-c-* reply queues; every other action denied.
  IAM group P-clients, inline policy P-client: send to P-w-* queues;
    publish to the P-all and P-g-* topics; receive, delete and change
    visibility on the member's own reply queue; every other action denied.
  SNS topic P-all, which every watcher queue subscribes to.

With --no-iam only the topic P-all: for hosts and clients whose AWS
credentials sera does not make (an instance role, keys your organisation
issues); 'watcher register --no-iam' and 'client register --no-iam' print
the policy each needs.

'sera policy print' shows the policies. Then register watchers
('sera watcher register') and clients ('sera client register').
` + provisionHelp,
		Args: cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := cmdContext(c)
			p, _, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			pl, err := p.ProviderKeys(ctx)
			if err != nil {
				return provisionErr(err)
			}
			if f.noIAM {
				return runPlan(ctx, o, pl.Plan, nil, f.dryRun,
					fmt.Sprintf("nothing to change: topic %s is in place in %s", sqs.AllTopic(p.Prefix), p.Account.Region))
			}
			return runPlan(ctx, o, pl.Plan, nil, f.dryRun,
				fmt.Sprintf("nothing to change: the IAM groups, their policies and topic %s are in place in %s", sqs.AllTopic(p.Prefix), p.Account.Region))
		},
	}
	f.add(c)
	f.addNoIAM(c)
	return c
}

func newWatcherCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "watcher",
		Short: "AWS: register a watcher's IAM user, key, queues and topics (not 'watchers')",
	})
	c.AddCommand(newWatcherRegisterCmd(o), newWatcherDeregisterCmd(o), newWatcherRotateCmd(o))
	return c
}

// hostSettings are the settings a watcher host needs, in order.
func hostSettings(p *sqs.Provisioner, name string, groups []string) [][2]string {
	s := [][2]string{
		{settings.KeyTransport, settings.TransportSQS}, {settings.KeyRegion, p.Account.Region},
		{settings.KeyPrefix, p.Prefix}, {settings.KeyName, name},
	}
	if len(groups) > 0 {
		s = append(s, [2]string{settings.KeyGroups, strings.Join(groups, ",")})
	}
	return s
}

func keySettings(k sqs.AccessKey) [][2]string {
	return [][2]string{{settings.KeyAccessKey, k.ID}, {settings.KeySecretKey, k.Secret}}
}

// indentJSON is doc indented for people; doc as it is if it is not JSON.
func indentJSON(doc string) string {
	var b bytes.Buffer
	if err := json.Indent(&b, []byte(doc), "", "  "); err != nil {
		return doc
	}
	return b.String()
}

// configSetLine is "sera config set K=V …", quoted for a shell.
func configSetLine(kvs [][2]string) string {
	argv := []string{"sera", "config", "set"}
	for _, kv := range kvs {
		argv = append(argv, kv[0]+"="+kv[1])
	}
	return strings.Join(plan.Quote(argv), " ")
}

// checkEnvOut refuses an --env-out path that cannot be written, before
// anything is made: the secret of a new key exists only once.
func checkEnvOut(path string) error {
	if path == "" {
		return nil
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return cli.UsageErr("invalid --env-out: directory %s does not exist", dir)
	}
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return cli.UsageErr("invalid --env-out: %s is not a regular file", path)
	}
	return nil
}

// mergeEnvFile sets settings in the env file at path, keeping what else
// it holds; it is written atomically, mode 0600.
func mergeEnvFile(path string, kvs [][2]string) error {
	f, err := settings.ReadEnvFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, kv := range kvs {
		f.Set(kv[0], kv[1])
	}
	return f.Write(path)
}

// deliverKey keeps a new key's settings: in envOut if set, else printed.
// If the file cannot be written they are printed, so the secret is never
// lost.
func deliverKey(o *cli.Options, who, envOut string, settings [][2]string) error {
	if envOut != "" {
		err := mergeEnvFile(envOut, settings)
		if err == nil {
			fmt.Fprintf(o.Stdout, "wrote the settings of %s, with its new access key, to %s (mode 0600)\n", who, envOut)
			return nil
		}
		fmt.Fprintf(o.Stdout, "# could not write %s; the settings of %s, with its new access key (shown only now):\n%s\n",
			envOut, who, configSetLine(settings))
		return fmt.Errorf("failed to write %s (the settings are printed above): %w", envOut, err)
	}
	fmt.Fprintf(o.Stdout, "# On %s, as root (the secret key is shown only now):\n%s\n", who, configSetLine(settings))
	return nil
}

func newWatcherRegisterCmd(o *cli.Options) *cobra.Command {
	var f awsFlags
	var groups []string
	var envOut string
	c := &cobra.Command{
		Use:   "register NAME PUBKEY [--group G]… [--env-out FILE]",
		Short: "Create a watcher's IAM user, access key, queues and subscriptions",
		Long: `Register watcher NAME (its SERA_NAME) with public key PUBKEY (what its
'sera keygen' printed), in the groups given:

  IAM user P-w-NAME in group P-watchers;
  SQS queue P-dlq-NAME, its dead-letter queue (kept 14 days);
  SQS queue P-w-NAME: 20 s long polls, retention longer than a request's
    lifetime, server-side encryption, redrive to P-dlq-NAME after 5
    receives, and a queue policy that lets only its topics send;
  SNS topics P-g-G for its groups, as needed;
  raw-delivery subscriptions of its queue to P-all and its group topics
    (and none to the topics of groups it left);
  one access key, unless the user has one already: the last AWS call, so
    that a failure before it leaves no secret a re-run could not show;
  the watcher in this client's known_watchers.

With --no-iam it makes no IAM user or key (nor needs create-provider-keys'
groups): the queues, topics and subscriptions only, and it prints the
policy the host's own credentials (its instance role, a key your
organisation issues) need, with the queue named.

It prints the settings the host needs as 'sera config set' lines, or with
--env-out writes them to FILE (mode 0600) to copy to /etc/sera/env on the
host. AWS shows a key's secret only when it is made: a re-run does not make
a second key and cannot show the first again; 'sera watcher rotate-key
NAME' replaces a lost one.
` + provisionHelp,
		Example: `  sera watcher register web1 sera1… --group web --env-out web1.env`,
		Args:    cli.UsageArgs(cobra.ExactArgs(2)),
		RunE: func(c *cobra.Command, args []string) error {
			name, key, groups, err := watcherArgs(args, groups)
			if err != nil {
				return err
			}
			slices.Sort(groups)
			groups = slices.Compact(groups)
			if err := checkEnvOut(envOut); err != nil {
				return err
			}
			ctx := cmdContext(c)
			p, cfg, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			if _, err := p.WatcherUser(name); err != nil {
				return cli.UsageErr("%v", err)
			}
			kw, err := sera.ReadKnownWatchers(cfg.KnownWatchersFile())
			if err != nil {
				return err
			}
			if other := kw.ByKey(key); other != nil && other.Name != name {
				return fmt.Errorf("that key is already known as watcher %s; deregister or remove it first", other.Name)
			}
			settings := hostSettings(p, name, groups)
			pl, err := p.Watcher(ctx, name, groups, func(ctx context.Context, k sqs.AccessKey) error {
				return deliverKey(o, name, envOut, append(slices.Clone(settings), keySettings(k)...))
			})
			if err != nil {
				return provisionErr(err)
			}
			steps := pl.Plan
			var found []string
			cur := kw.ByName(name)
			if cur != nil && cur.Key.Equal(key) && slices.Equal(cur.Groups, groups) {
				found = append(found, fmt.Sprintf("%s in %s", name, cfg.KnownWatchersFile()))
			} else {
				steps.Add(fmt.Sprintf("add watcher %s (%s) groups=%s to %s", name, key.Fingerprint(), strings.Join(groups, ","), cfg.KnownWatchersFile()),
					func(context.Context) error {
						return updateKnownWatchers(quiet(o), func(kw *sera.KnownWatchers) (string, error) {
							w := &sera.KnownWatcher{Name: name, Key: key, Groups: groups}
							if cur := kw.ByName(name); cur != nil {
								w.Addrs = cur.Addrs
								*cur = *w
							} else {
								kw.Watchers = append(kw.Watchers, w)
							}
							return "", nil
						})
					})
			}
			if err := runPlan(ctx, o, steps, found, f.dryRun, fmt.Sprintf("nothing to change: watcher %s is registered", name)); err != nil {
				return err
			}
			if f.noIAM {
				fmt.Fprintf(o.Stdout, "# The host's own AWS credentials need this policy (no more), with its queue named:\n%s\n",
					indentJSON(sqs.WatcherPolicyFor(p.Account, p.Prefix, name)))
				if f.dryRun {
					return nil
				}
				if envOut != "" {
					if err := mergeEnvFile(envOut, settings); err != nil {
						return fmt.Errorf("failed to write %s: %w", envOut, err)
					}
					fmt.Fprintf(o.Stdout, "wrote the settings of %s to %s (mode 0600)\n", name, envOut)
					return nil
				}
				fmt.Fprintf(o.Stdout, "# On %s, as root:\n%s\n", name, configSetLine(settings))
				return nil
			}
			if len(pl.Keys) > 0 {
				fmt.Fprintf(o.Stdout, "note: IAM user %s has access key %s; AWS showed its secret only when it was made. "+
					"If the host does not have it, run 'sera watcher rotate-key %s'.\n",
					transport.WatcherQueue(p.Prefix, name), keyList(pl.Keys), name)
				if !f.dryRun {
					fmt.Fprintf(o.Stdout, "# The host's other settings:\n%s\n", configSetLine(settings))
				}
			}
			return nil
		},
	}
	f.add(c)
	f.addNoIAM(c)
	c.Flags().StringSliceVar(&groups, "group", nil, "groups the watcher is in (repeatable, or comma-separated)")
	c.Flags().StringVar(&envOut, "env-out", "", "write the host's settings with the new key to this env file (mode 0600) instead of printing them")
	return c
}

func keyList(ks []sqs.KeyInfo) string {
	var s []string
	for _, k := range ks {
		s = append(s, k.String())
	}
	return strings.Join(s, " and ")
}

// quiet is o with its output discarded, for helpers that report on their
// own when the plan reports already.
func quiet(o *cli.Options) *cli.Options {
	q := *o
	q.Stdout = io.Discard
	return &q
}

func newWatcherDeregisterCmd(o *cli.Options) *cobra.Command {
	var f awsFlags
	c := &cobra.Command{
		Use:   "deregister NAME",
		Short: "Delete a watcher's access keys, IAM user, subscriptions and queues",
		Long: `Deregister watcher NAME: first its access keys, so the host is locked out at
once, then its group memberships and IAM user, its subscriptions, its queue
and its dead-letter queue (with any messages in them), and its entry in
this client's known_watchers. Its group topics stay: other watchers may use
them. AWS lets a deleted queue's name be used again after 60 seconds. With
--no-iam (a watcher registered so) no IAM user is read or deleted: revoke
the host's own credentials where they were issued.
` + provisionHelp,
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := sera.CheckName(name); err != nil {
				return cli.UsageErr("invalid NAME: %v", err)
			}
			ctx := cmdContext(c)
			p, cfg, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			kw, err := sera.ReadKnownWatchers(cfg.KnownWatchersFile())
			if err != nil {
				return err
			}
			var groups []string
			if w := kw.ByName(name); w != nil {
				groups = w.Groups
			}
			pl, err := p.DeregisterWatcher(ctx, name, groups)
			if err != nil {
				return provisionErr(err)
			}
			steps := pl.Plan
			var found []string
			if kw.ByName(name) == nil {
				found = append(found, fmt.Sprintf("%s absent from %s", name, cfg.KnownWatchersFile()))
			} else {
				steps.Add(fmt.Sprintf("remove watcher %s from %s", name, cfg.KnownWatchersFile()), func(context.Context) error {
					return updateKnownWatchers(quiet(o), func(kw *sera.KnownWatchers) (string, error) {
						kw.Watchers = slices.DeleteFunc(kw.Watchers, func(w *sera.KnownWatcher) bool { return w.Name == name })
						return "", nil
					})
				})
			}
			return runPlan(ctx, o, steps, found, f.dryRun, fmt.Sprintf("nothing to change: watcher %s is not registered", name))
		},
	}
	f.add(c)
	f.addNoIAM(c)
	return c
}

// rotateFlags are rotate-key's own flags.
type rotateFlags struct {
	keepOld, finish bool
}

func (r *rotateFlags) add(c *cobra.Command) {
	c.Flags().BoolVar(&r.keepOld, "keep-old", false, "keep the old key after the new one works (finish later with --finish)")
	c.Flags().BoolVar(&r.finish, "finish", false, "make no key; delete every key but the newest")
	c.MarkFlagsMutuallyExclusive("keep-old", "finish")
}

const rotateHelp = `
It makes a new access key and gives it out at once, confirms it with STS
GetCallerIdentity signed by the new key (waiting up to 2 minutes for IAM
to make it usable), then deletes the old key, which stops the host until it
has the new one. For no downtime, use --keep-old, install the new key, then
run again with --finish. A user with two keys (AWS's limit) is a rotation
that was not finished: --finish keeps only the newest.`

func rotateErr(err error, cmd string) error {
	switch {
	case errors.Is(err, sqs.ErrUnfinishedRotation):
		return fmt.Errorf("%w; once the newest key is in use, run '%s --finish' to delete the others", err, cmd)
	case errors.Is(err, sqs.ErrNotRegistered):
		return fmt.Errorf("%w; register it first", err)
	}
	return provisionErr(err)
}

func newWatcherRotateCmd(o *cli.Options) *cobra.Command {
	var f awsFlags
	var r rotateFlags
	var envOut string
	c := &cobra.Command{
		Use:   "rotate-key NAME [--env-out FILE]",
		Short: "Replace a watcher's access key",
		Long: `Replace the access key of watcher NAME; the new key's settings are printed
as 'sera config set' lines or, with --env-out, written to FILE (mode 0600).
` + rotateHelp + "\n" + credentialsHelp + " See docs/aws.md.",
		Args: cli.UsageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			name := args[0]
			if err := sera.CheckName(name); err != nil {
				return cli.UsageErr("invalid NAME: %v", err)
			}
			if err := checkEnvOut(envOut); err != nil {
				return err
			}
			ctx := cmdContext(c)
			p, _, err := f.setup(ctx, o)
			if err != nil {
				return err
			}
			user, err := p.WatcherUser(name)
			if err != nil {
				return cli.UsageErr("%v", err)
			}
			pl, err := p.RotateKey(ctx, user, sqs.RotateOptions{KeepOld: r.keepOld, Finish: r.finish}, func(ctx context.Context, k sqs.AccessKey) error {
				return deliverKey(o, name, envOut, keySettings(k))
			})
			if err != nil {
				return rotateErr(err, "sera watcher rotate-key "+name)
			}
			return runPlan(ctx, o, pl.Plan, nil, f.dryRun, fmt.Sprintf("nothing to change: watcher %s has one access key", name))
		},
	}
	f.add(c)
	r.add(c)
	c.Flags().StringVar(&envOut, "env-out", "", "write the new key to this env file (mode 0600) instead of printing it")
	return c
}
