"""Preemption policy without processes: time-out or preemption, requeue limits, signal recording, run.json."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from launcher import rundir, slurm_job
from launcher.errors import LaunchError
from launcher.signals import SignalRecorder, ignore_from_now
from slurm import requeue
from slurm.errors import SlurmCommandError

NOW = datetime(2026, 1, 1, 12, 0, 0)
SHOW_JOB = (
    "JobId=42 JobName=x JobState=RUNNING StartTime=2026-01-01T11:59:00 EndTime={end} "
    "PreemptEligibleTime=2026-01-01T11:59:00 PreemptTime={preempt} SuspendTime=None"
)


def show_job(end: str = "2026-01-01T12:00:40", preempt: str = "None") -> str:
    return SHOW_JOB.format(end=end, preempt=preempt)


def test_show_job_output_gives_end_and_preempt_times() -> None:
    times = requeue.parse_show_job(show_job(preempt="2026-01-01T11:59:50"))
    assert times.end_time == datetime(2026, 1, 1, 12, 0, 40)
    assert times.preempt_time == datetime(2026, 1, 1, 11, 59, 50)
    assert requeue.parse_show_job(show_job(end="Unknown")).end_time is None


def test_a_signal_near_the_time_limit_is_a_time_out() -> None:
    times = requeue.JobTimes(end_time=NOW + timedelta(seconds=40), preempt_time=None)
    assert requeue.classify(times, signal_delay_s=30, now=NOW) == requeue.TIMEOUT


def test_a_signal_far_from_the_time_limit_is_a_preemption() -> None:
    times = requeue.JobTimes(end_time=NOW + timedelta(minutes=50), preempt_time=None)
    assert requeue.classify(times, signal_delay_s=120, now=NOW) == requeue.PREEMPTION


def test_a_preempt_time_makes_it_a_preemption_even_near_the_limit() -> None:
    # Slurm shortens a preempted job's end time to its grace time: the end alone would say time-out.
    times = requeue.JobTimes(end_time=NOW + timedelta(seconds=30), preempt_time=NOW)
    assert requeue.classify(times, signal_delay_s=30, now=NOW) == requeue.PREEMPTION


@pytest.mark.parametrize(
    ("kind", "count", "limit", "expected"),
    [
        (requeue.TIMEOUT, 1, 3, True),
        (requeue.TIMEOUT, 3, 3, True),
        (requeue.TIMEOUT, 4, 3, False),
        (requeue.TIMEOUT, 1, 0, False),
        (requeue.PREEMPTION, 100, 0, True),
    ],
)
def test_time_outs_are_requeued_up_to_the_limit_preemptions_always(
    kind: str, count: int, limit: int, expected: bool
) -> None:
    assert requeue.may_requeue(kind, count, limit) is expected


class FakeScontrol:
    """Records scontrol calls; answers `show job` with a fixed text."""

    def __init__(self, shown: str, fail_requeue: bool = False) -> None:
        self.shown, self.fail_requeue = shown, fail_requeue
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if args[1] == "requeue" and self.fail_requeue:
            return subprocess.CompletedProcess(args, 1, "", "Job is pending execution")
        return subprocess.CompletedProcess(args, 0, self.shown if args[1] == "show" else "", "")


def test_requeue_runs_scontrol_and_reports_its_failure() -> None:
    fake = FakeScontrol(show_job())
    requeue.requeue("42", run=fake)
    assert fake.calls == [["scontrol", "requeue", "42"]]
    with pytest.raises(SlurmCommandError, match="Job is pending execution"):
        requeue.requeue("42", run=FakeScontrol(show_job(), fail_requeue=True))


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    rundir.write_manifest(tmp_path, rundir.new_manifest({"run": {"id": "r1"}}, "r1"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    return tmp_path


def _scontrol(monkeypatch: pytest.MonkeyPatch, shown: str) -> FakeScontrol:
    """Route the job's scontrol calls to a fake that answers `show job` with `shown`."""
    fake = FakeScontrol(shown)
    show_job, requeue_job = requeue.show_job, requeue.requeue
    monkeypatch.setattr(requeue, "show_job", lambda job_id: show_job(job_id, run=fake))
    monkeypatch.setattr(requeue, "requeue", lambda job_id: requeue_job(job_id, run=fake))
    return fake


def test_a_preemption_is_counted_and_requeued(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _scontrol(monkeypatch, show_job(end=(datetime.now() + timedelta(hours=1)).isoformat()))
    slurm_job.after_job_signal(run_dir, signal_delay_s=120, max_num_timeout=3)
    info = rundir.read_manifest(run_dir)
    assert (info["preemption_count"], info["timeout_count"], info["requeue_count"]) == (1, 0, 1)
    assert info["status"] == "requeued"
    assert fake.calls[-1] == ["scontrol", "requeue", "42"]


def test_a_time_out_past_the_limit_is_not_requeued(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rundir.update_manifest(run_dir, timeout_count=2)
    fake = _scontrol(monkeypatch, show_job(end=(datetime.now() + timedelta(seconds=20)).isoformat()))
    with pytest.raises(LaunchError, match=r"cluster\.max_num_timeout=2"):
        slurm_job.after_job_signal(run_dir, signal_delay_s=30, max_num_timeout=2)
    info = rundir.read_manifest(run_dir)
    assert (info["timeout_count"], info["requeue_count"], info["status"]) == (3, 0, "timed_out")
    assert all(call[1] != "requeue" for call in fake.calls)


def test_the_recorder_keeps_the_first_signal_and_a_second_ctrl_c_interrupts() -> None:
    recorder = SignalRecorder().install([signal.SIGUSR2, signal.SIGINT])
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGINT)
        assert recorder.received == signal.SIGUSR2
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        recorder.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_finished_rank_ignores_late_stop_signals() -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        ignore_from_now([signal.SIGUSR2])
        os.kill(os.getpid(), signal.SIGUSR2)  # would end this process with the default action
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)
