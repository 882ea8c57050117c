#!/usr/bin/env bash
# Stop the single-machine Slurm cluster that start.sh started, and leave the machine as it was.
#
# Usage: stop.sh [--keep-state]
# Cancels the cluster's jobs, stops exactly the PIDs start.sh recorded (in reverse start order), waits
# for them to exit, removes the /etc/slurm/slurm.conf symlink if start.sh created it, and removes the
# state directory (kept with --keep-state, e.g. to read the logs). Stopping a stopped cluster succeeds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

keep_state=0
[[ "${1:-}" == "--keep-state" ]] && keep_state=1

# Jobs still running would leave slurmstepd and their tasks behind once slurmd is gone.
cancel_jobs() {
    local jobs
    jobs="$(timeout 5 squeue -h -o '%i' 2>/dev/null | sort -u)" || return 0
    [[ -n "$jobs" ]] || return 0
    log "cancelling jobs: $(tr '\n' ' ' <<<"$jobs")"
    # shellcheck disable=SC2086  # one job id per word
    timeout 5 scancel $jobs 2>/dev/null || true
    wait_for 20 no_jobs_left || log "jobs still listed after 20 s; stopping the daemons anyway"
}

no_jobs_left() { [[ -z "$(timeout 5 squeue -h -o '%i' 2>/dev/null)" ]]; }

stop_pid() {
    local name="$1" pid="$2" deadline
    pid_is "$name" "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + 15))
    while pid_is "$name" "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_is "$name" "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 bash -c "! kill -0 $pid 2>/dev/null" || true
    fi
}

stop_daemons() {
    [[ -s "$PID_LIST" ]] || return 0
    local name pid
    # Reverse order: slurmd first, munged last (every daemon authenticates through it until it stops).
    while read -r name pid; do
        stop_pid "$name" "$pid"
    done < <(tac "$PID_LIST")
}

unlink_system_conf() {
    if [[ -f "$SYMLINK_MARKER" && "$(readlink "$SYSTEM_SLURM_CONF" 2>/dev/null || true)" == "$SLURM_CONF_FILE" ]]; then
        rm -f "$SYSTEM_SLURM_CONF"
    fi
    rm -f "$SYMLINK_MARKER"
}

if [[ ! -d "$STATE_DIR" ]]; then
    log "not running (no $STATE_DIR); nothing to do"
    exit 0
fi
began=$SECONDS
# Only a running slurmctld can cancel jobs; without one there is nothing to ask (and no job can run).
read -r _ ctld_pid < <(grep '^slurmctld ' "$PID_LIST" 2>/dev/null || echo "- 0")
if pid_is slurmctld "$ctld_pid"; then
    cancel_jobs
fi
stop_daemons
unlink_system_conf
if ((keep_state)); then
    : >"$PID_LIST"
    log "stopped in $((SECONDS - began))s; state kept in $STATE_DIR"
else
    rm -rf "$STATE_DIR"
    log "stopped in $((SECONDS - began))s; $STATE_DIR removed"
fi
