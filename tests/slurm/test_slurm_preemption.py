"""Preemption and time-out on the real cluster via `launch +cluster=slurm`: requeue, exact resume, counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from slurmtools import job_rows, sbatch, wait_for_final_state

pytestmark = pytest.mark.slurm
# Deterministic and small; 10 steps per epoch and rank with 2 ranks, slow enough that a signal lands inside.
SMALL = [
    "trainer.devices=2",
    "trainer.deterministic=true",
    "trainer.max_epochs=4",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "data.num_samples=800",
    "data.batch_size=32",
]
ON_SLURM = ["+cluster=slurm", "cluster.time_min=10", "cluster.signal_delay_s=30"]


def launch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    exe = str(Path(sys.executable).parent / "launch")
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def submit(cwd: Path, *args: str, step_delay_s: float = 0.1) -> tuple[str, Path]:
    result = launch(cwd, *SMALL, f"+model.step_delay_s={step_delay_s}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    job_id, run_dir = result.stdout.strip().splitlines()[-1].removeprefix("submitted Slurm job ").split(": ")
    return job_id, Path(run_dir)


def manifest(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )["state_dict"]
    return state


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def wait_for_first_commit(run_dir: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert time.monotonic() < deadline, f"no last.ckpt in {run_dir} after {timeout_s:.0f}s"
        time.sleep(0.2)


def states(job_id: str) -> list[str]:
    return [row["State"].split()[0] for row in job_rows(job_id)]


def node_of(job_id: str) -> str:
    done = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of the same 2-rank run, run locally and never interrupted."""
    cwd = tmp_path_factory.mktemp("reference")
    result = launch(cwd, *SMALL, "+model.step_delay_s=0")
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(next(cwd.glob("runs/*/*/run.json")).parent)


@pytest.mark.timeout(300)
def test_a_job_preempted_by_the_high_partition_is_requeued_and_resumes_exactly(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    job_id, run_dir = submit(tmp_path, *ON_SLURM, "cluster.partition=debug")
    wait_for_first_commit(run_dir)
    high = sbatch(
        "-p", "high", "-N", "1", "-w", node_of(job_id), "--exclusive", "-t", "2",
        "-o", str(tmp_path / "high-%j.out"), "--wrap", "sleep 1",
    )  # fmt: skip

    assert wait_for_final_state(job_id, timeout_s=240) == "COMPLETED"
    assert wait_for_final_state(high, timeout_s=30) == "COMPLETED"
    assert states(job_id)[0] == "REQUEUED"  # requeued by the job itself, after its checkpoint
    info = manifest(run_dir)
    assert info["status"] == "completed"
    assert info["preemption_count"] >= 1
    assert info["timeout_count"] == 0
    assert info["requeue_count"] == len(states(job_id)) - 1
    assert info["slurm_job_ids"] == [job_id]  # the same job, the same run directory
    assert "resuming from" in (run_dir / "logs" / "rank0.log").read_text()
    assert_same_weights(weights(run_dir), reference)


@pytest.mark.timeout(300)
def test_scancel_signal_usr2_requeues_once_and_resumes_exactly(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    job_id, run_dir = submit(tmp_path, *ON_SLURM)
    wait_for_first_commit(run_dir)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

    assert wait_for_final_state(job_id, timeout_s=240) == "COMPLETED"
    assert states(job_id) == ["REQUEUED", "COMPLETED"]
    info = manifest(run_dir)
    assert (info["preemption_count"], info["timeout_count"], info["requeue_count"]) == (1, 0, 1)
    assert_same_weights(weights(run_dir), reference)
    status = subprocess.run(
        [str(Path(sys.executable).parent / "launch-status"), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    header, row = status.stdout.splitlines()[:2]
    cells = dict(zip(header.split(), row.split()))
    assert (cells["requeues"], cells["timeouts"], cells["preemptions"]) == ("1", "0", "1")


@pytest.mark.timeout(480)
def test_a_short_time_limit_reaches_the_end_through_time_out_requeues(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    # A 1-minute limit with the signal 30 s ahead: slurmctld sends it 7 to 30 s into each run. The training
    # alone (40 steps of 0.8 s, 32 s) outlasts 30 s, so the first run is always signalled, whatever the
    # start-up takes. About 2 to 4 minutes.
    job_id, run_dir = submit(
        tmp_path, "+cluster=slurm", "cluster.time_min=1", "cluster.signal_delay_s=30",
        "cluster.max_num_timeout=20", step_delay_s=0.8,
    )  # fmt: skip

    assert wait_for_final_state(job_id, timeout_s=460) == "COMPLETED"
    info = manifest(run_dir)
    assert info["status"] == "completed"
    assert info["timeout_count"] >= 1
    assert info["preemption_count"] == 0
    assert info["requeue_count"] == info["timeout_count"] == len(states(job_id)) - 1
    assert_same_weights(weights(run_dir), reference)


@pytest.mark.timeout(200)
def test_time_outs_beyond_max_num_timeout_are_not_requeued(tmp_path: Path) -> None:
    job_id, run_dir = submit(
        tmp_path, "+cluster=slurm", "cluster.time_min=1", "cluster.signal_delay_s=30",
        "cluster.max_num_timeout=0", step_delay_s=1.0,
    )  # fmt: skip

    assert wait_for_final_state(job_id, timeout_s=150) == "FAILED"
    assert states(job_id) == ["FAILED"]
    info = manifest(run_dir)
    assert info["status"] == "timed_out"
    assert info["timeout_count"] == 1
    assert info["requeue_count"] == 0
    assert "cluster.max_num_timeout=0" in info["error"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # committed: `launch run.id=...` continues
