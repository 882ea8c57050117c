"""Running the real `launch` command in a subprocess, in a scratch directory, and reading what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# Small runs: one short epoch, no progress bar in captured output.
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
]


def launch_exe() -> str:
    """The installed `launch` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "launch"
    return str(beside) if beside.exists() else (shutil.which("launch") or "launch")


def launch(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run `launch ARGS` in cwd and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [launch_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (holding config.yaml) under root."""
    return sorted(path.parent for path in root.rglob("config.yaml"))


def manifest(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
    return data


def scalars(run_dir: Path, tag: str) -> list[float]:
    """The values of a scalar in the run's TensorBoard events, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars(tag)]


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )
