"""Saves cost the training loop a snapshot: one serialisation per save point, on the writer thread, holding
exactly the state of its step; the buffers are reused; a failed write stops training at the next step."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer, weights
from trainer_core import checkpoint as checkpoint_io
from trainer_core.checkpoint import integrity
from trainer_core.checkpoint.snapshot import BufferPool
from trainer_core.errors import CheckpointWriteError


@pytest.fixture(autouse=True)
def _nothing_left_pending() -> Iterator[None]:
    yield
    checkpoint_io.wait_for_pending()  # a commit error a test left unraised fails that test, not the next one


class WeightsAtSavePoints(tc.callbacks.Callback):
    """Placed before ModelCheckpoint: the weights at each step, as the save point of that step sees them."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.by_step[trainer.global_step] = weights(pl_module)


def _slow_serialize(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    """Serialisation takes `seconds` longer; returns the start times of every serialisation."""
    real = checkpoint_io.io._serialize
    starts: list[float] = []

    def slow(state: Any, file: Any) -> None:
        starts.append(time.perf_counter())
        time.sleep(seconds)
        real(state, file)

    monkeypatch.setattr(checkpoint_io.io, "_serialize", slow)
    return starts


def test_each_file_holds_exactly_the_state_of_its_step_while_training_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_serialize(monkeypatch, 0.05)  # the writer lags behind: training changes the weights meanwhile
    recorder = WeightsAtSavePoints()
    checkpoint = tc.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpts", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[recorder, checkpoint]
    )
    trainer.fit(Classifier(), loader(n=128))
    files = sorted((tmp_path / "ckpts").glob("step=*.ckpt"))
    assert len(files) == 5  # steps 3, 6, ..., 15
    for path in files:
        state = torch.load(path, weights_only=True)
        step = state["global_step"]
        assert path.name == f"step={step}.ckpt"
        expected = recorder.by_step[step]
        assert all(torch.equal(state["state_dict"][name], value) for name, value in expected.items())


def test_one_serialisation_per_save_point_and_last_is_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = _slow_serialize(monkeypatch, 0.0)
    checkpoint = tc.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=-1, save_last=True
    )
    trainer = quiet_trainer(tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(Classifier(), loader(n=128))
    directory = tmp_path / "ckpts"
    assert len(starts) == 3  # save points at steps 2, 4, 6: each written once for its top-k file and last
    assert os.path.samefile(directory / "last.ckpt", directory / "epoch=0-step=6.ckpt")
    for name in ("last.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=4.ckpt"):
        assert integrity.check(directory / name) is None


def test_without_hard_links_the_other_name_is_a_verified_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: Any, target: Any) -> None:
        raise OSError(errno.EPERM, "links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    paths = [tmp_path / "epoch=0-step=2.ckpt", tmp_path / "last.ckpt"]
    checkpoint_io.save({"global_step": 2, "weights": torch.arange(1000.0)}, paths)
    checkpoint_io.wait_for_pending()
    assert not os.path.samefile(*paths)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert all(integrity.check(path) is None for path in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=2.ckpt.json",
        "last.ckpt",
        "last.ckpt.json",
    ]


def test_snapshot_buffers_are_reused_and_hold_one_copy_of_the_state() -> None:
    model = torch.nn.Linear(256, 256)
    pool = BufferPool()
    first = pool.take({"state_dict": model.state_dict(), "step": 1})
    pointers = [t.data_ptr() for t in first.state["state_dict"].values()]
    assert first.tensor_bytes == sum(p.numel() * 4 for p in model.parameters())
    with torch.no_grad():
        model.weight.add_(1.0)
    second = pool.take({"state_dict": model.state_dict(), "step": 2})
    assert [t.data_ptr() for t in second.state["state_dict"].values()] == pointers
    assert torch.equal(second.state["state_dict"]["weight"], model.weight.detach())
    assert pool.nbytes == first.tensor_bytes


def test_buffers_reserved_ahead_serve_the_first_snapshot() -> None:
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()
    state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
    tensors = [*model.state_dict().values(), *(v for s in optimizer.state.values() for v in s.values())]
    pool = BufferPool()
    pool.reserve(tensors)  # on a helper thread
    reserved = pool.nbytes
    allocations: list[Any] = []
    real_empty = torch.empty
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "empty", lambda *a, **k: allocations.append(a) or real_empty(*a, **k))
        snapshot = pool.take(state)
    assert allocations == []  # the first snapshot found every buffer it needed
    assert reserved == snapshot.tensor_bytes == pool.nbytes  # none allocated twice, none left over


