"""`launch +cluster=slurm` through the real command against the single-machine Slurm cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from slurmtools import SlurmCluster, job_rows, wait_for_final_state

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
# One short epoch; few enough batches that a job ends in seconds on 2 shared cores.
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "cluster.time_min=5",
    "cluster.signal_delay_s=30",
]
SUBMITTED = re.compile(r"^submitted Slurm job (\S+): (\S+)$", re.MULTILINE)


def launch_exe(name: str = "launch") -> str:
    return str(Path(sys.executable).parent / name)


def run_cli(
    cwd: Path, *args: str, exe: str = "launch", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [launch_exe(exe), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


def submitted(result: subprocess.CompletedProcess[str]) -> list[tuple[str, Path]]:
    """(job id, run dir) of every job `launch` reported, failing with its output when it did not succeed."""
    assert result.returncode == 0, explain(result)
    found = [(job_id, Path(run_dir)) for job_id, run_dir in SUBMITTED.findall(result.stdout)]
    assert found, explain(result)
    return found


def manifest(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def jobs_submitted_from(directory: Path) -> set[str]:
    """The ids of the jobs of the last hour that were submitted from `directory` (sacct's WorkDir).

    Filtered by directory, not compared with a "before" list: slurmdbd records a job a moment after it is
    submitted, so another test's job could otherwise show up between the two lists.
    """
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-a", "-S", "now-1hour", "-o", "JobID,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows = (line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)
    return {job_id for job_id, workdir in rows if Path(workdir) == directory}


def listed_from(directory: Path, job_id: str, timeout_s: float = 30) -> set[str]:
    """`jobs_submitted_from(directory)` once it lists `job_id`: slurmdbd can answer `sacct -j` with the final
    state a moment before its listing by time window shows the job's WorkDir."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = jobs_submitted_from(directory)
        if job_id in jobs or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def rank_log(run_dir: Path, rank: int) -> str:
    return (run_dir / "logs" / f"rank{rank}.log").read_text()


@pytest.mark.timeout(240)
def test_two_rank_job_trains_to_completion_in_its_run_directory(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "+cluster=slurm", "trainer.devices=2", *FAST)
    [(job_id, run_dir)] = submitted(result)

    # `launch` returned at once: it recorded the job and did not wait for it.
    assert manifest(run_dir)["slurm_job_ids"] == [job_id]
    assert wait_for_final_state(job_id, timeout_s=180) == "COMPLETED"
    assert listed_from(tmp_path, job_id) == {job_id}  # what the preflight test relies on
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    for rank in (0, 1):
        assert (run_dir / "slurm" / f"{job_id}_{rank}_log.out").is_file()
        assert (run_dir / "slurm" / f"{job_id}_{rank}_log.err").is_file()
        assert f"Rank {rank} of 2 joined the gloo process group" in rank_log(run_dir, rank)
    info = manifest(run_dir)
    assert info["status"] == "completed"
    assert info["last_committed_step"] == 4
    # The job ran the code snapshot taken at submission, not the working tree.
    assert Path(info["code_imported_from"]).parent == run_dir / "code"
    assert (Path(info["code_imported_from"]) / "trainer_core" / "trainer.py").is_file()


@pytest.mark.timeout(240)
def test_two_node_job_with_two_ranks_per_node_trains_across_nodes(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    if slurm_cluster.nodes < 2:
        pytest.skip(f"the running cluster has {slurm_cluster.nodes} node(s); start it with --nodes 2")
    result = run_cli(tmp_path, "+cluster=slurm", "trainer.num_nodes=2", "trainer.devices=2", *FAST)
    [(job_id, run_dir)] = submitted(result)

    assert wait_for_final_state(job_id, timeout_s=180) == "COMPLETED"
    assert job_rows(job_id)[-1]["NodeList"] == "n[1-2]"
    for rank in range(4):
        assert f"Rank {rank} of 4 joined the gloo process group" in rank_log(run_dir, rank)
    assert manifest(run_dir)["status"] == "completed"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.timeout(300)
def test_sweep_is_one_job_array_and_a_rerun_submits_nothing_finished(tmp_path: Path) -> None:
    sweep = ["-m", "+cluster=slurm", "seed=1,2", "data.batch_size=32,64", *FAST]
    jobs = submitted(run_cli(tmp_path, *sweep))

    assert len(jobs) == 4
    arrays = {job_id.split("_")[0] for job_id, _ in jobs}
    assert len(arrays) == 1, jobs
    assert sorted(job_id.split("_")[1] for job_id, _ in jobs) == ["0", "1", "2", "3"]
    assert len({run_dir for _, run_dir in jobs}) == 4
    for job_id, run_dir in jobs:
        assert wait_for_final_state(job_id, timeout_s=240) == "COMPLETED"
        assert manifest(run_dir)["status"] == "completed"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    again = run_cli(tmp_path, *sweep)
    assert again.returncode == 0, explain(again)
    assert SUBMITTED.findall(again.stdout) == []
    assert again.stderr.count("not submitted again") == 4, explain(again)


@pytest.mark.timeout(240)
def test_a_job_whose_rank_1_raises_shows_failed_with_the_traceback(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "+cluster=slurm", "trainer.devices=2", "model.fail_on_rank=1", *FAST)
    [(job_id, run_dir)] = submitted(result)

    assert wait_for_final_state(job_id, timeout_s=180) == "FAILED"
    status = run_cli(tmp_path, str(run_dir), exe="launch-status")
    assert status.returncode == 0, explain(status)
    table_row = status.stdout.splitlines()[1].split()
    assert table_row[2] == "FAILED" and table_row[7] == job_id
    assert "on rank 1; error log:" in status.stdout, status.stdout
    assert "Traceback (most recent call last)" in status.stdout
    assert "this rank fails on purpose" in status.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster.partition=nowhere", "cluster.partition=nowhere: no such partition"),
        ("trainer.num_nodes=9", "trainer.num_nodes=9: partition debug allows at most"),
    ],
)
def test_a_preflight_rejection_exits_2_and_submits_nothing(
    tmp_path: Path, override: str, message: str
) -> None:
    result = run_cli(tmp_path, "+cluster=slurm", override, *FAST)

    assert result.returncode == 2, explain(result)
    assert message in result.stderr, explain(result)
    assert jobs_submitted_from(tmp_path) == set()
    assert not list(tmp_path.rglob("run.json"))
