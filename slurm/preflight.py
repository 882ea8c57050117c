"""Preflight: ask the cluster (`scontrol`, `sinfo`) whether a request can run, before submitting it."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slurm.errors import SlurmCommandError, SlurmPreflightError
from slurm.params import SlurmConfig

log = logging.getLogger(__name__)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
UNLIMITED = ("UNLIMITED", "INFINITE")
# `sinfo -N` columns: node name, CPUs, memory (MB), generic resources, state.
SINFO_NODE_FORMAT = "%N|%c|%m|%G|%T"


@dataclass(frozen=True)
class NodeInfo:
    """One node of a partition as `sinfo -N` reports it."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    state: str


@dataclass(frozen=True)
class PartitionInfo:
    """A partition as `scontrol show partition -o` reports it, with its nodes from `sinfo`."""

    name: str
    default: bool
    state: str  # UP, DOWN, DRAIN or INACTIVE
    max_time_s: int | None  # None: no limit
    max_nodes: int | None  # None: no limit
    max_cpus_per_node: int | None  # None: no limit
    total_nodes: int
    nodes: tuple[NodeInfo, ...] = ()


def parse_slurm_time(text: str) -> int | None:
    """Seconds in a Slurm time ("1-00:00:00", "2:30:00", "90", "UNLIMITED"); None when unlimited."""
    text = text.strip()
    if text.upper() in UNLIMITED:
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match is None:
        raise SlurmCommandError(f"cannot read the Slurm time {text!r} (expected e.g. 1-00:00:00 or 90)")
    days, second, third = (int(part) if part else None for part in match.group(1, 3, 4))
    first = int(match.group(2))
    if days is not None:  # days-hours[:minutes[:seconds]]
        return days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    if third is not None:  # hours:minutes:seconds
        return first * 3600 + (second or 0) * 60 + third
    if second is not None:  # minutes:seconds
        return first * 60 + second
    return first * 60  # minutes


def parse_gpus(gres: str) -> int:
    """GPUs in a `sinfo %G` value: "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:2" -> 4; "(null)" -> 0."""
    without_sockets = re.sub(r"\([^)]*\)", "", gres)
    total = 0
    for item in without_sockets.split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _limit(value: str) -> int | None:
    return None if value.upper() in UNLIMITED else int(value)


def parse_partitions(text: str) -> dict[str, PartitionInfo]:
    """Partitions from `scontrol show partition -o` (one line of Key=Value pairs per partition)."""
    found: dict[str, PartitionInfo] = {}
    for line in text.splitlines():
        fields = dict(pair.split("=", 1) for pair in line.split() if "=" in pair)
        if "PartitionName" not in fields:
            continue
        name = fields["PartitionName"]
        found[name] = PartitionInfo(
            name=name,
            default=fields.get("Default", "NO") == "YES",
            state=fields.get("State", "UP"),
            max_time_s=parse_slurm_time(fields.get("MaxTime", "UNLIMITED")),
            max_nodes=_limit(fields.get("MaxNodes", "UNLIMITED")),
            max_cpus_per_node=_limit(fields.get("MaxCPUsPerNode", "UNLIMITED")),
            total_nodes=int(fields.get("TotalNodes", "0")),
        )
    return found


def parse_nodes(text: str) -> tuple[NodeInfo, ...]:
    """Nodes from `sinfo -h -N -o '%N|%c|%m|%G|%T'` (a node listed twice is counted once)."""
    nodes: dict[str, NodeInfo] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, cpus, memory, gres, state = line.strip().split("|")
        # Node state suffixes ("*" not responding, "~" powered off, ...) are not part of the state.
        nodes[name] = NodeInfo(
            name, int(cpus), int(memory.rstrip("+")), parse_gpus(gres), state.rstrip("*~#!%$@^-")
        )
    return tuple(nodes.values())


