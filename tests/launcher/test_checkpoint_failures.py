"""`launch` when checkpoints fail: damaged or missing files on resume, a full disk or read-only storage
during a save. One line, the right exit code, run.json says why, nothing the user wrote is lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from launch_helpers import FAST, explain, launch, manifest, run_dirs

from tests.fs_helpers import tmpfs

# A model whose checkpoint (weights and Adam state) is about 3.3 MiB.
BIG_MODEL = "model.hidden=512"


def _flip_a_byte(path: Path) -> None:
    """Damage `path` in place, as failing storage would (every name linked to it sees the damage)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04
    with open(path, "r+b") as file:
        file.write(bytes(data))


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("launch: error:")]
    assert len(errors) == 1, explain(result)
    assert "Traceback" not in result.stdout + result.stderr, explain(result)
    return errors[0]


@pytest.mark.timeout(240)
def test_damaged_checkpoints_are_refused_in_one_line_and_resume_never_starts_afresh(tmp_path: Path) -> None:
    first = launch(tmp_path, *FAST)
    assert first.returncode == 0, explain(first)
    [run_dir] = run_dirs(tmp_path / "runs")
    checkpoints = run_dir / "checkpoints"
    inodes = {path.stat().st_ino: path for path in checkpoints.glob("*.ckpt")}  # last.ckpt is a link
    for path in inodes.values():
        _flip_a_byte(path)
    before = {path.name: path.read_bytes() for path in checkpoints.iterdir()}

    refused = launch(tmp_path, f"run.id={run_dir.name}", "trainer.max_epochs=2")
    assert refused.returncode == 2, explain(refused)
    line = _one_line_error(refused)
    assert "No intact checkpoint to resume from" in line and "last.ckpt (content digest mismatch)" in line
    assert f"run.id={run_dir.name} run.resume=never" in line
    info = manifest(run_dir)
    assert info["status"] == "failed" and info["exit_code"] == 2 and "No intact checkpoint" in info["error"]
    assert "No intact checkpoint" in (run_dir / "logs" / "rank0.log").read_text()
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == before  # untouched

    fresh = launch(tmp_path, f"run.id={run_dir.name}", *FAST, "run.resume=never")
    assert fresh.returncode == 0, explain(fresh)
    [aside] = run_dir.glob("set-aside-*")
    assert {path.name: path.read_bytes() for path in (aside / "checkpoints").iterdir()} == before
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert manifest(run_dir)["status"] == "completed" and manifest(run_dir)["error"] is None
    assert "resume: auto" in (run_dir / "config.yaml").read_text()  # the next launch resumes again


@pytest.mark.timeout(240)
def test_a_missing_last_ckpt_resumes_from_the_newest_top_k_file_not_from_scratch(tmp_path: Path) -> None:
    first = launch(tmp_path, *FAST, "callbacks.checkpoint.save_top_k=-1")
    assert first.returncode == 0, explain(first)
    [run_dir] = run_dirs(tmp_path / "runs")
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    second = launch(tmp_path, f"run.id={run_dir.name}", "trainer.max_epochs=2")
    assert second.returncode == 0, explain(second)
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "last.ckpt for resume: missing" in log and "Resuming from" in log
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("devices", [1, 2])
def test_a_full_disk_stops_the_run_in_one_line_naming_the_space(tmp_path: Path, devices: int) -> None:
    with tmpfs(tmp_path / "small", "2m") as small:
        result = launch(
            tmp_path,
            *FAST,
            BIG_MODEL,
            f"trainer.devices={devices}",
            f"run.root={small}",
            f"data.data_dir={tmp_path / 'data'}",
        )
        assert result.returncode == 1, explain(result)
        line = _one_line_error(result)
        assert "Could not write checkpoint" in line and "No space left on device" in line
        assert "MiB free, the checkpoint needs about 3." in line
        [run_dir] = run_dirs(small)
        info = manifest(run_dir)
        assert info["status"] == "failed" and info["exit_code"] == 1 and "No space left" in info["error"]
        assert not list(run_dir.rglob("*.tmp-*"))


@pytest.mark.timeout(300)
def test_a_save_to_read_only_storage_fails_in_one_line_and_keeps_the_committed_last(tmp_path: Path) -> None:
    first = launch(tmp_path, *FAST)
    assert first.returncode == 0, explain(first)
    [run_dir] = run_dirs(tmp_path / "runs")
    checkpoints = run_dir / "checkpoints"
    before = (checkpoints / "last.ckpt").read_bytes()
    bound = subprocess.run(["mount", "--bind", str(checkpoints), str(checkpoints)], check=False)
    if bound.returncode != 0:
        pytest.skip("a read-only bind mount needs root")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(checkpoints)], check=True)
        result = launch(tmp_path, f"run.id={run_dir.name}", "trainer.max_epochs=2")
    finally:
        subprocess.run(["umount", "-l", str(checkpoints)], check=False)
    assert result.returncode == 1, explain(result)
    line = _one_line_error(result)
    assert "Could not write checkpoint" in line and "Read-only file system" in line
    assert (checkpoints / "last.ckpt").read_bytes() == before
    assert manifest(run_dir)["status"] == "failed" and "Read-only" in manifest(run_dir)["error"]
    assert os.access(checkpoints, os.W_OK)
