"""Background commits of checkpoints: order, waits before reads and deletes, failures, exit, leftovers."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer_core.checkpoint import (
    exists,
    load,
    manifest_path,
    remove,
    save_atomic,
    set_snapshots_in_flight,
    verify,
    wait_for_pending,
)
from trainer_core.checkpoint.resume import pick
from trainer_core.errors import CheckpointError

_real_fsync = os.fsync


@pytest.fixture(autouse=True)
def _nothing_left_pending() -> Iterator[None]:
    yield
    wait_for_pending()  # a commit error a test left unraised fails that test, not the next one


@pytest.fixture
def queue_of_snapshots() -> Iterator[None]:
    """Let several saves queue behind a held writer (one snapshot in flight is the default)."""
    set_snapshots_in_flight(4)
    yield
    set_snapshots_in_flight(1)


def newest_verified(directory: Path) -> Path:
    """The file a resume of `directory`'s last.ckpt would read."""
    return Path(pick(directory / "last.ckpt", full=False)[0])


def _slow_fsync(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.2) -> None:
    """Make every commit slow, so that a read or delete that did not wait would see the old state."""

    def fsync(fd: int) -> None:
        time.sleep(seconds)
        _real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


class _Gate:
    """An fsync that blocks the committer until released: commits queue up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, fd: int) -> None:
        self.entered.set()
        assert self.release.wait(timeout=30), "the test never released the committer"
        _real_fsync(fd)


def _fail_first_fsync_then_hold(monkeypatch: pytest.MonkeyPatch) -> _Gate:
    """The next fsync fails with EIO; later ones wait at the returned gate."""
    gate = _Gate()
    calls = {"n": 0}

    def fail_then_hold(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        gate(fd)

    monkeypatch.setattr(os, "fsync", fail_then_hold)
    return gate


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _fail_once(real: Callable[..., Any], code: int = errno.EIO) -> Callable[..., Any]:
    calls = {"n": 0}

    def failing(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(code, os.strerror(code))
        return real(*args)

    return failing


def test_save_returns_before_the_commit_and_the_caller_may_change_its_tensors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = _Gate()
    monkeypatch.setattr(os, "fsync", gate)
    weights = torch.zeros(1000)
    path = tmp_path / "last.ckpt"
    save_atomic({"weights": weights}, path)
    assert gate.entered.wait(timeout=30)
    assert not path.exists()  # serialised, not yet committed
    weights.add_(1.0)  # the state was serialised before save_atomic returned
    gate.release.set()
    assert torch.equal(load(path)["weights"], torch.zeros(1000))
    assert verify(path)


def test_load_right_after_save_sees_the_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"generation": 1}, path, sync=True)
    _slow_fsync(monkeypatch)
    save_atomic({"generation": 2}, path)
    assert load(path) == {"generation": 2}


def test_verify_and_resume_wait_for_the_commit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow_fsync(monkeypatch)
    save_atomic({"global_step": 5}, tmp_path / "a.ckpt")
    assert verify(tmp_path / "a.ckpt")
    save_atomic({"global_step": 9}, tmp_path / "b.ckpt")
    assert newest_verified(tmp_path) == tmp_path / "b.ckpt"


def test_two_commits_to_one_path_land_in_order_and_the_later_wins(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = _Gate()
    monkeypatch.setattr(os, "fsync", gate)
    path = tmp_path / "last.ckpt"
    save_atomic({"global_step": 1}, path)
    save_atomic({"global_step": 2}, path)  # queued behind the first, which the gate holds
    assert gate.entered.wait(timeout=30)
    gate.release.set()
    assert load(path) == {"global_step": 2}
    assert '"global_step": 2' in manifest_path(path).read_text()
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.json"]


def test_a_save_waits_while_two_commits_and_a_snapshot_are_pending(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two serialised checkpoints wait for their fsync (two temporary files at most) and one snapshot waits
    # to be serialised (one copy of the state): the next save point waits for room.
    gate = _Gate()
    monkeypatch.setattr(os, "fsync", gate)
    path = tmp_path / "last.ckpt"
    for step in (1, 2, 3):
        save_atomic({"global_step": step}, path)
    fourth = threading.Thread(target=save_atomic, args=({"global_step": 4}, path))
    fourth.start()
    fourth.join(timeout=0.5)
    blocked = fourth.is_alive()
    temporaries = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    gate.release.set()
    fourth.join(timeout=30)
    assert blocked and not fourth.is_alive()
    assert len(temporaries) == 2
    assert load(path) == {"global_step": 4}
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.json"]


def test_a_sync_save_lands_after_the_queued_saves_to_its_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow_fsync(monkeypatch, 0.1)
    path = tmp_path / "last.ckpt"
    save_atomic({"global_step": 1}, path)
    save_atomic({"global_step": 2}, path, sync=True)
    assert torch.load(path, weights_only=True) == {"global_step": 2}
    wait_for_pending()
    assert load(path) == {"global_step": 2}


def test_commits_to_different_paths_keep_the_order_of_the_saves(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    queue_of_snapshots: None,
) -> None:
    gate = _Gate()
    renamed: list[str] = []
    real_replace = os.replace

    def replace(source: Any, target: Any) -> None:
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", gate)
    monkeypatch.setattr(os, "replace", replace)
    names = ["epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"]
    for step, name in enumerate(names):
        save_atomic({"global_step": step}, tmp_path / name)  # all three queue behind the gate
    assert gate.entered.wait(timeout=30)
    assert renamed == []
    gate.release.set()
    wait_for_pending()
    assert renamed == names


def test_remove_after_save_removes_the_committed_file_and_its_manifest(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow_fsync(monkeypatch)
    path = tmp_path / "epoch=0.ckpt"
    save_atomic({"a": 1}, path)
    remove(path)
    wait_for_pending()
    assert _names(tmp_path) == []


def test_retention_deletes_the_old_file_only_once_the_new_one_is_committed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = tmp_path / "epoch=0.ckpt", tmp_path / "epoch=1.ckpt"
    save_atomic({"global_step": 1}, old, sync=True)
    _slow_fsync(monkeypatch)
    save_atomic({"global_step": 2}, new)
    remove(old)
    assert _names(tmp_path) == ["epoch=1.ckpt", "epoch=1.ckpt.json"]  # no wait_for_pending: remove waited
    assert verify(new)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("surfaces_at", ["wait_for_pending", "sync save_atomic", "load", "verify"])
def test_a_failed_commit_keeps_the_previous_file_and_surfaces_as_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, surfaces_at: str
) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"generation": 1}, path, sync=True)
    before = path.read_bytes()
    monkeypatch.setattr(os, failing, _fail_once(getattr(os, failing)))
    save_atomic({"generation": 2}, path)  # returns: the commit fails on the committer
    next_call: dict[str, Callable[[], Any]] = {
        "wait_for_pending": wait_for_pending,
        "sync save_atomic": lambda: save_atomic({"generation": 3}, path, sync=True),
        "load": lambda: load(path),
        "verify": lambda: verify(path),
    }
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*Input/output error.*previous file .* unchanged"):
        next_call[surfaces_at]()
    assert path.read_bytes() == before and verify(path) and load(path) == {"generation": 1}
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.json"]  # no temporary file left
    wait_for_pending()  # raised once; nothing left to raise


def test_the_next_save_raises_a_commit_failure_that_happened_since(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    queue_of_snapshots: None,
) -> None:
    path, other = tmp_path / "last.ckpt", tmp_path / "other.ckpt"
    save_atomic({"generation": 1}, path, sync=True)
    gate = _fail_first_fsync_then_hold(monkeypatch)
    save_atomic({"generation": 2}, path)  # its commit fails
    save_atomic({"other": 1}, other)  # the committer reaches this one only after recording the failure
    assert gate.entered.wait(timeout=30)
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*Input/output error"):
        save_atomic({"generation": 3}, path)  # async, and raises before writing anything
    gate.release.set()
    wait_for_pending()
    assert load(path) == {"generation": 1}
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.json", "other.ckpt", "other.ckpt.json"]


def test_remove_after_a_failed_commit_raises_and_keeps_the_old_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = tmp_path / "epoch=0.ckpt", tmp_path / "epoch=1.ckpt"
    save_atomic({"global_step": 1}, old, sync=True)
    monkeypatch.setattr(os, "fsync", _fail_once(os.fsync, errno.ENOSPC))
    save_atomic({"global_step": 2}, new)
    with pytest.raises(CheckpointError, match=r"epoch=1\.ckpt.*No space left on device"):
        remove(old)  # retention must not delete the only good file
    assert _names(tmp_path) == ["epoch=0.ckpt", "epoch=0.ckpt.json"]
    assert newest_verified(tmp_path) == old


def test_a_background_remove_returns_at_once_and_deletes_only_after_the_new_commit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = tmp_path / "epoch=0.ckpt", tmp_path / "epoch=1.ckpt"
    save_atomic({"global_step": 1}, old, sync=True)
    gate = _Gate()
    monkeypatch.setattr(os, "fsync", gate)
    save_atomic({"global_step": 2}, new)
    remove(old, background=True)  # returns although the commit of `new` is held at its fsync
    assert gate.entered.wait(timeout=30)
    committed = [name for name in _names(tmp_path) if not name.startswith(".")]  # not the temporary
    assert committed == ["epoch=0.ckpt", "epoch=0.ckpt.json"]  # the only committed file stays
    assert not exists(old) and exists(new)  # what the queue will leave, without waiting for it
    gate.release.set()
    wait_for_pending()
    assert _names(tmp_path) == ["epoch=1.ckpt", "epoch=1.ckpt.json"]
    assert not exists(old) and exists(new)


def test_a_background_remove_keeps_the_old_file_when_the_commit_before_it_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = tmp_path / "epoch=0.ckpt", tmp_path / "epoch=1.ckpt"
    save_atomic({"global_step": 1}, old, sync=True)
    gate = _Gate()
    calls = {"n": 0}

    def hold_then_fail(fd: int) -> None:
        calls["n"] += 1
        gate(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", hold_then_fail)
    save_atomic({"global_step": 2}, new)
    remove(old, background=True)  # queued while the commit is still running: it fails afterwards
    gate.release.set()
    with pytest.raises(CheckpointError, match=r"epoch=1\.ckpt.*No space left on device"):
        wait_for_pending()
    assert _names(tmp_path) == ["epoch=0.ckpt", "epoch=0.ckpt.json"]
    assert newest_verified(tmp_path) == old


def test_a_background_remove_after_a_recorded_failure_raises_it_and_deletes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    queue_of_snapshots: None,
) -> None:
    old, new, other = tmp_path / "epoch=0.ckpt", tmp_path / "epoch=1.ckpt", tmp_path / "other.ckpt"
    save_atomic({"global_step": 1}, old, sync=True)
    gate = _fail_first_fsync_then_hold(monkeypatch)
    save_atomic({"global_step": 2}, new)  # its commit fails
    save_atomic({"other": 1}, other)  # held: by then the failure above is recorded
    assert gate.entered.wait(timeout=30)
    with pytest.raises(CheckpointError, match=r"epoch=1\.ckpt.*Input/output error"):
        remove(old, background=True)
    gate.release.set()
    wait_for_pending()
    assert _names(tmp_path) == ["epoch=0.ckpt", "epoch=0.ckpt.json", "other.ckpt", "other.ckpt.json"]


def test_commits_after_a_failed_one_still_land_and_every_failure_is_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    queue_of_snapshots: None,
) -> None:
    gate = _Gate()
    calls = {"n": 0}

    def two_failures(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            gate(fd)  # hold the committer until all three saves are queued
        if calls["n"] <= 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", two_failures)
    for name in ("a.ckpt", "b.ckpt", "c.ckpt"):
        save_atomic({"name": name}, tmp_path / name)
    gate.release.set()
    with pytest.raises(CheckpointError, match=r"2 checkpoint commits failed.*a\.ckpt.*b\.ckpt"):
        wait_for_pending()
    assert load(tmp_path / "c.ckpt") == {"name": "c.ckpt"}
    assert _names(tmp_path) == ["c.ckpt", "c.ckpt.json"]


def _dead_pid() -> int:
    """A process id that no process has right now."""
    for pid in range(4_000_000, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    raise RuntimeError("no free process id")


def test_a_temporary_file_left_by_a_crash_is_ignored_by_resume_and_removed_by_the_next_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.ckpt"
    save_atomic({"global_step": 1}, path, sync=True)
    crashed = tmp_path / f".last.ckpt.tmp-{_dead_pid()}-0badc0de"
    crashed.write_bytes(b"PK\x03\x04 torn write of a writer that was killed")
    ours = tmp_path / f".last.ckpt.tmp-{os.getpid()}-00000000"  # this process may still be writing it
    ours.write_bytes(b"PK\x03\x04")
    assert newest_verified(tmp_path) == path and load(path) == {"global_step": 1}
    save_atomic({"global_step": 2}, path)
    wait_for_pending()
    assert not crashed.exists() and ours.exists()
    assert load(path) == {"global_step": 2}


def test_sync_save_is_committed_on_return(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_fsync(monkeypatch, 0.1)
    path = tmp_path / "last.ckpt"
    save_atomic({"a": 1}, path, sync=True)
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.json"]
    assert torch.load(path, weights_only=True) == {"a": 1}


@pytest.mark.timeout(120)
def test_a_process_that_saves_and_exits_at_once_leaves_a_committed_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import torch
        from trainer_core import checkpoint

        real_fsync = os.fsync
        def slow_fsync(fd):
            time.sleep(0.5)  # the commit is still running when the script ends
            real_fsync(fd)
        os.fsync = slow_fsync
        checkpoint.save_atomic({{"weights": torch.arange(10.0)}}, {str(path)!r})
        sys.exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=100)
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.json"]
    assert verify(path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(10.0))