def _run(run: Runner, args: Sequence[str]) -> str:
    try:
        done = run(list(args), capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise SlurmCommandError(
            f"`{args[0]}` not found: submitting to Slurm needs the Slurm client commands on PATH "
            "(run launch on a login node of the cluster, or load its module)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError(f"`{' '.join(args)}` did not answer within 30 s: is slurmctld up?") from None
    if done.returncode != 0:
        raise SlurmCommandError(f"`{' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return str(done.stdout)


def _select_partition(partitions: dict[str, PartitionInfo], wanted: str | None) -> PartitionInfo:
    names = ", ".join(sorted(partitions)) or "(none)"
    if wanted is None:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            raise SlurmPreflightError(
                f"cluster.partition=null but the cluster has no default partition: set cluster.partition "
                f"to one of: {names}"
            )
        return defaults[0]
    if wanted not in partitions:
        raise SlurmPreflightError(
            f"cluster.partition={wanted}: no such partition on this cluster; use one of: {names}"
        )
    return partitions[wanted]


def _check_limits(part: PartitionInfo, cfg: SlurmConfig, nodes: int) -> None:
    if part.state != "UP":
        raise SlurmPreflightError(
            f"cluster.partition={part.name} is {part.state}: jobs there would not start; choose another "
            "partition (sinfo lists them) or wait until it is UP"
        )
    limit = part.total_nodes if part.max_nodes is None else min(part.max_nodes, part.total_nodes)
    if nodes > limit:
        raise SlurmPreflightError(
            f"trainer.num_nodes={nodes}: partition {part.name} allows at most {limit} node(s) per job; "
            f"lower trainer.num_nodes or choose a larger partition (cluster.partition)"
        )
    if part.max_time_s is not None and cfg.time_min * 60 > part.max_time_s:
        raise SlurmPreflightError(
            f"cluster.time_min={cfg.time_min}: partition {part.name} allows at most "
            f"{part.max_time_s // 60} minutes per job; set cluster.time_min<={part.max_time_s // 60} "
            "(a requeued job continues from its checkpoint) or choose another partition"
        )


def _check_node_resources(part: PartitionInfo, cfg: SlurmConfig, nodes: int, tasks: int, gpus: int) -> None:
    cpus = tasks * (cfg.cpus_per_task or 1)
    most_cpus = max(node.cpus for node in part.nodes)
    if part.max_cpus_per_node is not None:
        most_cpus = min(most_cpus, part.max_cpus_per_node)
    if cpus > most_cpus:
        raise SlurmPreflightError(
            f"trainer.devices={tasks} tasks per node x cluster.cpus_per_task={cfg.cpus_per_task or 1} = "
            f"{cpus} CPUs per node: nodes of partition {part.name} have at most {most_cpus}. Lower "
            "cluster.cpus_per_task or trainer.devices (Slurm would keep such a job pending forever)"
        )
    most_gpus = max(node.gpus for node in part.nodes)
    if gpus > most_gpus:
        raise SlurmPreflightError(
            f"cluster.gpus_per_node={gpus} (one per device): nodes of partition {part.name} have at most "
            f"{most_gpus} GPU(s); lower trainer.devices or choose a GPU partition (cluster.partition)"
        )
    memory_mb = int((cfg.mem_gb or 0) * 1024)
    most_memory = max(node.memory_mb for node in part.nodes)
    if memory_mb > most_memory:
        raise SlurmPreflightError(
            f"cluster.mem_gb={cfg.mem_gb}: nodes of partition {part.name} have at most "
            f"{most_memory / 1024:.1f} GB; lower cluster.mem_gb or leave it unset (null)"
        )
    fitting = [n for n in part.nodes if n.cpus >= cpus and n.gpus >= gpus and n.memory_mb >= memory_mb]
    if len(fitting) < nodes:
        raise SlurmPreflightError(
            f"trainer.num_nodes={nodes}: only {len(fitting)} node(s) of partition {part.name} have "
            f"{cpus} CPUs, {gpus} GPU(s) and {memory_mb} MB each; lower trainer.num_nodes or the per-node "
            "request"
        )


def preflight(
    cfg: SlurmConfig, nodes: int, tasks_per_node: int, gpus_per_node: int, run: Runner = subprocess.run
) -> PartitionInfo:
    """Check the request against the partition; raise SlurmPreflightError naming the key, value and fix.

    `run` runs the Slurm commands (subprocess.run's signature); tests pass a fake that returns captured text.
    Returns the partition (with its nodes) that the job will go to.
    """
    partitions = parse_partitions(_run(run, ["scontrol", "show", "partition", "-o"]))
    part = _select_partition(partitions, cfg.partition)
    _check_limits(part, cfg, nodes)
    listed = parse_nodes(_run(run, ["sinfo", "-h", "-N", "-p", part.name, "-o", SINFO_NODE_FORMAT]))
    if not listed:
        raise SlurmPreflightError(
            f"cluster.partition={part.name} has no nodes: choose another partition (sinfo lists them)"
        )
    part = dataclasses.replace(part, nodes=listed)
    _check_node_resources(part, cfg, nodes, tasks_per_node, gpus_per_node)
    log.info("preflight: %d node(s) x %d task(s) fit partition %s", nodes, tasks_per_node, part.name)
    return part