def test_views_of_one_memory_with_other_strides_are_copied_apart() -> None:
    square = torch.randn(8, 8)
    snapshot = BufferPool().take({"weight": square, "transposed": square.t()})
    assert torch.equal(snapshot.state["weight"], square)
    assert torch.equal(snapshot.state["transposed"], square.t())


def test_a_snapshot_keeps_tied_weights_shared_and_copies_containers() -> None:
    shared = torch.randn(4, 4)
    step = [3]
    snapshot = BufferPool().take({"a": shared, "b": shared.detach(), "loops": {"step": step}})
    assert snapshot.state["a"] is snapshot.state["b"]
    assert snapshot.state["a"].data_ptr() != shared.data_ptr()
    step.append(4)
    assert snapshot.state["loops"]["step"] == [3]
    assert snapshot.tensor_bytes == shared.numel() * 4


def test_a_save_point_waits_only_for_a_snapshot_still_in_flight_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A writer of its own: whether this process logged a wait before does not matter here.
    monkeypatch.setattr(checkpoint_io.io, "_writer", checkpoint_io.io.Writer())
    releases = [threading.Event() for _ in range(3)]  # serialisation n waits for releases[n]
    real = checkpoint_io.io._serialize

    def held(state: Any, file: Any) -> None:
        assert releases[state["step"] - 1].wait(timeout=30)
        real(state, file)

    def save_waits(step: int) -> bool:
        """Whether the save of `step` blocks (its buffers are still being serialised), then let it finish."""
        saving = threading.Thread(
            target=checkpoint_io.save_atomic, args=({"step": step}, tmp_path / f"{step}")
        )
        saving.start()
        saving.join(timeout=0.3)
        blocked = saving.is_alive()
        releases[step - 2].set()  # the serialisation it waits for
        saving.join(timeout=30)
        return blocked and not saving.is_alive()

    monkeypatch.setattr(checkpoint_io.io, "_serialize", held)
    with caplog.at_level(logging.INFO, logger="trainer_core.checkpoint.io"):
        checkpoint_io.save_atomic({"step": 1}, tmp_path / "1")
        assert save_waits(2) and save_waits(3)
        releases[2].set()
        checkpoint_io.wait_for_pending()
    told = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert len(told) == 1 and "for the previous checkpoint to be written" in told[0]
    assert checkpoint_io.io.statistics().waits == 2
    assert [checkpoint_io.load(tmp_path / str(step))["step"] for step in (1, 2, 3)] == [1, 2, 3]


def test_a_write_that_fails_in_the_background_stops_training_at_the_next_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = checkpoint_io.io._serialize
    calls = {"n": 0}

    def full_disk_on_the_second_save(state: Any, file: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            file.write(b"PK\x03\x04")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(state, file)

    monkeypatch.setattr(checkpoint_io.io, "_serialize", full_disk_on_the_second_save)

    class SlowStep(tc.callbacks.Callback):
        """Step 5 lasts until the writer has recorded the failure of step 4's save."""

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            deadline = time.monotonic() + 30
            while trainer.global_step == 5 and not checkpoint_io.io.failed() and time.monotonic() < deadline:
                time.sleep(0.001)

    checkpoint = tc.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_last=True
    )
    callbacks = [SlowStep(), checkpoint]
    trainer = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=callbacks)
    with pytest.raises(CheckpointWriteError, match=r"step=4\.ckpt.*No space left on device") as caught:
        trainer.fit(Classifier(), loader(n=128))
    assert trainer.global_step == 5  # the first step boundary after the failure, not the end of the run
    assert "the checkpoint needs about" in str(caught.value)
    last = tmp_path / "ckpts" / "last.ckpt"
    assert integrity.check(last) is None and torch.load(last, weights_only=True)["global_step"] == 2
    assert not [p for p in last.parent.iterdir() if ".tmp-" in p.name]
