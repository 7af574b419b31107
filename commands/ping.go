package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sera-dev/sera/commands/cli"
	"github.com/spf13/cobra"
)

// PingInfo is what ping reports.
type PingInfo struct {
	Name        string   `json:"name"`
	Groups      []string `json:"groups,omitempty"`
	Version     string   `json:"version"`
	Fingerprint string   `json:"fingerprint"`
	// Uptime is the watcher's, in seconds (0 with --local);
	// HostUptime the machine's.
	Uptime     int64 `json:"uptime_seconds"`
	HostUptime int64 `json:"host_uptime_seconds,omitempty"`
}

func (t *hostTree) pingCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "ping",
		Short: "Show a watcher's name, version, uptime and key fingerprint",
		Example: `  sera ping --to web1
  sera ping --to 'web*' --json`,
		Args: cli.UsageArgs(cobra.NoArgs),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return t.leaf(c, false, func(ctx context.Context, h *Host, out, _ io.Writer, _ []string) error {
		info := PingInfo{Name: h.Name, Groups: h.Groups, Version: h.Version, Fingerprint: h.Fingerprint}
		if !h.Started.IsZero() {
			info.Uptime = int64(h.Sys.Now().Sub(h.Started).Seconds())
		}
		info.HostUptime = hostUptime()
		if asJSON {
			return json.NewEncoder(out).Encode(info)
		}
		up := "-"
		if !h.Started.IsZero() {
			up = (time.Duration(info.Uptime) * time.Second).String()
		}
		fmt.Fprintf(out, "name         %s\n", info.Name)
		if len(info.Groups) > 0 {
			fmt.Fprintf(out, "groups       %s\n", strings.Join(info.Groups, ","))
		}
		fmt.Fprintf(out, "version      %s\n", info.Version)
		fmt.Fprintf(out, "uptime       %s\n", up)
		if info.HostUptime > 0 {
			fmt.Fprintf(out, "host uptime  %s\n", time.Duration(info.HostUptime)*time.Second)
		}
		_, err := fmt.Fprintf(out, "fingerprint  %s\n", info.Fingerprint)
		return err
	})
}

// hostUptime reads the machine's uptime; 0 if it cannot.
func hostUptime() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return int64(s)
}
