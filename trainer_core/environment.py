"""The rank layout of this process: read once from torchrun's or Slurm's variables, or one process alone.

This is the only module that reads `RANK`, `SLURM_*` and friends. It takes the environment as a mapping so a
test passes a dict, and it never touches `torch.distributed`: mismatches between the user's settings and the
launcher's layout are reported here, before any process group exists.

Master port policy under Slurm: when `MASTER_PORT` is not set, every rank derives the same port from the job
id (`15000 + job_id % 20000`), with no communication. Only the master host can check that port, so global
rank 0 binds it before the process group starts (`check_master_port`); if it is taken, rank 0 fails at once
with the port, the job id and the fix (set `MASTER_PORT`). Falling back to another port silently is not safe:
the other ranks, on other hosts, cannot learn which port rank 0 moved to without the very rendezvous the port
is for, so they would wait on the wrong one.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from trainer_core.errors import DistributedError, MisconfigurationError

EnvironmentSource = Literal["torchrun", "slurm", "single"]

# Variable names, one table per launcher (submitit's job_environment.py keeps them the same way).
TORCHRUN_VARIABLES = {
    "rank": "RANK",
    "local_rank": "LOCAL_RANK",
    "world_size": "WORLD_SIZE",
    "local_world_size": "LOCAL_WORLD_SIZE",
    "node_rank": "GROUP_RANK",
    "master_addr": "MASTER_ADDR",
    "master_port": "MASTER_PORT",
    "agent_store": "TORCHELASTIC_USE_AGENT_STORE",
}
SLURM_VARIABLES = {
    "rank": "SLURM_PROCID",
    "local_rank": "SLURM_LOCALID",
    "world_size": "SLURM_NTASKS",
    "num_nodes": "SLURM_NNODES",
    "node_rank": "SLURM_NODEID",
    "job_id": "SLURM_JOB_ID",
    "step_id": "SLURM_STEP_ID",
    "job_name": "SLURM_JOB_NAME",
}
# Values read from the first of several variables that is set.
SLURM_FALLBACKS = {
    # SLURM_NTASKS_PER_NODE is set only with --ntasks-per-node; the step's own layout is always there.
    "tasks_per_node": ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"),
    "nodelist": ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
}
# Job names with which Lightning users mark an interactive allocation whose shell is not a task of the job.
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
PORT_BASE = 15000
PORT_SPAN = 20000


@dataclass(frozen=True)
class RankEnvironment:
    """Where this process sits in the job: its ranks, the job's size and the rendezvous address."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    source: EnvironmentSource
    job_id: str | None = None
    # True under torchrun when its agent already hosts the rendezvous store on master_port.
    agent_store: bool = False

    @property
    def is_distributed(self) -> bool:
        """Whether the job has more than one rank."""
        return self.world_size > 1

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None) -> RankEnvironment:
        """Read the layout from torchrun's variables, else from an `srun` step's, else one process."""
        if env is None:
            import os

            env = os.environ
        if TORCHRUN_VARIABLES["rank"] in env and TORCHRUN_VARIABLES["world_size"] in env:
            return _from_torchrun(env)
        if _is_srun_step(env):
            return _from_slurm(env)
        return cls(0, 0, 1, 1, 0, 1, "127.0.0.1", 0, "single", env.get(SLURM_VARIABLES["job_id"]))


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    """An integer variable; a malformed one names the variable instead of a bare int() error."""
    raw = env.get(key)
    if raw is None:
        if default is None:
            raise MisconfigurationError(
                f"The environment variable {key} is missing. HINT: start the job with "
                "torchrun or srun, which set it, or unset the other rank variables."
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise MisconfigurationError(f"The environment variable {key}={raw!r} is not an integer.") from None


def _first(env: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    """The first of `keys` that is set."""
    return next((env[key] for key in keys if key in env), None)


def _from_torchrun(env: Mapping[str, str]) -> RankEnvironment:
    names = TORCHRUN_VARIABLES
    world_size = _int(env, names["world_size"])
    local_world_size = _int(env, names["local_world_size"], default=world_size)
    return RankEnvironment(
        rank=_int(env, names["rank"]),
        local_rank=_int(env, names["local_rank"], default=0),
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=_int(env, names["node_rank"], default=0),
        num_nodes=max(1, world_size // max(1, local_world_size)),
        master_addr=env.get(names["master_addr"], "127.0.0.1"),
        master_port=_int(env, names["master_port"], default=29500),
        source="torchrun",
        job_id=env.get("TORCHELASTIC_RUN_ID") or env.get(SLURM_VARIABLES["job_id"]),
        agent_store=env.get(names["agent_store"]) == "True",
    )


def _is_srun_step(env: Mapping[str, str]) -> bool:
    """A task of an `srun` step; a batch or interactive shell alone is one process, not rank 0 of many."""
    names = SLURM_VARIABLES
    if names["world_size"] not in env:
        return False
    if env.get(names["job_name"]) in INTERACTIVE_JOB_NAMES:
        return False
    return names["step_id"] in env or names["rank"] in env


def _from_slurm(env: Mapping[str, str]) -> RankEnvironment:
    names = SLURM_VARIABLES
    node_rank = _int(env, names["node_rank"], default=0)
    tasks_per_node = parse_tasks_per_node(_first(env, SLURM_FALLBACKS["tasks_per_node"]) or "")
    world_size = _int(env, names["world_size"])
    local_world_size = tasks_per_node[node_rank] if node_rank < len(tasks_per_node) else world_size
    hosts = parse_nodelist(_first(env, SLURM_FALLBACKS["nodelist"]) or "")
    job_id = env.get(names["job_id"])
    return RankEnvironment(
        rank=_int(env, names["rank"], default=0),
        local_rank=_int(env, names["local_rank"], default=0),
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=_int(env, names["num_nodes"], default=max(1, len(hosts))),
        master_addr=env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else derive_master_port(job_id),
        source="slurm",
        job_id=job_id,
    )


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: `a[1,2],b` -> `a[1,2]`, `b`."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _expand_range_list(ranges: str, nodelist: str) -> list[str]:
    """`01-03,07` -> `01 02 03 07`, keeping the zero padding of each range's first number."""
    values: list[str] = []
    for item in ranges.split(","):
        first, _, last = item.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise MisconfigurationError(
                f"SLURM_JOB_NODELIST={nodelist!r} has a range {item!r} that is not `N` or `N-M`. "
                "HINT: set MASTER_ADDR to the first host to skip parsing the node list."
            )
        width = len(first)
        values.extend(str(number).zfill(width) for number in range(int(first), int(last or first) + 1))
    return values


def _expand_host(pattern: str, nodelist: str) -> list[str]:
    """Every host one pattern names; several bracket groups multiply (`r[1-2]n[1-2]` is four hosts)."""
    match = re.search(r"\[([^\[\]]*)\]", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        host
        for value in _expand_range_list(match.group(1), nodelist)
        for host in _expand_host(head + value + tail, nodelist)
    ]


def parse_nodelist(nodelist: str) -> list[str]:
    """Slurm's compact host list in full: `node[01-03,07],gpu5` -> node01 node02 node03 node07 gpu5."""
    return [host for pattern in _split_top_level(nodelist) for host in _expand_host(pattern, nodelist)]


def parse_tasks_per_node(tasks_per_node: str) -> list[int]:
    """Slurm's per-node task counts in full: `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in _split_top_level(tasks_per_node):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if match is None:
            raise MisconfigurationError(
                f"SLURM_TASKS_PER_NODE={tasks_per_node!r} has an entry {item!r} that is not `N` or `N(xM)`."
            )
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def derive_master_port(job_id: str | None) -> int:
    """The rendezvous port every rank of a Slurm job computes alike: 15000 + job_id % 20000."""
    if job_id is None:
        return PORT_BASE
    digits = re.sub(r"\D", "", job_id)  # array tasks may read as "123_4"
    return PORT_BASE + int(digits or 0) % PORT_SPAN


def is_port_free(host: str, port: int) -> bool:
    """Whether this host can listen on `port` (as the rendezvous store will, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_master_port(env: RankEnvironment) -> None:
    """On rank 0 of a Slurm job, fail at once with the fix if the rendezvous port is taken.

    Under torchrun the agent already listens there, so only Slurm jobs are checked. Binding on all interfaces
    is what the rendezvous store does, so that is what is probed.
    """
    if env.source != "slurm" or env.rank != 0 or is_port_free("", env.master_port):
        return
    raise DistributedError(
        f"Rank 0 of Slurm job {env.job_id} cannot listen on MASTER_PORT={env.master_port} on "
        f"{socket.gethostname()}: another process holds it. HINT: set MASTER_PORT to a free port in the "
        "job's environment (the same value on every node), e.g. `export MASTER_PORT=29517` in the setup "
        "lines."
    )


def validate(env: RankEnvironment, devices: int, num_nodes: int, accelerator: str, visible_gpus: int) -> None:
    """Raise `MisconfigurationError` when the trainer's settings and the launcher's layout disagree.

    `devices` and `num_nodes` are the resolved integers of the Trainer arguments. Called before any process
    group exists, so a wrong layout fails in seconds instead of hanging at the rendezvous.
    """
    if env.source == "single":
        _validate_single(devices, num_nodes)
    elif env.source == "slurm":
        _validate_slurm(env, devices, num_nodes)
    else:
        _validate_torchrun(env, devices, num_nodes)
    _validate_gpus(env, accelerator, visible_gpus)


def _validate_single(devices: int, num_nodes: int) -> None:
    if devices > 1 or num_nodes > 1:
        nnodes = f"--nnodes={num_nodes} " if num_nodes > 1 else ""
        raise MisconfigurationError(
            f"You set devices={devices} and num_nodes={num_nodes}, but this process was started alone: "
            "neither torchrun (RANK, WORLD_SIZE) nor srun (SLURM_NTASKS, SLURM_PROCID) rank variables are "
            f"set. HINT: launch it with `launch trainer.devices={devices}` or "
            f"`torchrun --nproc-per-node={devices} {nnodes}train.py`, or set devices=1."
        )


def _validate_slurm(env: RankEnvironment, devices: int, num_nodes: int) -> None:
    if devices != env.local_world_size:
        raise MisconfigurationError(
            f"You set devices={devices}, but Slurm says SLURM_NTASKS_PER_NODE={env.local_world_size} "
            f"(tasks on node {env.node_rank}). HINT: set devices={env.local_world_size}, or submit with "
            f"`--ntasks-per-node={devices}` (one task per device)."
        )
    if num_nodes != env.num_nodes:
        raise MisconfigurationError(
            f"You set num_nodes={num_nodes}, but Slurm says SLURM_NNODES={env.num_nodes}. "
            f"HINT: set num_nodes={env.num_nodes}, or submit with `--nodes={num_nodes}`."
        )


def _validate_torchrun(env: RankEnvironment, devices: int, num_nodes: int) -> None:
    if devices != env.local_world_size:
        raise MisconfigurationError(
            f"You set devices={devices}, but torchrun says LOCAL_WORLD_SIZE={env.local_world_size}. "
            f"HINT: set devices={env.local_world_size}, or run `torchrun --nproc-per-node={devices}`."
        )
    if env.world_size != devices * num_nodes:
        raise MisconfigurationError(
            f"You set devices={devices} and num_nodes={num_nodes} ({devices * num_nodes} ranks), but "
            f"torchrun says WORLD_SIZE={env.world_size}. "
            f"HINT: set num_nodes={env.world_size // max(1, devices)}, or run "
            f"`torchrun --nnodes={num_nodes} --nproc-per-node={devices}`."
        )


def _validate_gpus(env: RankEnvironment, accelerator: str, visible_gpus: int) -> None:
    if accelerator not in ("gpu", "cuda"):
        return
    needed = env.local_world_size
    if visible_gpus < needed:
        raise MisconfigurationError(
            f"You set accelerator={accelerator!r} with {needed} rank(s) on this node, but this process sees "
            f"{visible_gpus} GPU(s) (CUDA_VISIBLE_DEVICES, or the GPUs Slurm granted). HINT: request "
            f"{needed} GPU(s) per node (`--gpus-per-node={needed}`), lower devices, or set accelerator='cpu'."
        )
