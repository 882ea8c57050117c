"""`launch` of one local run starts its job process at once (launcher.warm): torch loads there, not in launch.

The behaviour that users see must not change: what a run writes, exit codes, stop signals. Here: `launch`
itself never loads torch, a refused config leaves no job process behind, a job process whose `launch` dies
stops cleanly with last.ckpt committed, and a run with the job process started late (sweeps, or
LAUNCH_WARM_START=0) gives the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from launch_helpers import FAST, explain, launch, launch_exe, manifest, run_dirs

SLOW = [
    "trainer.max_epochs=50",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "data.num_samples=640",
    "data.batch_size=32",
    "+model.step_delay_s=0.05",
]


def wait_for(predicate: Callable[[], object], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment holds LAUNCH_TEST_TAG=tag (launch, its job process, its ranks)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("LAUNCH_TEST_TAG") == tag and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def start(cwd: Path, tag: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LAUNCH_TEST_TAG": tag}
    return subprocess.Popen(
        [launch_exe(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def loads_torch(process: psutil.Process) -> bool:
    return any("libtorch" in Path(m.path).name for m in process.memory_maps())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("devices", [1, 2])
def test_launch_itself_never_loads_torch(tmp_path: Path, devices: int) -> None:
    tag = uuid.uuid4().hex
    process = start(tmp_path, tag, *SLOW, f"trainer.devices={devices}")
    try:
        assert wait_for(lambda: list(tmp_path.glob("runs/*/*/checkpoints/last.ckpt")), 120)
        launcher = psutil.Process(process.pid)
        job = launcher.children()
        assert len(job) == 1, [p.cmdline() for p in job]
        assert loads_torch(job[0])
        assert not loads_torch(launcher)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "override", ["trainer.devicez=2", "model._target_=launcher.example.Nope", "+model.no_such_argument=1"]
)
def test_a_refused_config_leaves_no_job_process_and_no_run_directory(tmp_path: Path, override: str) -> None:
    tag = uuid.uuid4().hex
    process = start(tmp_path, tag, override)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert override.split("=")[0].lstrip("+") in stderr
    assert wait_for(lambda: not tagged(tag), 10), [p.cmdline() for p in tagged(tag)]
    assert run_dirs(tmp_path) == []


@pytest.mark.timeout(240)
def test_the_job_stops_cleanly_when_launch_is_killed(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    process = start(tmp_path, tag, *SLOW)
    try:
        assert wait_for(lambda: list(tmp_path.glob("runs/*/*/checkpoints/last.ckpt")), 120)
        process.kill()  # SIGKILL: launch cannot pass anything on
        process.communicate(timeout=30)
        # The kernel sends the job process SIGTERM: it saves last.ckpt at the next step boundary and ends.
        assert wait_for(lambda: not tagged(tag), 60), [p.cmdline() for p in tagged(tag)]
    finally:
        for leftover in tagged(tag):
            leftover.kill()
    run_dir = run_dirs(tmp_path)[0]
    assert manifest(run_dir)["status"] == "preempted"
    assert manifest(run_dir)["stop_signal"] == "SIGTERM"
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["global_step"] == manifest(run_dir)["last_committed_step"]
    finish = f"trainer.max_epochs={stopped['epoch'] + 1}"
    resumed = launch(tmp_path, *SLOW, finish, f"run.id={run_dir.name}")
    assert resumed.returncode == 0, explain(resumed)
    assert manifest(run_dir)["status"] == "completed"


@pytest.mark.timeout(240)
def test_a_run_without_the_early_job_process_gives_the_same_weights(tmp_path: Path) -> None:
    settings = [*FAST, "trainer.deterministic=true"]
    for name in ("warm", "cold"):
        (tmp_path / name).mkdir()
    warm = launch(tmp_path / "warm", *settings)
    env_cold = {"LAUNCH_WARM_START": "0"}
    os.environ.update(env_cold)
    try:
        cold = launch(tmp_path / "cold", *settings)
    finally:
        os.environ.pop("LAUNCH_WARM_START")
    assert warm.returncode == 0, explain(warm)
    assert cold.returncode == 0, explain(cold)
    a, b = (
        torch.load(run_dirs(tmp_path / n)[0] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for n in ("warm", "cold")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


GC_PROBE = '''
import gc, json, os
from launcher.example import Classifier

class GcProbe(Classifier):
    """Records, at its first training step, whether the collector runs and how much start-up it froze."""

    def training_step(self, batch, batch_idx):
        if batch_idx == 0 and self.current_epoch == 0:
            state = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
            with open(f"gc_rank{os.environ.get('RANK', '0')}.json", "w") as handle:
                json.dump(state, handle)
        return super().training_step(batch, batch_idx)
'''


@pytest.mark.timeout(180)
@pytest.mark.parametrize("devices", [1, 2])
def test_ranks_train_with_the_collector_on_and_start_up_frozen(tmp_path: Path, devices: int) -> None:
    # Start-up imports run with the cyclic collector paused (launcher.startup); training must not.
    (tmp_path / "gc_probe.py").write_text(GC_PROBE)
    probe = "model._target_=gc_probe.GcProbe"
    result = launch(tmp_path, *FAST, probe, f"trainer.devices={devices}")
    assert result.returncode == 0, explain(result)
    for rank in range(devices):
        state = json.loads((tmp_path / f"gc_rank{rank}.json").read_text())
        assert state["enabled"] is True, rank
        assert state["frozen"] > 100_000, rank  # torch's and torch._dynamo's objects, frozen at start-up
