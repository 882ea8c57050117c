"""The single-machine Slurm cluster itself: plain and submitit jobs, accounting, and real preemption."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from slurmtools import (
    SlurmCluster,
    describe_task,
    job_rows,
    sbatch,
    wait_for_final_state,
    wait_for_lines,
)

pytestmark = pytest.mark.slurm
HERE = Path(__file__).resolve().parent


@pytest.mark.timeout(120)
def test_sbatch_wrap_job_completes(tmp_path: Path) -> None:
    job_id = sbatch("-o", str(tmp_path / "out-%j.txt"), "-t", "2", "--wrap", "echo hello from $SLURM_JOB_ID")

    assert wait_for_final_state(job_id, timeout_s=60) == "COMPLETED"
    assert (tmp_path / f"out-{job_id}.txt").read_text().strip() == f"hello from {job_id}"
    assert job_rows(job_id)[-1]["ExitCode"] == "0:0"


@pytest.mark.timeout(120)
def test_failing_job_is_failed_in_accounting(tmp_path: Path) -> None:
    job_id = sbatch("-o", str(tmp_path / "out-%j.txt"), "-t", "2", "--wrap", "echo about to fail; exit 3")

    assert wait_for_final_state(job_id, timeout_s=60) == "FAILED"
    assert job_rows(job_id)[-1]["ExitCode"] == "3:0"


@pytest.mark.timeout(180)
def test_submitit_job_returns_the_result_of_every_task(
    tmp_path: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job unpickles describe_task by reference: sbatch passes this environment to the job.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm", slurm_max_num_timeout=0)
    executor.update_parameters(
        timeout_min=3, nodes=slurm_cluster.nodes, tasks_per_node=1, cpus_per_task=1, slurm_partition="debug"
    )

    job = executor.submit(describe_task, "tiny")
    deadline = time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    results = job.results()

    assert [r["procid"] for r in results] == [str(rank) for rank in range(slurm_cluster.nodes)]
    assert {r["tag"] for r in results} == {"tiny"}
    if slurm_cluster.nodes > 1:
        assert {r["hostname"] for r in results} == {f"n{i}" for i in range(1, slurm_cluster.nodes + 1)}
        assert all(r["first_host_addr"].startswith("127.0.1.") for r in results)
    # job.results() can return while sacct still says RUNNING: the final state comes a moment later.
    assert wait_for_final_state(job.job_id, timeout_s=60) == "COMPLETED"


def _submit_low_tier_job(tmp_path: Path, nodes: int, mode: str) -> str:
    """A low-tier job holding every node, whose tasks record the signals they receive."""
    recorder = HERE / "signal_recorder.py"
    return sbatch(
        "-p", "debug", "-N", str(nodes), "--ntasks-per-node=1", "--exclusive", "-t", "5",
        "--requeue", "--signal=USR2@60", "-o", str(tmp_path / "low-%j.out"),
        "--wrap", f"srun {sys.executable} {recorder} {tmp_path} {mode}",
    )  # fmt: skip


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("mode", "first_run_state"),
    [
        ("requeue", "REQUEUED"),  # the job's own owner requeues it on the signal (what the trainer does)
        ("ignore", "PREEMPTED"),  # the job ignores the signal: Slurm requeues it after GraceTime
    ],
)
def test_high_tier_job_preempts_low_tier_job_which_gets_the_signal_and_is_requeued(
    tmp_path: Path, slurm_cluster: SlurmCluster, mode: str, first_run_state: str
) -> None:
    nodes = slurm_cluster.nodes
    low = _submit_low_tier_job(tmp_path, nodes, mode)
    for rank in range(nodes):
        wait_for_lines(tmp_path / f"rank{rank}.log", 1, timeout_s=60)

    high = sbatch(
        "-p", "high", "-N", "1", "--exclusive", "-t", "2",
        "-o", str(tmp_path / "high-%j.out"), "--wrap", "sleep 2",
    )  # fmt: skip

    assert wait_for_final_state(low, timeout_s=180) == "COMPLETED"
    assert wait_for_final_state(high, timeout_s=30) == "COMPLETED"
    for rank in range(nodes):
        lines = (tmp_path / f"rank{rank}.log").read_text().splitlines()
        assert lines[0].startswith("start restart=0"), lines
        assert lines[1] == "SIGUSR2 restart=0", lines  # the job's --signal comes before anything else
        assert lines[-1].startswith("start restart=1"), lines  # SLURM_RESTART_COUNT=1 on the second run
        assert sum(line.startswith("start") for line in lines) == 2, lines
    states = [row["State"].split()[0] for row in job_rows(low)]
    assert states == [first_run_state, "COMPLETED"]


@pytest.mark.timeout(60)
def test_start_is_idempotent_and_status_says_up(slurm_cluster: SlurmCluster) -> None:
    scripts = HERE.parents[1] / "slurm" / "cluster"
    pids_before = (slurm_cluster.state_dir / "pids").read_text()

    again = subprocess.run(
        [str(scripts / "start.sh"), "--nodes", str(slurm_cluster.nodes)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    other = subprocess.run(
        [str(scripts / "start.sh"), "--nodes", str(slurm_cluster.nodes + 1)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    status = subprocess.run([str(scripts / "status.sh")], capture_output=True, text=True, timeout=30)

    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert other.returncode == 1 and "run stop.sh first" in other.stderr
    assert status.returncode == 0 and status.stdout.startswith("up:")
    assert (slurm_cluster.state_dir / "pids").read_text() == pids_before  # nothing restarted
