#!/usr/bin/env bash
# Install (if missing) and start a real single-machine Slurm cluster with accounting, for tests and CI.
#
# Usage: start.sh [--nodes N]        (as root; N=1 by default, N>1 runs N slurmd as nodes n1..nN)
# State, configs, logs and PIDs go to $HPC_SLURM_STATE (default /tmp/hpc-launch-slurm). Daemons start
# in order munged, MariaDB, slurmdbd, slurmctld, slurmd; stop.sh stops exactly those PIDs. Running it
# again while the cluster is up does nothing and succeeds. Fails with the daemons' log tails when the
# cluster does not accept jobs within 60 s.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"
source "$HERE/configs.sh"

NODES=1
START_TIMEOUT_S=60
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core)
COMMANDS=(slurmctld slurmd sbatch sacct munged slurmdbd mariadbd mariadb-install-db my_print_defaults)

usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }

parse_args() {
    while (($#)); do
        case "$1" in
            --nodes) NODES="${2:?--nodes needs a number, e.g. --nodes 2}"; shift 2 ;;
            --nodes=*) NODES="${1#--nodes=}"; shift ;;
            -h | --help) usage; exit 0 ;;
            *) log "unknown option '$1'; usage:"; usage >&2; exit 2 ;;
        esac
    done
    if ! [[ "$NODES" =~ ^[1-9][0-9]?$ ]]; then
        log "--nodes must be a number from 1 to 99, got '$NODES'"
        exit 2
    fi
}

install_packages() {
    local missing=() cmd
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
            missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} and no apt-get to install them; install: ${PACKAGES[*]}"
        exit 1
    fi
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    # apt starts no daemon here (no systemd, policy-rc.d); we start them ourselves below.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

check_ports_free() {
    local port
    for port in "$SLURMCTLD_PORT" "$SLURMDBD_PORT" "$@"; do
        if port_open "$port"; then
            log "port $port on 127.0.0.1 is already in use (another Slurm?); stop it or set" \
                "HPC_SLURM_CTLD_PORT / HPC_SLURM_DBD_PORT / HPC_SLURM_SLURMD_PORT to free ports"
            exit 1
        fi
    done
}

# A free port for the private MariaDB, searched upwards from 33061.
pick_db_port() {
    local port
    for ((port = 33061; port < 33161; port++)); do
        port_open "$port" || { echo "$port"; return; }
    done
    log "no free port in 33061-33160 for the private MariaDB"
    exit 1
}

# 0 for the single node of a one-node cluster, else 1..N.
node_numbers() { if ((NODES == 1)); then echo 0; else seq 1 "$NODES"; fi; }

make_dirs() {
    rm -rf "$STATE_DIR"
    mkdir -p "$ETC_DIR" "$RUN_DIR" "$LOG_DIR" "$SPOOL_DIR/ctld" "$MUNGE_DIR" "$MYSQL_DIR"
    local i
    for i in $(node_numbers); do
        if ((i == 0)); then mkdir -p "$SPOOL_DIR/slurmd-$(hostname -s)"; else mkdir -p "$SPOOL_DIR/slurmd-n$i"; fi
    done
    chmod 755 "$STATE_DIR"
    : >"$PID_LIST"
    echo "$NODES" >"$STATE_DIR/nodes"
}

# Start "$@" in its own session with output to log/$1.out and record its PID under name $1.
# setsid does not fork here (a background job of a script is no group leader), so $! is the daemon.
launch() {
    local name="$1"
    shift
    setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 &
    echo "$name $!" >>"$PID_LIST"
    LAST_PID=$!
}

alive_or_fail() {
    local name="$1" pid="$2"
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) exited during start-up"
        return 1
    fi
}

start_munged() {
    # A private key and socket: no dependence on (or interference with) a system munged.
    head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key"
    chmod 600 "$MUNGE_DIR/munge.key"
    chown -R munge:munge "$MUNGE_DIR"
    launch munged setpriv --reuid=munge --regid=munge --init-groups -- \
        munged -F --socket="$MUNGE_DIR/munge.socket.2" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed"
    wait_for 15 test -S "$MUNGE_DIR/munge.socket.2" || { alive_or_fail munged "$LAST_PID"; return 1; }
}

