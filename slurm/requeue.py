"""Requeue policy of a running Slurm job: was the signal a preemption or a time-out, and `scontrol requeue`.

Slurm sends a job's `--signal` (USR2 here) both before its time limit and, with `preempt_send_user_signal`,
when a higher-priority job preempts it. The two are told apart from Slurm's own record of the job
(`scontrol show job`): a preempted job has a `PreemptTime`; otherwise the signal is a time-out when the job's
`EndTime` is within the signal's lead time (plus slurmctld's check interval, which may send it up to a
minute early), and a manual signal (`scancel --signal=USR2`) otherwise, which counts as a preemption.
Time-outs are requeued up to `cluster.max_num_timeout` times, preemptions without limit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from slurm.errors import SlurmCommandError

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
# slurmctld checks time limits every 30 s and may send the signal up to a minute before its lead time.
SIGNAL_SLACK_S = 90
PREEMPTION = "preemption"
TIMEOUT = "timeout"


@dataclass(frozen=True)
class JobTimes:
    """What `scontrol show job` says about a running job's end: its end time and when it was preempted."""

    end_time: datetime | None
    preempt_time: datetime | None


def parse_show_job(text: str) -> JobTimes:
    """JobTimes from `scontrol show job -o JOBID` output ("EndTime=2024-01-01T10:00:00 PreemptTime=None")."""
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    return JobTimes(_time(fields.get("EndTime")), _time(fields.get("PreemptTime")))


def _time(value: str | None) -> datetime | None:
    if not value or value in ("None", "Unknown", "NONE"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def show_job(job_id: str, run: Runner = subprocess.run) -> JobTimes:
    """The job's end and preemption times, from `scontrol show job`."""
    done = _scontrol(["show", "job", "-o", job_id], run)
    return parse_show_job(done.stdout)


def classify(times: JobTimes, signal_delay_s: int, now: datetime | None = None) -> str:
    """PREEMPTION or TIMEOUT: why the job got its signal (see the module docstring)."""
    if times.preempt_time is not None:
        return PREEMPTION
    if times.end_time is None:
        return PREEMPTION  # no limit known: the signal cannot be the time limit's
    left_s = (times.end_time - (now or datetime.now())).total_seconds()
    return TIMEOUT if left_s <= signal_delay_s + SIGNAL_SLACK_S else PREEMPTION


def may_requeue(kind: str, timeout_count: int, max_num_timeout: int) -> bool:
    """Whether to requeue after this signal; `timeout_count` includes this one when it is a time-out."""
    return kind == PREEMPTION or timeout_count <= max_num_timeout


def requeue(job_id: str, run: Runner = subprocess.run) -> None:
    """`scontrol requeue JOBID`: Slurm stops the job's tasks and puts it back in the queue."""
    _scontrol(["requeue", job_id], run)


def _scontrol(args: list[str], run: Runner) -> subprocess.CompletedProcess[str]:
    command = ["scontrol", *args]
    try:
        done = run(command, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SlurmCommandError("`scontrol` not found: a Slurm job needs the Slurm client commands") from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError(f"`{' '.join(command)}` did not answer within 60 s") from None
    if done.returncode != 0:
        raise SlurmCommandError(
            f"`{' '.join(command)}` failed (exit {done.returncode}): {str(done.stderr).strip()}"
        )
    return done
