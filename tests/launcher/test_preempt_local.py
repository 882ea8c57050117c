"""Stop signals to a local `launch`: a committed last.ckpt, a clean exit, and an exact resume with run.id."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from launch_helpers import explain, launch, launch_exe, manifest, run_dirs

from trainer_core.checkpoint import verify

# Deterministic, small, slow enough per step that a signal lands inside training: 10 steps per epoch and
# rank with 2 ranks, 3 epochs.
SMALL = [
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "data.num_samples=800",
    "data.batch_size=32",
    "trainer.log_every_n_steps=5",
    "+model.step_delay_s=0.1",
]
TWO_RANKS = ["trainer.devices=2", *SMALL]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )["state_dict"]
    return state


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of the run as (step, value) pairs, in the order they were written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def wait_for(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [launch_exe(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def first_commit(cwd: Path) -> Path:
    """The run directory once its first last.ckpt is committed (the end of epoch 0)."""
    assert wait_for(lambda: list(cwd.glob("runs/*/*/checkpoints/last.ckpt")), 120)
    return next(cwd.glob("runs/*/*/checkpoints/last.ckpt")).parents[1]


def finish(process: subprocess.Popen[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of the same 2-rank run, never interrupted."""
    cwd = tmp_path_factory.mktemp("reference")
    result = launch(cwd, *TWO_RANKS)
    assert result.returncode == 0, explain(result)
    return run_dirs(cwd)[0]


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> dict[str, torch.Tensor]:
    """The final weights of the uninterrupted run."""
    return weights(reference_run)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT])
def test_a_stop_signal_commits_last_ckpt_and_run_id_resumes_to_the_same_weights(
    tmp_path: Path, reference_run: Path, signum: signal.Signals
) -> None:
    process = start(tmp_path, *TWO_RANKS)
    run_dir = first_commit(tmp_path)
    process.send_signal(signum)
    stopped = finish(process)

    assert stopped.returncode == 128 + signum, explain(stopped)
    assert f"stopped by {signum.name}" in stopped.stderr
    assert f"run.id={run_dir.name}" in stopped.stderr
    info = manifest(run_dir)
    assert info["status"] == "preempted"
    assert info["stop_signal"] == signum.name
    assert info["preemption_count"] == 1
    last = run_dir / "checkpoints" / "last.ckpt"
    assert verify(last)
    step = torch.load(last, weights_only=True)["global_step"]
    assert info["last_committed_step"] == step
    assert 10 < step < 30  # saved inside training, after epoch 0's checkpoint and before the end

    resumed = launch(tmp_path, *TWO_RANKS, f"run.id={run_dir.name}")
    assert resumed.returncode == 0, explain(resumed)
    assert manifest(run_dir)["status"] == "completed"
    assert_same_weights(weights(run_dir), weights(reference_run))
    # The same TensorBoard event directory, continued from the restored step: no step twice, none missing.
    assert series(run_dir) == series(reference_run)


