"""The callable that submitit pickles into a Slurm job: on every task (rank), train the run in its directory.

submitit pickles this class by reference, so the job imports this module from the code snapshot that the
launcher puts first on the job's PYTHONPATH: keep it small, and keep its state to plain strings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def current_job_id(environ: dict[str, str] | None = None) -> str | None:
    """This job's id as sacct and submitit name it: `<array job>_<task>` in an array, else the job id."""
    env = os.environ if environ is None else environ
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return env.get("SLURM_JOB_ID")


class SlurmRankJob:
    """Runs `launcher.rank_main` on the run directory; srun starts one such task per rank."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self) -> None:
        """Train (or resume from checkpoints/last.ckpt): the same entry point that local ranks run."""
        from launcher import rank_main

        run_dir = Path(self.run_dir)
        if rank_main.global_rank() == 0:
            record_start(run_dir)
        rank_main.run(run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook, called on global rank 0 when the preemption or time-out signal arrives.

        Returning a submission of this same callable makes submitit requeue the job; the requeued job runs
        in the same run directory and resumes from its newest committed `last.ckpt`. (Saving a fresh
        checkpoint on every rank before the requeue is the trainer's part of preemption handling.)
        """
        from submitit.helpers import DelayedSubmission

        log.info("requeueing %s after the preemption or time-out signal", self.run_dir)
        return DelayedSubmission(SlurmRankJob(self.run_dir))


def record_start(run_dir: Path) -> None:
    """Global rank zero notes in run.json that the job runs: its status, job id, nodes and restart count."""
    from launcher import rundir

    manifest = rundir.read_manifest(run_dir)
    job_ids = list(manifest.get("slurm_job_ids") or [])
    job_id = current_job_id()
    if job_id and job_id not in job_ids:
        # The launcher records the id after submitting; a job that starts first must not lose it.
        job_ids.append(job_id)
    rundir.update_manifest(
        run_dir,
        status="running",
        slurm_job_ids=job_ids,
        slurm_nodes=os.environ.get("SLURM_JOB_NODELIST", ""),
        slurm_restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        # Where this job's code came from: the snapshot taken at submission, never the working tree.
        code_imported_from=str(Path(__file__).resolve().parents[1]),
    )
