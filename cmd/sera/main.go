// Command sera manages Linux hosts over a message queue with no inbound
// port: see 'sera --help'.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/sera-dev/sera/commands"
	"github.com/sera-dev/sera/commands/cli"
	"github.com/sera-dev/sera/settings"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = ""

func main() { os.Exit(run()) }

// run is main without the exit, so testscript can run sera in-process.
func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	root := commands.NewRoot(&cli.Options{
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		Env: settings.OSEnv(), Version: buildVersion(), Args: os.Args[1:],
	})
	err := root.ExecuteContext(ctx)
	code, show := cli.ExitCode(err)
	if show {
		fmt.Fprintf(os.Stderr, "sera: %v\n", err)
	}
	return code
}

// buildVersion is the stamped version, else the module version the binary
// was built from ("go install …@v1.2.3"), else "devel".
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