@pytest.mark.timeout(300)
def test_a_second_ctrl_c_stops_at_once_and_the_last_committed_checkpoint_resumes(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    process = start(tmp_path, *TWO_RANKS)
    run_dir = first_commit(tmp_path)
    process.send_signal(signal.SIGINT)
    # Two signals sent at once reach a process as one; a person's second Ctrl-C comes after the message.
    assert process.stderr is not None
    lines = iter(process.stderr.readline, "")
    assert any("press Ctrl-C again" in line for line in lines)
    process.send_signal(signal.SIGINT)
    stopped = finish(process)

    assert stopped.returncode == 130, explain(stopped)
    assert manifest(run_dir)["status"] == "interrupted"
    assert verify(run_dir / "checkpoints" / "last.ckpt")
    resumed = launch(tmp_path, *TWO_RANKS, f"run.id={run_dir.name}")
    assert resumed.returncode == 0, explain(resumed)
    assert_same_weights(weights(run_dir), reference)


@pytest.mark.timeout(300)
def test_kill_9_of_the_writing_rank_mid_checkpoint_leaves_the_previous_one_intact(tmp_path: Path) -> None:
    # A model large enough (about 50 MB with its optimizer state) that a write lasts long enough to catch.
    # Six epochs: several epoch-end writes to catch, even on a loaded machine.
    big = [*TWO_RANKS, "model.hidden=2048", "trainer.max_epochs=6"]
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    result = launch(reference_dir, *big)
    assert result.returncode == 0, explain(result)

    process = start(tmp_path, *big)
    run_dir = first_commit(tmp_path)
    checkpoints = run_dir / "checkpoints"
    before = (checkpoints / "last.ckpt").read_bytes()
    writing: list[Path] = []
    assert wait_for(lambda: writing.extend(checkpoints.glob(".*.tmp-*")) or writing, 120, interval_s=0.001)
    writer_pid = int(writing[0].name.split(".tmp-")[1].split("-")[0])
    os.kill(writer_pid, signal.SIGKILL)
    crashed = finish(process)

    assert crashed.returncode not in (0, 130), explain(crashed)
    last = checkpoints / "last.ckpt"
    assert verify(last)
    assert last.read_bytes() == before or verify(last)  # the old one, or a fully committed new one
    resumed = launch(tmp_path, *big, f"run.id={run_dir.name}")
    assert resumed.returncode == 0, explain(resumed)
    assert_same_weights(weights(run_dir), weights(run_dirs(reference_dir)[0]))


@pytest.mark.timeout(300)
def test_resume_with_another_world_size_at_an_epoch_end_and_mid_epoch(
    tmp_path: Path,
) -> None:
    one_epoch = [*SMALL, "trainer.max_epochs=1"]
    finished = launch(tmp_path, *one_epoch, "trainer.devices=1")
    assert finished.returncode == 0, explain(finished)
    [run_dir] = run_dirs(tmp_path)
    # An epoch-end checkpoint of 1 rank continues with 2.
    grown = launch(tmp_path, *SMALL, "trainer.max_epochs=2", "trainer.devices=2", f"run.id={run_dir.name}")
    assert grown.returncode == 0, explain(grown)
    assert manifest(run_dir)["status"] == "completed"
    # Epoch 0: 640 training samples in batches of 32 on 1 rank; epoch 1: half of them on each of 2 ranks.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20 + 10

    # A mid-epoch checkpoint of 2 ranks continues with 1 where its samples split into whole batches.
    more = [*SMALL, "trainer.max_epochs=10", f"run.id={run_dir.name}"]
    process = start(tmp_path, *more, "trainer.devices=2")
    previous_step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert wait_for(
        lambda: (
            torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
            > previous_step
        ),
        120,
    )
    process.send_signal(signal.SIGTERM)
    assert finish(process).returncode == 143
    shrunk = launch(tmp_path, *more, "trainer.devices=1")
    assert shrunk.returncode == 0, explain(shrunk)
    assert manifest(run_dir)["status"] == "completed"


@pytest.mark.timeout(300)
def test_one_rank_in_the_launch_process_stops_on_sigusr2_and_resumes(tmp_path: Path) -> None:
    process = start(tmp_path, *SMALL, "trainer.devices=1")
    run_dir = first_commit(tmp_path)
    process.send_signal(signal.SIGUSR2)
    stopped = finish(process)

    assert stopped.returncode == 128 + signal.SIGUSR2, explain(stopped)
    assert manifest(run_dir)["status"] == "preempted"
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 20 < step < 60  # 640 samples in batches of 32 on one rank: 20 steps per epoch, 3 epochs
    resumed = launch(tmp_path, *SMALL, "trainer.devices=1", f"run.id={run_dir.name}")
    assert resumed.returncode == 0, explain(resumed)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60
    assert f"training starts at step {step}" in (run_dir / "logs" / "rank0.log").read_text()
