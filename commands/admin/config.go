package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/safefile"
	"github.com/sera-dev/sera/settings"
)

func newConfigCmd(o *cli.Options) *cobra.Command {
	c := cli.Group(&cobra.Command{
		Use:   "config",
		Short: "Show and change settings ($SERA_HOME/env)",
		Long: `Show and change sera's settings. They live in $SERA_HOME/env as KEY=VALUE
lines that systemd's EnvironmentFile= reads too; a variable of the same name
in the environment overrides the file.`,
	})
	c.AddCommand(newConfigSetCmd(o, "set"), newConfigGetCmd(o), newConfigListCmd(o), newConfigUnsetCmd(o))
	return c
}

// newExportCmd is "sera export KEY=VALUE", kept for users of the original
// tool; it is "sera config set".
func newExportCmd(o *cli.Options) *cobra.Command {
	c := newConfigSetCmd(o, "export")
	c.Hidden = true
	return c
}

func newConfigSetCmd(o *cli.Options, use string) *cobra.Command {
	return &cobra.Command{
		Use:               use + " KEY=VALUE…",
		ValidArgsFunction: cli.CompleteSettingKeys(true),
		Short:             "Set settings in the env file",
		Example:           "  sera config set SERA_TRANSPORT=sqs SERA_REGION=eu-west-1",
		Args:              cli.UsageArgs(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			// Validate every pair before writing any.
			type kv struct{ k, v string }
			var pairs []kv
			for _, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					return cli.UsageErr("%q is not KEY=VALUE", a)
				}
				if strings.ContainsAny(v, "\n\r\x00") {
					return cli.UsageErr("the value of %s contains a line break", k)
				}
				if err := settings.Check(k, v); err != nil {
					return cli.UsageErr("%v", err)
				}
				pairs = append(pairs, kv{k, v})
			}
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			if err := safefile.MkdirPrivate(cfg.Home); err != nil {
				return err
			}
			f, err := settings.ReadEnvFile(cfg.EnvFile)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			changed := false
			for _, p := range pairs {
				if f.Set(p.k, p.v) {
					changed = true
					fmt.Fprintf(o.Stderr, "%s set\n", p.k)
				} else {
					fmt.Fprintf(o.Stderr, "%s unchanged\n", p.k)
				}
			}
			if !changed {
				return nil
			}
			return f.Write(cfg.EnvFile)
		},
	}
}

func newConfigUnsetCmd(o *cli.Options) *cobra.Command {
	return &cobra.Command{
		Use:               "unset KEY…",
		ValidArgsFunction: cli.CompleteSettingKeys(false),
		Short:             "Remove settings from the env file",
		Args:              cli.UsageArgs(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			for _, k := range args {
				if _, ok := settings.Lookup(k); !ok {
					return cli.UsageErr("%v %q (see 'sera config list')", settings.ErrUnknown, k)
				}
			}
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			f, err := settings.ReadEnvFile(cfg.EnvFile)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			} else if err != nil {
				return err
			}
			changed := false
			for _, k := range args {
				if f.Unset(k) {
					changed = true
					fmt.Fprintf(o.Stderr, "%s removed\n", k)
				}
			}
			if !changed {
				return nil
			}
			return f.Write(cfg.EnvFile)
		},
	}
}

func newConfigGetCmd(o *cli.Options) *cobra.Command {
	return &cobra.Command{
		Use:               "get KEY",
		ValidArgsFunction: cli.CompleteSettingKeys(false),
		Short:             "Print one setting's value",
		Args:              cli.UsageArgs(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, args []string) error {
			if _, ok := settings.Lookup(args[0]); !ok {
				return cli.UsageErr("%v %q (see 'sera config list')", settings.ErrUnknown, args[0])
			}
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			fmt.Fprintln(o.Stdout, cfg.Get(args[0]))
			return nil
		},
	}
}

func newConfigListCmd(o *cli.Options) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List every setting with its value and where it came from",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			for _, d := range settings.All {
				v := cfg.Lookup(d.Key)
				val := v.Value
				if d.Secret && val != "" {
					val = "********"
				}
				if asJSON {
					json.NewEncoder(o.Stdout).Encode(map[string]string{"key": d.Key, "value": val, "source": string(v.Source)})
					continue
				}
				fmt.Fprintf(o.Stdout, "%-19s %-8s %s\n", d.Key, v.Source, val)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per setting")
	return c
}
