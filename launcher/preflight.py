"""Checks that need more than the config: GPUs present (torch imported only then), user classes."""

from __future__ import annotations

import os
from pathlib import Path

from launcher.config import JobConfig
from launcher.errors import ConfigError, LaunchError
from launcher.targets import check_arguments


def gpu_count() -> int:
    """The number of visible CUDA devices; 0 without importing torch (slow) when no GPU driver is present."""
    driver_present = (
        Path("/proc/driver/nvidia").exists()
        or any(Path("/dev").glob("nvidia[0-9]*"))
        or Path("/dev/kfd").exists()
    )
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not driver_present:
        return 0
    import torch

    return int(torch.cuda.device_count())


def check_resources(job: JobConfig) -> None:
    """Refuse requests this machine (or, with a cluster, the Slurm partition) cannot serve."""
    if job.cluster is not None:
        check_slurm_partition(job)
        return
    trainer = job.trainer
    wants_gpu = trainer.accelerator in ("gpu", "cuda")
    if not (wants_gpu or trainer.precision == "16-mixed"):
        return
    available = gpu_count()
    if wants_gpu and available < trainer.devices:
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} with trainer.devices={trainer.devices}: this "
            f"machine has {available} GPU(s). Use trainer.accelerator=cpu (or auto), lower trainer.devices, "
            "or submit to a cluster with +cluster=slurm."
        )
    if trainer.precision == "16-mixed" and available == 0:
        raise ConfigError(
            f"trainer.precision=16-mixed: float16 mixed precision needs a GPU, and trainer.accelerator="
            f"{trainer.accelerator} resolves to CPU here (no GPU found). "
            "Use trainer.precision=bf16-mixed or 32-true."
        )


def check_slurm_partition(job: JobConfig) -> None:
    """Ask the cluster (scontrol, sinfo) whether the partition can run the job; nothing is submitted."""
    from slurm.errors import SlurmCommandError, SlurmPreflightError
    from slurm.params import resolve_gpus_per_node
    from slurm.preflight import preflight

    cluster, trainer = job.cluster, job.trainer
    if cluster is None:
        return
    gpus = resolve_gpus_per_node(cluster, trainer.devices, trainer.accelerator)
    try:
        preflight(cluster, trainer.num_nodes, trainer.devices, gpus)
    except SlurmPreflightError as error:
        raise ConfigError(str(error)) from None
    except SlurmCommandError as error:
        raise LaunchError(f"+cluster=slurm: cannot ask the cluster about the job: {error}") from None


def check_targets(job: JobConfig) -> None:
    """Import the model and data classes and check their arguments, before any rank starts."""
    check_arguments(job.model, "model")
    check_arguments(job.data, "data")
