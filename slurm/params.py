"""The `cluster.*` schema of a Slurm submission and its mapping to submitit's executor parameters."""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurm.errors import SlurmConfigError

if TYPE_CHECKING:
    import submitit

GPU_ACCELERATORS = ("gpu", "cuda")
DEFAULT_JOB_NAME = "hpc-launch"

# sbatch options that have a field of their own: setting them through additional_parameters too would
# give two sources of truth (and submitit would silently let the later one win).
_RESERVED_SBATCH_KEYS = {
    "partition": "cluster.partition",
    "account": "cluster.account",
    "qos": "cluster.qos",
    "time": "cluster.time_min",
    "cpus_per_task": "cluster.cpus_per_task",
    "mem": "cluster.mem_gb",
    "gpus_per_node": "cluster.gpus_per_node",
    "constraint": "cluster.constraint",
    "exclusive": "cluster.exclusive",
    "job_name": "cluster.job_name",
    "signal": "cluster.signal and cluster.signal_delay_s",
    "requeue": "cluster.requeue",
    "no_requeue": "cluster.requeue",
    "nodes": "trainer.num_nodes",
    "ntasks_per_node": "trainer.devices",
    "ntasks": "trainer.devices and trainer.num_nodes",
    "output": "the run directory (submitit writes logs there)",
    "error": "the run directory (submitit writes logs there)",
    "array": "a multirun sweep (launch -m)",
}

# AutoExecutor's generic names -> the sbatch keyword names of submitit's SlurmExecutor (submitit 1.5's
# SlurmExecutor._equivalence_dict; a unit test keeps the two equal).
AUTO_TO_SLURM_NAMES = {
    "name": "job_name",
    "timeout_min": "time",
    "mem_gb": "mem",
    "nodes": "nodes",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node",
    "tasks_per_node": "ntasks_per_node",
}


@dataclass
class SlurmConfig:
    """`+cluster=slurm`: what a Slurm job asks for. Nodes and tasks come from trainer.num_nodes/devices."""

    partition: str | None = None  # --partition; None: the cluster's default partition
    account: str | None = None  # --account charged for the job; None: the user's default account
    qos: str | None = None  # --qos (quality of service); None: the association's default
    time_min: int = 60  # --time, in minutes; the signal arrives signal_delay_s before it runs out
    cpus_per_task: int | None = None  # --cpus-per-task (one task per device); None: Slurm's default, 1
    mem_gb: float | None = None  # --mem per node, in GB; None: the partition's default
    gpus_per_node: int | None = None  # --gpus-per-node; None: trainer.devices on a GPU accelerator, else 0
    constraint: str | None = None  # --constraint, node features such as "a100"; None: any node
    exclusive: bool = False  # --exclusive: no other job shares the nodes
    job_name: str | None = None  # --job-name; None: "hpc-launch" (the launcher passes the experiment name)
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load, exports)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # other sbatch options, verbatim
    signal: str = "USR2"  # pre-timeout and preemption signal; USR2 because NCCL may catch USR1
    signal_delay_s: int = 120  # seconds before the time limit that the signal arrives
    requeue: bool = True  # --requeue: preempted and timed-out jobs go back to the queue
    max_num_timeout: int = 3  # time-out requeues allowed; preemptions are requeued without limit


def normalize_signal(name: str) -> str:
    """A signal as Slurm and submitit name it ("USR2"), from "USR2", "SIGUSR2", "usr2" or "12"."""
    text = str(name).strip().upper()
    try:
        found = (
            signals.Signals(int(text))
            if text.isdigit()
            else signals.Signals["SIG" + text.removeprefix("SIG")]
        )
    except (KeyError, ValueError):
        raise SlurmConfigError(
            f"cluster.signal={name!r} is not a signal name: use a name such as USR2 (the default) or TERM"
        ) from None
    if found in (signals.SIGKILL, signals.SIGSTOP):
        raise SlurmConfigError(f"cluster.signal={name!r} cannot be caught by the job: use USR2 (the default)")
    return found.name.removeprefix("SIG")


def resolve_gpus_per_node(cfg: SlurmConfig, devices: int, accelerator: str) -> int:
    """GPUs to ask for per node: cluster.gpus_per_node, or trainer.devices on a GPU accelerator, else 0."""
    on_gpu = accelerator.lower() in GPU_ACCELERATORS
    if cfg.gpus_per_node is None:
        return devices if on_gpu else 0
    if cfg.gpus_per_node < 0:
        raise SlurmConfigError(
            f"cluster.gpus_per_node={cfg.gpus_per_node} is negative: use 0 or more, or null"
        )
    if on_gpu and cfg.gpus_per_node < devices:
        raise SlurmConfigError(
            f"cluster.gpus_per_node={cfg.gpus_per_node} is less than trainer.devices={devices} with "
            f"trainer.accelerator={accelerator}: each rank needs its own GPU. Set cluster.gpus_per_node="
            f"{devices}, or leave it unset (null) to follow trainer.devices."
        )
    return cfg.gpus_per_node


