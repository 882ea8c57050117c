"""A non-editable install (a wheel in a fresh venv) finds its configs and runs `launch` anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from launch_helpers import FAST

REPO = Path(__file__).resolve().parents[2]


def run(command: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.mark.timeout(300)
def test_wheel_in_a_fresh_venv_finds_its_configs(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            ".",
        ],
        REPO,
    )
    [wheel] = wheel_dir.glob("hpc_launch-*.whl")
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", str(venv)], tmp_path)
    # torch and the other dependencies come from this test's environment (no network): a .pth file adds
    # its site-packages after the fresh venv's own, so the wheel's launcher package wins.
    new_site = next((venv / "lib").glob("python*/site-packages"))
    (new_site / "test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    shown = run([str(venv / "bin" / "launch"), "--cfg", "job"], elsewhere)
    assert "_target_: launcher.example.Classifier" in shown.stdout
    where = run([str(venv / "bin" / "python"), "-c", "import launcher; print(launcher.__file__)"], elsewhere)
    assert where.stdout.startswith(str(venv))

    run([str(venv / "bin" / "launch"), *FAST], elsewhere)
    assert list((elsewhere / "runs" / "default").glob("*/checkpoints/last.ckpt"))
