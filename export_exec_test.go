package sera

import "time"

// SetExecGrace replaces ExecGrace for w, so tests of a command stuck past
// its execution timeout need not wait 30 s. Compiled into tests only.
func SetExecGrace(w *Watcher, d time.Duration) { w.execGrace = d }
