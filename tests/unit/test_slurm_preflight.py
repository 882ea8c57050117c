"""Preflight against captured `scontrol`/`sinfo` output: parsers, and every refusal naming key and fix."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from slurm.errors import SlurmCommandError, SlurmPreflightError
from slurm.params import SlurmConfig
from slurm.preflight import parse_gpus, parse_nodes, parse_partitions, parse_slurm_time, preflight

# Captured on the project's two-node test cluster (slurm/cluster/start.sh --nodes 2), Slurm 22.05.
SCONTROL_TEST_CLUSTER = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=30 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=REQUEUE State=UP "
    "TotalCPUs=16 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=16,mem=43384M,node=2,billing=16\n"
    "PartitionName=high AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] PriorityJobFactor=1 "
    "PriorityTier=10 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=16 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=16,mem=43384M,node=2,billing=16\n"
)
SINFO_TEST_CLUSTER = "n1|8|21692|(null)|idle\nn2|8|21692|(null)|mixed\n"

# A GPU cluster in the shape sites print it: typed GPUs with socket affinity, a node not responding.
SCONTROL_GPU_CLUSTER = (
    "PartitionName=cpu Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED State=UP "
    "TotalNodes=10\n"
    "PartitionName=gpu Default=NO MaxNodes=4 MaxTime=2-00:00:00 MaxCPUsPerNode=64 State=UP TotalNodes=8\n"
    "PartitionName=old Default=NO MaxNodes=UNLIMITED MaxTime=30:00 State=DOWN TotalNodes=2\n"
)
SINFO_GPU_PARTITION = (
    "g1|96|512000|gpu:a100:8(S:0-1)|idle\n"
    "g2|96|512000|gpu:a100:4(S:0),gpu:a100:4(S:1)|allocated*\n"
    "g3|96|256000|gpu:v100:4|mixed\n"
)


class FakeSlurm:
    """Answers `scontrol show partition -o` and `sinfo -N -p P` with captured text, records the calls."""

    def __init__(self, scontrol: str, sinfo: dict[str, str]) -> None:
        self.scontrol, self.sinfo = scontrol, sinfo
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        out = self.scontrol if args[0] == "scontrol" else self.sinfo[args[args.index("-p") + 1]]
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")


def two_node_cluster() -> FakeSlurm:
    return FakeSlurm(SCONTROL_TEST_CLUSTER, {"debug": SINFO_TEST_CLUSTER, "high": SINFO_TEST_CLUSTER})


def gpu_cluster() -> FakeSlurm:
    return FakeSlurm(SCONTROL_GPU_CLUSTER, {"gpu": SINFO_GPU_PARTITION, "cpu": "c1|32|128000|(null)|idle\n"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1-00:00:00", 86400), ("2:30:00", 9000), ("90", 5400), ("30:00", 1800), ("1-12", 129600),
     ("2-01:30", 178200), ("UNLIMITED", None), ("INFINITE", None)],
)  # fmt: skip
def test_slurm_times_are_read_in_seconds(text: str, seconds: int | None) -> None:
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8), ("gpu:a100:4(S:0),gpu:a100:4(S:1)", 8),
     ("gpu:v100:2,mps:100", 2), ("gpu:a100:2(S:0,1)", 2)],
)  # fmt: skip
def test_gpus_are_read_from_gres(gres: str, gpus: int) -> None:
    assert parse_gpus(gres) == gpus


def test_partitions_are_read_from_scontrol() -> None:
    parts = parse_partitions(SCONTROL_TEST_CLUSTER)
    assert sorted(parts) == ["debug", "high"]
    assert parts["debug"].default and not parts["high"].default
    assert parts["debug"].max_time_s == 86400
    assert parts["debug"].max_nodes is None
    assert parts["high"].total_nodes == 2


def test_nodes_are_read_from_sinfo_without_state_suffixes() -> None:
    nodes = parse_nodes(SINFO_GPU_PARTITION)
    assert [(n.name, n.cpus, n.gpus, n.state) for n in nodes] == [
        ("g1", 96, 8, "idle"), ("g2", 96, 8, "allocated"), ("g3", 96, 4, "mixed")
    ]  # fmt: skip


def test_a_request_that_fits_returns_the_default_partition() -> None:
    fake = two_node_cluster()
    part = preflight(SlurmConfig(), nodes=2, tasks_per_node=2, gpus_per_node=0, run=fake)
    assert part.name == "debug"
    assert [n.name for n in part.nodes] == ["n1", "n2"]
    assert fake.calls[1][:2] == ["sinfo", "-h"] and "debug" in fake.calls[1]


def test_gpu_request_that_fits() -> None:
    part = preflight(SlurmConfig(partition="gpu", time_min=600), 2, 8, 8, run=gpu_cluster())
    assert part.name == "gpu"


def refusal(cfg: SlurmConfig, nodes: int, tasks: int, gpus: int, fake: FakeSlurm) -> str:
    with pytest.raises(SlurmPreflightError) as raised:
        preflight(cfg, nodes, tasks, gpus, run=fake)
    return str(raised.value)


def test_unknown_partition_lists_the_ones_that_exist() -> None:
    message = refusal(SlurmConfig(partition="gpus"), 1, 1, 0, two_node_cluster())
    assert "cluster.partition=gpus" in message
    assert "debug, high" in message


def test_more_nodes_than_the_partition_has() -> None:
    message = refusal(SlurmConfig(), 3, 1, 0, two_node_cluster())
    assert "trainer.num_nodes=3" in message and "at most 2" in message


def test_more_nodes_than_the_partition_allows_per_job() -> None:
    message = refusal(SlurmConfig(partition="gpu"), 5, 1, 1, gpu_cluster())
    assert "trainer.num_nodes=5" in message and "at most 4" in message


def test_more_cpus_per_node_than_a_node_has() -> None:
    message = refusal(SlurmConfig(cpus_per_task=3), 1, 4, 0, two_node_cluster())
    assert "cluster.cpus_per_task=3" in message and "12 CPUs per node" in message and "at most 8" in message


def test_partition_cpu_limit_counts() -> None:
    message = refusal(SlurmConfig(partition="gpu", cpus_per_task=12), 1, 8, 8, gpu_cluster())
    assert "96 CPUs per node" in message and "at most 64" in message


def test_more_gpus_than_a_node_has() -> None:
    message = refusal(SlurmConfig(partition="gpu"), 1, 16, 16, gpu_cluster())
    assert "cluster.gpus_per_node=16" in message and "at most 8" in message


def test_gpus_on_a_cpu_partition() -> None:
    message = refusal(SlurmConfig(), 1, 2, 2, two_node_cluster())
    assert "at most 0 GPU(s)" in message


def test_time_limit_above_the_partitions() -> None:
    message = refusal(SlurmConfig(time_min=1441), 1, 1, 0, two_node_cluster())
    assert "cluster.time_min=1441" in message and "at most 1440 minutes" in message


def test_too_much_memory() -> None:
    message = refusal(SlurmConfig(mem_gb=64), 1, 1, 0, two_node_cluster())
    assert "cluster.mem_gb=64" in message


def test_too_few_nodes_with_enough_gpus() -> None:
    # Every node has 4+ GPUs but only g1 and g2 have 8: three 8-GPU nodes cannot be found.
    message = refusal(SlurmConfig(partition="gpu"), 3, 8, 8, gpu_cluster())
    assert "only 2 node(s)" in message


def test_partition_that_is_down() -> None:
    message = refusal(SlurmConfig(partition="old", time_min=10), 1, 1, 0, gpu_cluster())
    assert "cluster.partition=old is DOWN" in message


def test_missing_slurm_commands_say_what_to_do() -> None:
    def missing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(args[0])

    with pytest.raises(SlurmCommandError, match="`scontrol` not found"):
        preflight(SlurmConfig(), 1, 1, 0, run=missing)


def test_failing_slurm_command_shows_its_error() -> None:
    def failing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            args, 1, stdout="", stderr="slurm_load_partitions: Unable to contact"
        )

    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        preflight(SlurmConfig(), 1, 1, 0, run=failing)
