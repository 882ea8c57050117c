# Writers of slurm.conf, slurmdbd.conf and the per-node hosts file (sourced by start.sh, never run).
#
# Every setting here is one that mattered on a single machine with no systemd and no cgroups; the
# comments say why. Variables come from common.sh and start.sh (NODES, DB_PORT, DB_PASSWORD).

# Node definitions: one node named after this machine, or n1..nN on 127.0.1.i, each with its own port.
node_lines() {
    local mem_mb cpus=8 i
    # RealMemory as the machine has it, so that `--mem` requests up to that are accepted.
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
    # CPUs=8 with config_overrides: 2-node x 2-rank jobs with several CPUs each fit on a 2-core
    # machine. A job asking for more CPUs than advertised does not fail, it pends forever.
    if ((NODES == 1)); then
        echo "NodeName=$(hostname -s) NodeAddr=127.0.0.1 Port=$(slurmd_port 0) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        return
    fi
    for ((i = 1; i <= NODES; i++)); do
        echo "NodeName=n$i NodeAddr=127.0.1.$i Port=$(slurmd_port "$i") CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    done
}

write_slurm_conf() {
    # FirstJobId from the clock (tenths of a second): a fresh cluster must not reuse the job ids of a
    # previous one, or submitit finds an old result file in a reused %j folder.
    local first_job_id=$((($(date +%s%N) / 100000000) % 60000000 + 1000))
    cat >"$SLURM_CONF_FILE" <<EOF
# Single-machine Slurm cluster for hpc-launch tests and CI; written by slurm/cluster/start.sh.
ClusterName=hpclaunch
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A private munged socket; cred_expire=10 lets a requeued job restart ~12 s after the requeue, not ~130 s.
AuthInfo=socket=$MUNGE_DIR/munge.socket.2,cred_expire=10
StateSaveLocation=$SPOOL_DIR/ctld
SlurmdSpoolDir=$SPOOL_DIR/slurmd-%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroups: track processes by parent id and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
# Pending and requeued jobs start within 1-2 s.
SchedulerParameters=sched_interval=2,bf_interval=2
FirstJobId=$first_job_id
JobRequeue=1
KillWait=10
# Finished jobs stay visible to scontrol/squeue for 10 minutes.
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=120
MailProg=/bin/true
MpiDefault=none
# Real preemption: a job in the high-tier partition requeues a running low-tier job, whose tasks get
# the job's --signal first (preempt_send_user_signal), then GraceTime seconds to act on it.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
# With munge, this is the socket that the connection to slurmdbd authenticates through.
AccountingStoragePass=$MUNGE_DIR/munge.socket.2
JobCompType=jobcomp/none
$(node_lines)
PartitionName=debug Nodes=ALL Default=YES MaxTime=1-00:00:00 State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=high Nodes=ALL Default=NO MaxTime=1-00:00:00 State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

write_slurmdbd_conf() {
    local conf="$ETC_DIR/slurmdbd.conf"
    # slurmdbd refuses a config readable by others: it holds the database password.
    (
        umask 077
        cat >"$conf" <<EOF
# Accounting daemon of the single-machine Slurm cluster; written by slurm/cluster/start.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket.2
DbdAddr=127.0.0.1
DbdHost=$(hostname -s)
DbdPort=$SLURMDBD_PORT
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
    )
}

# The machine's /etc/hosts plus n1..nN, bind-mounted over /etc/hosts inside each slurmd's namespace
# only: the first host of a nodelist must resolve for a rendezvous (MASTER_ADDR) to work.
write_node_hosts() {
    local i
    {
        grep -vE '[[:space:]]n[0-9]+([[:space:]]|$)' /etc/hosts || true
        for ((i = 1; i <= NODES; i++)); do
            echo "127.0.1.$i n$i"
        done
    } >"$ETC_DIR/hosts"
}
