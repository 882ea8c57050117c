"""Fixtures for every tier: restore the environment, end leftover process groups, fail on leaked children."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
import pytest


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _no_leftover_process_group() -> Iterator[None]:
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("the test left a torch.distributed process group initialised")


@pytest.fixture(autouse=True)
def _no_leaked_children() -> Iterator[None]:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    new = [p for p in me.children(recursive=True) if p.pid not in before]
    # Children that are on their way out (a DataLoader worker, a rank after its last step) get a moment.
    _, still_running = psutil.wait_procs(new, timeout=5)
    leaked = [p for p in still_running if _alive(p)]
    if leaked:
        for proc in leaked:
            proc.kill()
        pytest.fail(f"the test left child processes running: {[p.pid for p in leaked]}")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
