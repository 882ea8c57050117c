"""Preemption on one process: a stop signal saves last.ckpt at the next step boundary, and resuming from it
ends with the same weights, bit for bit, as the run that never stopped."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import trainer_core as tc
from tests.unit.helpers import classification_data, weights
from trainer_core import checkpoint as checkpoint_io
from trainer_core.preemption import PreemptionSignals

EPOCHS, BATCHES = 3, 8  # 128 samples, batch 16


class CountingDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The classification data, counting how many samples were read."""

    def __init__(self) -> None:
        self.data = classification_data(128)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.data[index]  # type: ignore[no-any-return]


class Noisy(tc.TrainingModule):
    """Dropout, Adam and a per-step scheduler: state that an exact resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 2)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5, 0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def SignalAt(hook: str, when: Callable[..., bool], signum: int = signal.SIGUSR2) -> tc.callbacks.Callback:
    """A callback that sends `signum` to this process from `hook` when `when(trainer, *args)` first holds.

    The hook is defined on a class of its own: the dispatcher calls only the hooks a class overrides.
    """
    sent: list[bool] = []

    def fire(self: Any, trainer: Any, pl_module: Any, *args: Any) -> None:
        if not sent and when(trainer, *args):
            sent.append(True)
            os.kill(os.getpid(), signum)

    return type(f"SignalAt_{hook}", (tc.callbacks.Callback,), {hook: fire})()  # type: ignore[no-any-return]


def _fit(root: Path, callbacks: list[Any], ckpt_path: Any = None, **settings: Any) -> tuple[Any, ...]:
    tc.seed_everything(11, workers=True)
    model, dataset = Noisy(), CountingDataset()
    trainer = tc.Trainer(
        deterministic=True,
        default_root_dir=root,
        callbacks=[tc.callbacks.ModelCheckpoint(dirpath=root / "ckpts"), *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"val_check_interval": 0.5, "max_epochs": EPOCHS, **settings},
    )
    train = DataLoader(dataset, batch_size=16, shuffle=True)
    trainer.fit(model, train, DataLoader(classification_data(48, seed=1), batch_size=16), ckpt_path=ckpt_path)
    return model, trainer, dataset


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for name, value in weights(a).items():
        assert torch.equal(value, weights(b)[name]), name


# Where the signal arrives: the hook, and when (the trainer and the hook's arguments).
POINTS: dict[str, tuple[str, Callable[..., bool]]] = {
    "mid_epoch": ("on_train_batch_end", lambda t, *a: t.global_step == 11),
    "inside_validation": ("on_validation_batch_end", lambda t, *a: t.current_epoch == 1 and a[2] == 1),
    "after_epoch_end": ("on_train_epoch_end", lambda t, *a: t.current_epoch == 0),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", sorted(POINTS))
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, point: str) -> None:
    straight, *_ = _fit(tmp_path / "straight", [])
    hook, when = POINTS[point]
    _, interrupted, _ = _fit(tmp_path / "run", [SignalAt(hook, when)])
    assert interrupted.state.status == "preempted" and interrupted.interrupted
    assert interrupted.received_signal == signal.SIGUSR2
    stopped_at = interrupted.global_step
    assert 0 < stopped_at < EPOCHS * BATCHES
    last = tmp_path / "run" / "ckpts" / "last.ckpt"
    assert checkpoint_io.verify(last)
    assert torch.load(last, weights_only=True)["global_step"] == stopped_at
    resumed, trainer, dataset = _fit(tmp_path / "run", [], ckpt_path="last")
    assert trainer.state.status == "finished" and trainer.global_step == EPOCHS * BATCHES
    _assert_same_weights(straight, resumed)
    # No replay: the resumed run read exactly the samples of the batches it still had to train on.
    assert dataset.reads == (EPOCHS * BATCHES - stopped_at) * 16


@pytest.mark.timeout(120)
def test_signal_inside_an_accumulation_window_stops_at_its_end(tmp_path: Path) -> None:
    settings = {"accumulate_grad_batches": 3, "val_check_interval": 1.0}
    straight, *_ = _fit(tmp_path / "straight", [], **settings)
    # Batch 4 of epoch 0 is the second of the window 3..5: the stop waits for the window's step.
    signal_at = SignalAt("on_train_batch_end", lambda t, *a: t.current_epoch == 0 and a[2] == 4)
    _, interrupted, _ = _fit(tmp_path / "run", [signal_at], **settings)
    assert interrupted.state.status == "preempted"
    assert interrupted.progress.epoch_batches == 6 and interrupted.progress.accumulated_batches == 0
    resumed, trainer, _ = _fit(tmp_path / "run", [], ckpt_path="last", **settings)
    assert trainer.global_step == straight.trainer.global_step
    _assert_same_weights(straight, resumed)


@pytest.mark.timeout(120)
def test_twice_in_one_epoch(tmp_path: Path) -> None:
    straight, *_ = _fit(tmp_path / "straight", [])
    first = SignalAt("on_train_batch_end", lambda t, *a: t.global_step == 9)
    _, run, _ = _fit(tmp_path / "run", [first])
    assert run.global_step == 9
    second = SignalAt("on_train_batch_end", lambda t, *a: t.global_step == 14)
    _, run, _ = _fit(tmp_path / "run", [second], ckpt_path="last")
    assert run.state.status == "preempted" and run.global_step == 14
    resumed, trainer, _ = _fit(tmp_path / "run", [], ckpt_path="last")
    assert trainer.global_step == EPOCHS * BATCHES
    _assert_same_weights(straight, resumed)
    # Preemption checkpoints never pile up: they are last.ckpt.
    names = sorted(p.name for p in (tmp_path / "run" / "ckpts").glob("*.ckpt"))
    assert names == ["epoch=2-step=24.ckpt", "last.ckpt"]


@pytest.mark.timeout(60)
def test_signal_handlers_are_restored_after_fit(tmp_path: Path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    _fit(tmp_path, [], max_epochs=1)
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.timeout(60)
def test_configured_signals_only(tmp_path: Path) -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        plugins = [PreemptionSignals(signals=("USR1",), handle_sigint=False)]
        sender = SignalAt("on_train_batch_end", lambda t, *a: t.global_step == 3, signal.SIGUSR1)
        _, trainer, _ = _fit(tmp_path, [sender], plugins=plugins)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert trainer.state.status == "preempted" and trainer.received_signal == signal.SIGUSR1
    assert seen == []  # the trainer's handler had it during fit
    with pytest.raises(tc.MisconfigurationError, match="SIGNOPE"):
        tc.Trainer(plugins=[PreemptionSignals(signals=("SIGNOPE",))])


@pytest.mark.timeout(60)
def test_first_ctrl_c_saves_and_a_second_one_during_the_write_keeps_the_previous_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A complete run leaves last.ckpt (epoch 0); the next run resumes and gets two Ctrl-C.
    _fit(tmp_path, [SignalAt("on_train_epoch_end", lambda t, *a: True, signal.SIGINT)], max_epochs=2)
    last = tmp_path / "ckpts" / "last.ckpt"
    before = last.read_bytes()
    real_serialize = checkpoint_io.io._serialize

    def interrupted_write(state: Any, file: Any) -> None:
        real_serialize(state, file)
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while last.ckpt is being written

    monkeypatch.setattr(checkpoint_io.io, "_serialize", interrupted_write)
    first = SignalAt("on_train_batch_end", lambda t, *a: t.global_step == 12, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, [first], ckpt_path="last", max_epochs=2)
    assert last.read_bytes() == before and checkpoint_io.verify(last)
    assert not [p for p in last.parent.iterdir() if ".tmp-" in p.name]
