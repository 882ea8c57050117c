#!/usr/bin/env bash
# Exit 0 when the single-machine Slurm cluster started by start.sh is up and accepts jobs.
#
# Usage: status.sh [--quiet]
# Up means: every daemon start.sh recorded is alive, `sinfo` answers with every node in a usable state
# (idle, mixed, allocated or completing) and `sacct` works (submitit learns job states from it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

quiet=0
[[ "${1:-}" == "--quiet" ]] && quiet=1
say() { ((quiet)) || echo "$*"; }

daemons_alive() {
    [[ -s "$PID_LIST" ]] || return 1
    local name pid
    while read -r name pid; do
        pid_is "$name" "$pid" || return 1
    done <"$PID_LIST"
}

nodes_usable() {
    local states
    states="$(timeout 10 sinfo -h -N -o '%T' 2>/dev/null)" || return 1
    [[ -n "$states" ]] || return 1
    # A trailing "*" marks a node that does not answer; drain/down/fail are not usable either.
    ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

accounting_works() { timeout 10 sacct -n -X -S now-1minutes >/dev/null 2>&1; }

if ! daemons_alive; then
    say "down: not every daemon recorded in $PID_LIST is running"
    exit 1
fi
if ! nodes_usable; then
    say "down: sinfo does not show every node usable"
    exit 1
fi
if ! accounting_works; then
    say "down: sacct does not answer"
    exit 1
fi
say "up: $(recorded_nodes) node(s), state in $STATE_DIR, SLURM_CONF=$SLURM_CONF_FILE"
