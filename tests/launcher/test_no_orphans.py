"""After `launch` exits, whether it finished, crashed or was interrupted, no process of its job remains."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from launch_helpers import FAST, launch, launch_exe


def job_processes(marker: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions marker (the job's scratch directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(marker) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.timeout(180)
def test_ctrl_c_stops_every_rank(tmp_path: Path) -> None:
    # A long run, interrupted once both ranks are training.
    process = subprocess.Popen(
        [launch_exe(), "trainer.devices=2", "trainer.max_epochs=1000", "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(
            lambda: len(list(tmp_path.rglob("rank1.log"))) == 1 and len(job_processes(tmp_path)) >= 2, 120
        )
        time.sleep(1.0)  # let both ranks get into the training loop
        os.kill(process.pid, signal.SIGINT)
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    # 128 + SIGINT: a clean, resumable stop (a crash would be 1).
    assert process.returncode == 130, process.stderr.read() if process.stderr else ""
    assert wait_for(lambda: not job_processes(tmp_path), 30), [
        p.info["cmdline"] for p in job_processes(tmp_path)
    ]


@pytest.mark.timeout(180)
def test_a_crash_leaves_no_process_behind(tmp_path: Path) -> None:
    result = launch(tmp_path, *FAST, "trainer.devices=2", "model.fail_on_rank=0")
    assert result.returncode != 0
    assert wait_for(lambda: not job_processes(tmp_path), 30)
