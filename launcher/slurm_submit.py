"""The Slurm backend: submit prepared run directories through submitit, one job or one job array per sweep.

A run directory is prepared exactly as for a local run (config.yaml, run.json). Submission adds:
`<run>/slurm/` (submitit's folder: the pickled job, `<job id>_<task>_log.out|err` per rank, results) and a
code snapshot that the job imports instead of the working tree. A sweep (`launch -m`) collects its jobs while
Hydra's basic launcher walks the sweep and submits them together at the end as one array per distinct
resource request; its jobs share `<sweep>/slurm/` and `<sweep>/code/`, and each job's `<run>/slurm` links
to the shared folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import rundir
from launcher.config import JobConfig, SlurmConfig
from launcher.errors import LaunchError
from launcher.slurm_job import SlurmRankJob
from launcher.snapshot import python_path, snapshot_for_job

log = logging.getLogger(__name__)

SLURM_DIR = "slurm"


@dataclass
class Submitted:
    """A run directory and the Slurm job that runs it."""

    run_dir: Path
    job_id: str


@dataclass
class _Queued:
    run_dir: Path
    job: JobConfig


# Sweep jobs prepared by Hydra's launcher in this process, submitted together by `submit_queued`.
_queue: list[_Queued] = []


def _cluster(job: JobConfig) -> SlurmConfig:
    if job.cluster is None:
        raise LaunchError("internal: a run without a cluster config reached the Slurm backend")
    return job.cluster


def _targets(job: JobConfig) -> list[str]:
    return [str(group.get("_target_")) for group in (job.model, job.data)]


def job_setup(cluster: SlurmConfig, snapshot: Path) -> list[str]:
    """Shell lines the job runs before srun: snapshot imports, one thread per CPU, then the user's lines."""
    threads = cluster.cpus_per_task or 1
    return [
        f"export PYTHONPATH={shlex.quote(python_path(snapshot, Path.cwd()))}",
        # Python 3.11+: `python -m` must not put the job's cwd (perhaps the working tree) before the snapshot.
        "export PYTHONSAFEPATH=1",
        # Ranks share the node's cores; torch would start one thread per core in each of them.
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}",
        *cluster.setup,
    ]


def make_job_executor(folder: Path, job: JobConfig, snapshot: Path) -> Any:
    """The submitit executor for the job's resources, with the snapshot on the job's PYTHONPATH."""
    from slurm.params import make_executor

    cluster = _cluster(job)
    named = dataclasses.replace(
        cluster, job_name=cluster.job_name or job.run.experiment, setup=job_setup(cluster, snapshot)
    )
    trainer = job.trainer
    return make_executor(folder, named, trainer.devices, trainer.num_nodes, trainer.accelerator)


def submit_run(run_dir: Path, job: JobConfig) -> Submitted:
    """Submit one run directory as one Slurm job and record the job id in its run.json."""
    folder = run_dir / SLURM_DIR
    snapshot = snapshot_for_job(run_dir, _targets(job))
    executor = make_job_executor(folder, job, snapshot)
    mark_submitting(run_dir, folder, snapshot)
    submitted = executor.submit(SlurmRankJob(str(run_dir)))
    record_job_id(run_dir, str(submitted.job_id))
    return Submitted(run_dir, str(submitted.job_id))


def queue_run(run_dir: Path, job: JobConfig) -> None:
    """Hold a prepared sweep job until the sweep is complete (`submit_queued` sends them as arrays)."""
    _queue.append(_Queued(run_dir, job))


def submit_queued() -> list[Submitted]:
    """Submit the queued sweep jobs: one job array per distinct resource request; empty the queue."""
    groups: dict[str, list[_Queued]] = {}
    for queued in _queue:
        groups.setdefault(_resource_key(queued.job), []).append(queued)
    _queue.clear()
    submitted: list[Submitted] = []
    for members in groups.values():
        submitted.extend(_submit_array(members))
    return submitted


def _resource_key(job: JobConfig) -> str:
    """Jobs with equal keys can share one array (an array has one sbatch script)."""
    cluster = dataclasses.asdict(_cluster(job))
    trainer = job.trainer
    layout = (trainer.devices, trainer.num_nodes, trainer.accelerator, job.run.experiment)
    return json.dumps([cluster, layout], sort_keys=True, default=str)


def _submit_array(members: list[_Queued]) -> list[Submitted]:
    sweep_dir = members[0].run_dir.parent
    folder = sweep_dir / SLURM_DIR
    targets = [target for member in members for target in _targets(member.job)]
    snapshot = snapshot_for_job(sweep_dir, targets)
    executor = make_job_executor(folder, members[0].job, snapshot)
    for member in members:
        _link_shared_folder(member.run_dir, folder)
        mark_submitting(member.run_dir, folder, snapshot)
    with executor.batch():
        jobs = [executor.submit(SlurmRankJob(str(member.run_dir))) for member in members]
    submitted = []
    for member, slurm_job in zip(members, jobs):
        record_job_id(member.run_dir, str(slurm_job.job_id))
        submitted.append(Submitted(member.run_dir, str(slurm_job.job_id)))
    log.info("submitted %d job(s) as array %s", len(jobs), str(jobs[0].job_id).split("_")[0])
    return submitted


def _link_shared_folder(run_dir: Path, folder: Path) -> None:
    """`<run>/slurm` -> the sweep's submitit folder, so every run directory shows where its logs are."""
    link = run_dir / SLURM_DIR
    if link.is_symlink() or not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(folder, run_dir), target_is_directory=True)


def mark_submitting(run_dir: Path, folder: Path, snapshot: Path) -> None:
    """Before submitting: run.json says "submitted" and names submitit's folder and the code snapshot."""
    rundir.update_manifest(run_dir, status="submitted", slurm_folder=str(folder), code_snapshot=str(snapshot))


def record_job_id(run_dir: Path, job_id: str) -> None:
    """After submitting: add the job id to run.json (the job itself may have started and added it)."""
    job_ids = list(rundir.read_manifest(run_dir).get("slurm_job_ids") or [])
    if job_id not in job_ids:
        rundir.update_manifest(run_dir, slurm_job_ids=[*job_ids, job_id])


def reason_not_to_resubmit(run_dir: Path) -> str | None:
    """Why a sweep job of an earlier submission must not be submitted again, or None when it should be.

    A job is left alone when its run completed, or when Slurm still has it queued or running; a job that
    failed, was cancelled or timed out is submitted again and resumes from its last.ckpt.
    """
    from slurm.accounting import query_jobs

    manifest = rundir.read_manifest(run_dir)
    if manifest.get("status") == "completed":
        return "completed"
    job_ids = manifest.get("slurm_job_ids") or []
    if not job_ids:
        return None
    info = query_jobs([job_ids[-1]]).get(job_ids[-1])
    if info is None:
        return None
    if info.state == "COMPLETED":
        return f"completed as job {info.job_id}"
    if info.is_active:
        return f"{info.state.lower()} as job {info.job_id}"
    return None
