#!/usr/bin/env bash
# `make demo`: sera end to end on one machine, with the embedded spool
# transport — no AWS, no root. Everything lives in a temporary directory
# that is removed at the end, and nothing outside it is touched.
set -euo pipefail

sera=${SERA:-sera}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sera-demo.XXXXXX")
watcher_pid=
cleanup() {
	if [ -n "$watcher_pid" ]; then kill "$watcher_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# Both sides share one spool directory; each has its own SERA_HOME. State
# is set explicitly so that even as root the demo never uses /var/lib/sera.
export SERA_TRANSPORT=spool SERA_SPOOL=$tmp/spool
host() { SERA_HOME=$tmp/web1 SERA_STATE=$tmp/web1/state "$@"; }
laptop() { SERA_HOME=$tmp/laptop SERA_STATE=$tmp/laptop/state "$@"; }
mallory() { SERA_HOME=$tmp/mallory SERA_STATE=$tmp/mallory/state "$@"; }

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
show() { printf '\033[2m%s$\033[0m %s\n' "$1" "${*:2}"; }

say "On the admin's laptop: make an identity (the public key is on stdout)"
show laptop "sera keygen"
laptop_pub=$(laptop "$sera" keygen)
echo "$laptop_pub"

say "On the host web1: make its identity, name it, trust the laptop's key"
show web1 "sera keygen"
host_pub=$(host "$sera" keygen)
echo "$host_pub"
show web1 "sera config set SERA_NAME=web1"
host "$sera" config set SERA_NAME=web1
show web1 "sera clients add ${laptop_pub:0:20}… --name admin"
host "$sera" clients add "$laptop_pub" --name admin

say "On web1: start the watcher (in the background for this demo)"
show web1 "sera watch &"
# Not through host(): $! must be sera's own PID, not a subshell's.
SERA_HOME=$tmp/web1 SERA_STATE=$tmp/web1/state "$sera" watch 2>"$tmp/watcher.log" </dev/null >/dev/null &
watcher_pid=$!

say "On the laptop: know web1 by name and key, then ping it"
show laptop "sera watchers add web1 ${host_pub:0:20}…"
laptop "$sera" watchers add web1 "$host_pub"
show laptop "sera ping --to web1"
laptop "$sera" ping --to web1

say "The admin may run only ping until allowed more: refused, exit status 126"
show laptop "sera clients list --to web1"
status=0
laptop "$sera" clients list --to web1 || status=$?
echo "(exit status $status)"

say "A key web1 does not know gets no answer at all"
mallory "$sera" keygen >/dev/null 2>&1
mallory "$sera" watchers add web1 "$host_pub" >/dev/null
show mallory "sera ping --to web1 --timeout 3s"
status=0
mallory "$sera" ping --to web1 --timeout 3s || status=$?
echo "(exit status $status)"

say "Stop the watcher: SIGTERM finishes the running request and exits"
kill -TERM "$watcher_pid"
wait "$watcher_pid"
watcher_pid=
cat "$tmp/watcher.log"

say "web1's audit log: a JSON line per decision ('running' is written before a command runs)"
cat "$tmp/web1/state/audit.log"

say "Done; removed $tmp"
