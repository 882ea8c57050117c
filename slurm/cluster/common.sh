# Shared paths and helpers of the single-machine Slurm cluster scripts (sourced, never run).
#
# Everything the cluster writes lives under one state directory so that stop.sh can remove it and
# leave the machine as it was. The only file outside it is the /etc/slurm/slurm.conf symlink that lets
# plain `sbatch`/`sacct`/submitit find the cluster; it is created only when no slurm.conf exists.

STATE_DIR="${HPC_SLURM_STATE:-/tmp/hpc-launch-slurm}"
ETC_DIR="$STATE_DIR/etc"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
SPOOL_DIR="$STATE_DIR/spool"
MUNGE_DIR="$STATE_DIR/munge"
MYSQL_DIR="$STATE_DIR/mysql"
PID_LIST="$STATE_DIR/pids"          # "<name> <pid>" per line, in start order
SLURM_CONF_FILE="$ETC_DIR/slurm.conf"
SYSTEM_SLURM_CONF=/etc/slurm/slurm.conf
SYMLINK_MARKER="$STATE_DIR/created-etc-symlink"

SLURMCTLD_PORT="${HPC_SLURM_CTLD_PORT:-6817}"
SLURMDBD_PORT="${HPC_SLURM_DBD_PORT:-6819}"
# slurmd ports: the single node uses SLURMD_PORT; node n<i> of a multi-node cluster uses
# SLURMD_PORT + 10 + i, clear of the slurmdbd port.
SLURMD_PORT="${HPC_SLURM_SLURMD_PORT:-6818}"

export SLURM_CONF="$SLURM_CONF_FILE"

log() { echo "[slurm-cluster] $*" >&2; }

# True when something accepts TCP connections on 127.0.0.1:$1 (pure bash, no ss/netstat needed).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when PID $2 is alive and is still the daemon named $1 (guards against a recycled PID).
pid_is() {
    local name="$1" pid="$2" cmdline
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    case "$name" in
        munged) [[ "$cmdline" == *munged* ]] ;;
        mariadb) [[ "$cmdline" == *mariadbd* || "$cmdline" == *mysqld* ]] ;;
        slurmdbd) [[ "$cmdline" == *slurmdbd* ]] ;;
        slurmctld) [[ "$cmdline" == *slurmctld* ]] ;;
        slurmd-*) [[ "$cmdline" == *slurmd\ * || "$cmdline" == *slurmd ]] ;;
        *) return 1 ;;
    esac
}

# Wait up to $1 seconds for the command "${@:2}" to succeed; polls every 0.2 s.
wait_for() {
    local timeout="$1"
    shift
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# The slurmd port of node number $1 (0 for the single node of a one-node cluster).
slurmd_port() { if (($1 == 0)); then echo "$SLURMD_PORT"; else echo $((SLURMD_PORT + 10 + $1)); fi; }

# Print the last lines of every daemon log, so that a failure explains itself.
print_log_tails() {
    local file
    for file in "$LOG_DIR"/*; do
        [[ -f "$file" ]] || continue
        echo "----- tail of $file -----" >&2
        tail -n 25 "$file" >&2
    done
}

# Number of nodes the running cluster was started with (empty when unknown).
recorded_nodes() { cat "$STATE_DIR/nodes" 2>/dev/null || true; }
