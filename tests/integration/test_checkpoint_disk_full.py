"""A real full file system (a small tmpfs) under a checkpoint: the write fails inside torch's zip writer on
the writer thread, training stops at the next step boundary naming the file and the space, and the previous
`last.ckpt` stays the newest committed checkpoint."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.fs_helpers import tmpfs
from trainer_core import checkpoint as checkpoint_io
from trainer_core.checkpoint import integrity
from trainer_core.errors import CheckpointWriteError


class Wide(tc.TrainingModule):
    """About 3 MiB of weights and Adam state."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class FillTheDisk(tc.callbacks.Callback):
    """Once ModelCheckpoint took step 4's snapshot (and checked the free space), fill the file system before
    the writer serialises it: the zip writer then runs out of space mid-file."""

    def __init__(self, directory: Path, serialising: threading.Event, release: threading.Event) -> None:
        self.directory, self.serialising, self.release = directory, serialising, release

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step != 4:  # the start of step 5: step 4's save point is behind us
            return
        assert self.serialising.wait(timeout=30)
        with open(self.directory / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * (64 << 10))
        self.release.set()
        for _ in range(3000):  # until the writer has recorded the failure: this step's boundary raises it
            if checkpoint_io.io.failed():
                break
            time.sleep(0.01)


@pytest.mark.timeout(120)
def test_a_disk_that_fills_during_a_background_write_stops_training_and_keeps_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serialising, release = threading.Event(), threading.Event()
    real = checkpoint_io.io._serialize
    calls = {"n": 0}

    def held_second_write(state: Any, file: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            serialising.set()
            assert release.wait(timeout=30)
        real(state, file)

    monkeypatch.setattr(checkpoint_io.io, "_serialize", held_second_write)
    with tmpfs(tmp_path / "small", "8m") as small:
        directory = small / "ckpts"
        saves = tc.callbacks.ModelCheckpoint(dirpath=directory, every_n_train_steps=2, save_last=True)
        trainer = tc.Trainer(
            max_epochs=1,
            callbacks=[saves, FillTheDisk(small, serialising, release)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        data = torch.utils.data.TensorDataset(torch.randn(160, 32))
        with pytest.raises(CheckpointWriteError) as caught:
            trainer.fit(Wide(), torch.utils.data.DataLoader(data, batch_size=8))
        message = str(caught.value)
        assert "epoch=0-step=4.ckpt" in message and "No space left on device" in message
        assert "MiB free, the checkpoint needs about 3." in message
        assert trainer.global_step == 5  # the step boundary after the failure, not the 20 steps of the run
        last = directory / "last.ckpt"
        assert integrity.check(last) is None
        assert torch.load(last, weights_only=True)["global_step"] == 2
        assert not [p for p in directory.iterdir() if ".tmp-" in p.name]
