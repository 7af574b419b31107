package sera_test

import (
	"go/build"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/sera-dev/sera"

// importRules is docs/design.md's table of which package may import
// which (non-test files, transitively): the dependencies point one way,
// cmd → commands → {install, sera} → crypto, transport.
var importRules = []struct {
	pkg string
	// may lists the module's packages pkg may reach; "*" any.
	may []string
	// never lists outside packages (prefixes) pkg must not reach.
	never []string
}{
	{"crypto", nil, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"transport", nil, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"transport/spool", []string{"transport"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"transport/sqs", []string{"transport", "plan", "safefile"}, []string{"github.com/spf13/cobra"}},
	{"plan", nil, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"safefile", nil, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host", []string{"safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host/sshkeys", []string{"host", "plan", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host/firewall", []string{"host", "plan", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host/hostkeys/keystest", nil, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host/hostkeys", []string{"host", "plan", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host/sudo", []string{"host", "plan", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"host/accounts", []string{"host", "host/sshkeys", "host/sudo", "plan", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"", []string{"crypto", "transport", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"settings", []string{"", "crypto", "transport", "safefile"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"install", []string{"", "crypto", "transport", "safefile", "settings", "plan", "host"}, []string{"github.com/spf13/cobra", "github.com/aws/"}},
	{"commands/cli", []string{"", "crypto", "transport", "safefile", "settings", "host", "plan"}, []string{"github.com/aws/"}},
	{"commands/admin", []string{"commands/cli", "host/hostkeys", "", "crypto", "transport", "transport/spool", "transport/sqs", "install", "safefile", "settings", "plan", "host"}, nil},
	{"commands", []string{"commands/cli", "commands/admin", "", "crypto", "transport", "transport/spool", "transport/sqs", "install", "safefile", "settings", "plan", "host", "host/accounts", "host/firewall", "host/hostkeys", "host/sshkeys", "host/sudo"}, nil},
	{"hosttest", nil, []string{"github.com/spf13/cobra", "github.com/aws/"}},
}

// deps is every package path pkg reaches through non-test imports.
func deps(t *testing.T, root, pkg string, seen map[string]bool) {
	t.Helper()
	dir := filepath.Join(root, strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/"))
	p, err := build.ImportDir(dir, 0)
	if err != nil {
		t.Fatalf("%s: %v", pkg, err)
	}
	for _, imp := range p.Imports {
		if seen[imp] {
			continue
		}
		seen[imp] = true
		if strings.HasPrefix(imp, module) {
			deps(t, root, imp, seen)
		}
	}
}

func TestImportRules(t *testing.T) {
	t.Parallel()
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range importRules {
		pkg := module
		if r.pkg != "" {
			pkg += "/" + r.pkg
		}
		seen := map[string]bool{}
		deps(t, root, pkg, seen)
		for d := range seen {
			if rel, ok := strings.CutPrefix(d, module); ok {
				rel = strings.TrimPrefix(rel, "/")
				if !slices.Contains(r.may, rel) && !slices.Contains(r.may, "*") {
					t.Errorf("%s imports %s (directly or not); docs/design.md does not allow it", pkg, d)
				}
				continue
			}
			for _, n := range r.never {
				if strings.HasPrefix(d, n) {
					t.Errorf("%s imports %s; it must not reach %s", pkg, d, n)
				}
			}
		}
	}
}