start_mariadb() {
    mariadb-install-db --no-defaults --datadir="$MYSQL_DIR" --user=root --skip-test-db \
        --auth-root-authentication-method=normal >"$LOG_DIR/mariadb-install.log" 2>&1
    launch mariadb mariadbd --no-defaults --datadir="$MYSQL_DIR" --user=root \
        --socket="$RUN_DIR/mysql.sock" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$RUN_DIR/mariadb.pid" --log-error="$LOG_DIR/mariadb.log" \
        --innodb-buffer-pool-size=32M --performance-schema=OFF
    wait_for 30 test -S "$RUN_DIR/mysql.sock" || { alive_or_fail mariadb "$LAST_PID"; return 1; }
    mariadb --no-defaults --socket="$RUN_DIR/mysql.sock" -u root <<EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurm_daemons() {
    launch slurmdbd slurmdbd -D
    wait_for 20 port_open "$SLURMDBD_PORT" || { alive_or_fail slurmdbd "$LAST_PID"; return 1; }
    launch slurmctld slurmctld -D -i
    wait_for 20 port_open "$SLURMCTLD_PORT" || { alive_or_fail slurmctld "$LAST_PID"; return 1; }
    if ((NODES == 1)); then
        launch "slurmd-$(hostname -s)" slurmd -D
        return
    fi
    local i
    for ((i = 1; i <= NODES; i++)); do
        # Own UTS and mount namespace: hostname n<i>, and a hosts file that resolves n1..nN, visible to
        # this slurmd and its jobs only. unshare without --fork execs, so the PID stays the daemon's.
        launch "slurmd-n$i" unshare --uts --mount -- bash -c \
            'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -D -N "$1"' _ "n$i" "$ETC_DIR/hosts"
    done
}

all_nodes_idle() {
    local states
    # sinfo -N lists a node once per partition: count distinct node names.
    states="$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null)" || return 1
    [[ "$(sort -u <<<"$states" | grep -c ' idle$')" -eq "$NODES" ]]
}

accounting_ready() { timeout 5 sacct -n -X -S now-1minutes >/dev/null 2>&1; }

# Let plain `sbatch`/`sacct`/submitit find this cluster without SLURM_CONF, unless a slurm.conf exists.
link_system_conf() {
    if [[ ! -e "$SYSTEM_SLURM_CONF" && ! -L "$SYSTEM_SLURM_CONF" ]]; then
        mkdir -p "$(dirname "$SYSTEM_SLURM_CONF")"
        ln -s "$SLURM_CONF_FILE" "$SYSTEM_SLURM_CONF"
        touch "$SYMLINK_MARKER"
    elif [[ "$(readlink "$SYSTEM_SLURM_CONF" || true)" != "$SLURM_CONF_FILE" ]]; then
        log "$SYSTEM_SLURM_CONF exists and is not ours: Slurm commands need SLURM_CONF=$SLURM_CONF_FILE"
    fi
}

fail() {
    log "the cluster did not come up: $*"
    print_log_tails
    "$HERE/stop.sh" --keep-state >/dev/null 2>&1 || true
    log "daemons stopped; state and logs kept in $STATE_DIR"
    exit 1
}

main() {
    parse_args "$@"
    if [[ $EUID -ne 0 ]]; then
        log "must run as root (daemons run as SlurmUser=root); run it with sudo"
        exit 1
    fi
    if "$HERE/status.sh" --quiet; then
        if [[ "$(recorded_nodes)" != "$NODES" ]]; then
            log "already running with $(recorded_nodes) node(s), asked for $NODES: run stop.sh first"
            exit 1
        fi
        log "already running ($NODES node(s)); nothing to do"
        return 0
    fi
    [[ -s "$PID_LIST" ]] && "$HERE/stop.sh" >/dev/null 2>&1 || true
    install_packages
    local began=$SECONDS ports=() i
    for i in $(node_numbers); do ports+=("$(slurmd_port "$i")"); done
    check_ports_free "${ports[@]}"
    DB_PORT="$(pick_db_port)"
    DB_PASSWORD="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    make_dirs
    write_slurm_conf
    write_slurmdbd_conf
    write_node_hosts
    link_system_conf
    start_munged || fail "munged did not create its socket"
    start_mariadb || fail "MariaDB did not start"
    start_slurm_daemons || fail "a Slurm daemon did not start"
    local left=$((START_TIMEOUT_S - (SECONDS - began)))
    ((left > 0)) || left=1
    wait_for "$left" all_nodes_idle || fail "sinfo does not show $NODES idle node(s) after ${START_TIMEOUT_S}s"
    wait_for 10 accounting_ready || fail "sacct does not answer"
    log "up in $((SECONDS - began))s: $NODES node(s), partitions debug (default) and high; SLURM_CONF=$SLURM_CONF_FILE"
}

main "$@"