def validate(cfg: SlurmConfig, devices: int, num_nodes: int) -> None:
    """Refuse settings that cannot work, before anything asks the cluster."""
    if devices < 1 or num_nodes < 1:
        raise SlurmConfigError(
            f"trainer.devices={devices}, trainer.num_nodes={num_nodes}: both must be at least 1 "
            "(one Slurm task per device on each node)"
        )
    if cfg.time_min < 1:
        raise SlurmConfigError(f"cluster.time_min={cfg.time_min}: the time limit must be at least 1 minute")
    if not 0 <= cfg.signal_delay_s < cfg.time_min * 60:
        raise SlurmConfigError(
            f"cluster.signal_delay_s={cfg.signal_delay_s} with cluster.time_min={cfg.time_min} "
            f"({cfg.time_min * 60} s): the signal must come after the start and before the limit. Use a "
            f"delay from 0 to {cfg.time_min * 60 - 1} s, or raise cluster.time_min."
        )
    if cfg.cpus_per_task is not None and cfg.cpus_per_task < 1:
        raise SlurmConfigError(f"cluster.cpus_per_task={cfg.cpus_per_task}: use 1 or more, or null for 1")
    if cfg.mem_gb is not None and cfg.mem_gb <= 0:
        raise SlurmConfigError(f"cluster.mem_gb={cfg.mem_gb}: use a positive size, or null for the default")
    if cfg.max_num_timeout < 0:
        raise SlurmConfigError(
            f"cluster.max_num_timeout={cfg.max_num_timeout}: use 0 (no time-out requeue) or more"
        )
    _check_additional_parameters(cfg.additional_parameters)


def _check_additional_parameters(extra: dict[str, Any]) -> None:
    for key in extra:
        normalized = _sbatch_key(key)
        if normalized in _RESERVED_SBATCH_KEYS:
            raise SlurmConfigError(
                f"cluster.additional_parameters.{key}={extra[key]!r}: this option is set from "
                f"{_RESERVED_SBATCH_KEYS[normalized]}; set it there and remove it from additional_parameters"
            )


def _additional_parameters(cfg: SlurmConfig, signal_name: str) -> dict[str, Any]:
    # The signal is written explicitly: submitit's own default follows the submitter's environment.
    ours: dict[str, Any] = {"signal": f"{signal_name}@{cfg.signal_delay_s}"}
    ours["requeue" if cfg.requeue else "no_requeue"] = True
    extra = cfg.additional_parameters
    return {**ours, **{_sbatch_key(key): value for key, value in extra.items()}}


def _sbatch_key(key: Any) -> str:
    """An sbatch option as submitit spells it: "--mail-type" and "mail-type" -> "mail_type"."""
    return str(key).lstrip("-").replace("-", "_")


def executor_parameters(cfg: SlurmConfig, devices: int, num_nodes: int, accelerator: str) -> dict[str, Any]:
    """Keyword arguments for `submitit.AutoExecutor.update_parameters`: one task per device per node."""
    validate(cfg, devices, num_nodes)
    signal_name = normalize_signal(cfg.signal)
    gpus = resolve_gpus_per_node(cfg, devices, accelerator)
    params: dict[str, Any] = {
        "name": cfg.job_name or DEFAULT_JOB_NAME,
        "timeout_min": cfg.time_min,
        "nodes": num_nodes,
        "tasks_per_node": devices,
        "cpus_per_task": cfg.cpus_per_task,
        "gpus_per_node": gpus or None,
        "mem_gb": cfg.mem_gb,
        "slurm_partition": cfg.partition,
        "slurm_account": cfg.account,
        "slurm_qos": cfg.qos,
        "slurm_constraint": cfg.constraint,
        "slurm_exclusive": True if cfg.exclusive else None,
        "slurm_signal_delay_s": cfg.signal_delay_s,
        # The job's submitit listens for the same signal that sbatch asks Slurm to send.
        "slurm_setup": [f"export SUBMITIT_PREEMPT_SIGNAL={signal_name}", *cfg.setup],
        "slurm_additional_parameters": _additional_parameters(cfg, signal_name),
        # If one task dies before its process group exists (rank 0 finding its port taken, say), Slurm ends
        # the others instead of leaving them waiting at the rendezvous.
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
    }
    return {key: value for key, value in params.items() if value is not None}


def executor_init_parameters(cfg: SlurmConfig) -> dict[str, Any]:
    """Keyword arguments for the `submitit.AutoExecutor` constructor (update_parameters rejects these)."""
    return {"slurm_max_num_timeout": cfg.max_num_timeout}


def make_executor(
    folder: str | Path, cfg: SlurmConfig, devices: int, num_nodes: int, accelerator: str
) -> submitit.AutoExecutor:
    """A submitit executor for the Slurm cluster, configured from `cluster.*` (needs `srun` on PATH)."""
    # Imported here: the config-error path (`launch` with a bad override) must not pay for submitit.
    import submitit

    params = executor_parameters(cfg, devices, num_nodes, accelerator)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **executor_init_parameters(cfg))
    executor.update_parameters(**params)
    return executor


def sbatch_parameters(auto_params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments submitit's SlurmExecutor renders into the sbatch script, from AutoExecutor's."""
    converted: dict[str, Any] = {}
    for key, value in auto_params.items():
        name = key.removeprefix("slurm_") if key.startswith("slurm_") else AUTO_TO_SLURM_NAMES[key]
        converted[name] = _memory_flag(value) if name == "mem" else value
    return converted


def _memory_flag(mem_gb: float) -> str:
    # As submitit writes it: whole gigabytes as "NGB", fractions in megabytes.
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"
