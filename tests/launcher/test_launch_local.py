"""`launch` end to end on this machine: one rank, two ranks, sweeps, a user project, resume, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from launch_helpers import FAST, explain, launch, manifest, run_dirs, scalars

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_default_run_trains_and_fills_the_run_directory(tmp_path: Path) -> None:
    result = launch(tmp_path, "trainer.max_epochs=2")
    assert result.returncode == 0, explain(result)
    [run_dir] = run_dirs(tmp_path / "runs")
    assert run_dir.parent == tmp_path / "runs" / "default"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "logs" / "rank0.log").read_text()
    assert scalars(run_dir, "val_acc")[-1] > 0.9
    info = manifest(run_dir)
    assert info["status"] == "completed"
    assert info["last_committed_step"] > 0
    assert info["run_id"] == run_dir.name
    # The example's generated dataset lives under the run root, written once.
    assert list((tmp_path / "runs" / "data").glob("*.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.timeout(180)
def test_two_ranks_share_one_run_directory_with_a_log_per_rank(tmp_path: Path) -> None:
    result = launch(tmp_path, *FAST, "trainer.devices=2")
    assert result.returncode == 0, explain(result)
    [run_dir] = run_dirs(tmp_path / "runs")
    assert "[rank1]" in (run_dir / "logs" / "rank1.log").read_text()
    assert "[rank0]" in (run_dir / "logs" / "rank0.log").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert manifest(run_dir)["status"] == "completed"


@pytest.mark.timeout(300)
def test_sweep_of_four_jobs_with_two_ranks_each(tmp_path: Path) -> None:
    result = launch(tmp_path, "-m", "model.lr=1e-3,3e-4", "data.batch_size=32,64", "trainer.devices=2", *FAST)
    assert result.returncode == 0, explain(result)
    runs = run_dirs(tmp_path / "runs")
    assert [run.name for run in runs] == ["0", "1", "2", "3"]
    [sweep_dir] = {run.parent for run in runs}
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "2", "3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["data", "default"]
    lrs = set()
    for run in runs:
        assert (run / "logs" / "rank1.log").is_file()
        assert manifest(run)["status"] == "completed"
        config = (run / "config.yaml").read_text()
        lrs.add(next(line for line in config.splitlines() if line.strip().startswith("lr:")))
    assert len(lrs) == 2


@pytest.mark.timeout(180)
def test_user_project_with_its_own_config_dir(tmp_path: Path) -> None:
    project = tmp_path / "user_project"
    shutil.copytree(REPO / "examples" / "user_project", project)
    result = launch(project, "--config-dir", "conf", "model=mine", "data=mine", *FAST)
    assert result.returncode == 0, explain(result)
    [run_dir] = run_dirs(project / "runs")
    assert "my_project.regression.LinearRegression" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.timeout(240)
def test_resume_with_run_id_continues_from_last_ckpt(tmp_path: Path) -> None:
    first = launch(tmp_path, *FAST)
    assert first.returncode == 0, explain(first)
    [run_dir] = run_dirs(tmp_path / "runs")
    steps_first = manifest(run_dir)["last_committed_step"]
    assert steps_first == 5
    second = launch(tmp_path, f"run.id={run_dir.name}", "trainer.max_epochs=2")
    assert second.returncode == 0, explain(second)
    assert run_dirs(tmp_path / "runs") == [run_dir]
    info = manifest(run_dir)
    assert info["last_committed_step"] == 2 * steps_first
    assert info["launch_count"] == 2
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * steps_first
    assert "resuming from" in (run_dir / "logs" / "rank0.log").read_text()


@pytest.mark.timeout(180)
def test_a_failing_rank_fails_the_job_and_shows_its_traceback(tmp_path: Path) -> None:
    result = launch(tmp_path, *FAST, "trainer.devices=2", "model.fail_on_rank=1")
    assert result.returncode != 0, explain(result)
    assert "rank      : 1" in result.stderr, explain(result)
    assert "this rank fails on purpose" in result.stderr
    assert "Traceback" in result.stderr
    [run_dir] = run_dirs(tmp_path / "runs")
    assert manifest(run_dir)["status"] == "failed"


@pytest.mark.timeout(240)
def test_resuming_under_another_model_config_is_refused_unless_allowed(tmp_path: Path) -> None:
    first = launch(tmp_path, *FAST)
    assert first.returncode == 0, explain(first)
    [run_dir] = run_dirs(tmp_path / "runs")
    refused = launch(tmp_path, f"run.id={run_dir.name}", "trainer.max_epochs=2", "model.lr=0.1")
    assert refused.returncode != 0, explain(refused)
    output = refused.stdout + refused.stderr
    assert "model.lr" in output and "run.allow_config_change=true" in output, explain(refused)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    allowed = launch(
        tmp_path,
        f"run.id={run_dir.name}",
        "trainer.max_epochs=2",
        "model.lr=0.1",
        "run.allow_config_change=true",
    )
    assert allowed.returncode == 0, explain(allowed)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
