"""The callable that submitit pickles into a Slurm job: on every task (rank), train the run in its directory.

submitit pickles this class by reference, so the job imports this module from the code snapshot that the
launcher puts first on the job's PYTHONPATH: keep it small, and keep its state to plain strings.

Preemption and time-out, with exactly one requeue owner. Slurm sends the job's `--signal` (USR2 by default,
`cluster.signal`; not USR1, which NCCL may use) to every task. submitit's own handler for it would, on global
rank 0, call `checkpoint()`, run `scontrol requeue` and exit at once, from inside the signal handler: while
the other ranks may still be in a collective or rank 0 itself in the middle of writing last.ckpt. So the task
replaces that handler with a recorder first thing, and the trainer's handler records the signal during fit.
The ranks agree at the next step boundary, save last.ckpt together and fit returns "preempted"; only then
does global rank 0 classify the signal (`slurm.requeue`: preemption or time-out), count it in run.json and
call `scontrol requeue` itself. Every rank then exits without a result; Slurm restarts the job, which finds
last.ckpt in the same run directory and resumes. SIGTERM (scancel, Slurm's own requeue, the end of a
preemption's grace time) also saves last.ckpt, but never requeues: whoever sent it owns what comes next.
A signal that comes before fit is handed to the trainer, which stops at its first step boundary.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError
from launcher.signals import signal_name
from slurm import requeue
from slurm.params import normalize_signal

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
        """Train (or resume from checkpoints/last.ckpt); after a stop signal, requeue from global rank 0.

        A task whose fit was stopped exits through SystemExit, so submitit writes no result for it: the job
        did not complete, and its requeued run writes the result.
        """
        from launcher import rank_main
        from launcher.signals import SignalRecorder, ignore_from_now

        # Replaces submitit's USR2 handler (see the module docstring): this process owns the signal.
        recorder = SignalRecorder().install()
        rank_main.import_for_training()
        run_dir = Path(self.run_dir)
        _remove_stale_result()
        if rank_main.global_rank() == 0:
            record_start(run_dir)
        outcome = rank_main.run(run_dir, recorder=recorder)
        ignore_from_now()
        if outcome.status != "preempted":
            return
        cluster = outcome.job.cluster
        job_signal = normalize_signal(cluster.signal) if cluster is not None else "USR2"
        if rank_main.global_rank() == 0:
            if signal_name(outcome.stop_signal) == f"SIG{job_signal}" and cluster is not None:
                after_job_signal(run_dir, cluster.signal_delay_s, cluster.max_num_timeout)
            else:
                # SIGTERM: the job is being cancelled or killed (scancel, Slurm's own requeue, the end of a
                # preemption's grace time); whoever sent it decides what comes next.
                log.info("stopped by %s: last.ckpt committed, not requeued", signal_name(outcome.stop_signal))
        raise SystemExit(0)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook: only reachable if the signal arrives before `__call__` replaced submitit's
        handler (while the job unpickles). Requeueing then resumes from the newest committed last.ckpt."""
        from submitit.helpers import DelayedSubmission

        log.info("requeueing %s after a signal that came before training started", self.run_dir)
        return DelayedSubmission(SlurmRankJob(self.run_dir))


def after_job_signal(run_dir: Path, signal_delay_s: int, max_num_timeout: int) -> None:
    """Global rank zero, once every rank saved last.ckpt: count the stop in run.json and requeue the job.

    Time-outs are requeued up to `max_num_timeout` times, then the job fails with a message that says how
    to continue; preemptions are requeued without limit.
    """
    from launcher import rundir

    job_id = os.environ.get("SLURM_JOB_ID", "")
    kind = requeue.classify(requeue.show_job(job_id), signal_delay_s)
    manifest = rundir.read_manifest(run_dir)
    counter = "timeout_count" if kind == requeue.TIMEOUT else "preemption_count"
    count = int(manifest.get(counter, 0)) + 1
    if not requeue.may_requeue(kind, count, max_num_timeout):
        message = (
            f"timed out {count} times, more than cluster.max_num_timeout={max_num_timeout}: not requeued. "
            "last.ckpt is committed: continue with "
            f"`launch +cluster=slurm ... run.id={manifest.get('run_id')}`, or raise "
            "cluster.max_num_timeout or cluster.time_min"
        )
        rundir.update_manifest(run_dir, **{counter: count}, status="timed_out", error=message)
        raise LaunchError(message)
    requeues = int(manifest.get("requeue_count", 0)) + 1
    rundir.update_manifest(run_dir, **{counter: count}, requeue_count=requeues, status="requeued")
    log.info("%s of job %s: requeueing it (requeue %d)", kind, job_id, requeues)
    requeue.requeue(job_id)


def _remove_stale_result() -> None:
    """A requeued run must not leave its predecessor's per-task result file behind (submitit reads it)."""
    from submitit import JobEnvironment

    with contextlib.suppress(KeyError, RuntimeError):  # not inside a submitit job
        JobEnvironment().paths.result_pickle.unlink(missing_ok=True)


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
