"""Fit-loop controls: the module's `lr_scheduler_step` hook, `min_epochs`/`min_steps` against stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer


class CustomSchedulerStep(Classifier):
    """Records every call of its `lr_scheduler_step` and steps the scheduler itself."""

    def __init__(self, interval: str) -> None:
        super().__init__()
        self.interval = interval
        self.calls: list[tuple[int, Any]] = []

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.interval}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        self.calls.append((self.trainer.global_step, metric))
        scheduler.step()


@pytest.mark.parametrize(("interval", "calls"), [("step", 8), ("epoch", 2)])
def test_module_lr_scheduler_step_replaces_the_plain_step(tmp_path: Path, interval: str, calls: int) -> None:
    model = CustomSchedulerStep(interval)
    quiet_trainer(tmp_path, max_epochs=2).fit(model, loader(n=64))
    assert len(model.calls) == calls
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**calls)


class StopsAtOnce(tc.callbacks.Callback):
    """Asks the trainer to stop after every training batch, as an early-stopping decision would."""

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        trainer.should_stop = True


def test_should_stop_waits_for_min_epochs(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=10, min_epochs=3, callbacks=[StopsAtOnce()])
    trainer.fit(Classifier(), loader(n=64))
    # Lightning's rule: the epoch ends at a stop request once min_steps holds, the run once min_epochs does.
    assert trainer.current_epoch == 3
    assert trainer.global_step == 3


def test_should_stop_waits_for_min_steps(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=10, min_steps=6, callbacks=[StopsAtOnce()])
    trainer.fit(Classifier(), loader(n=64))
    assert trainer.global_step == 6


def test_early_stopping_is_ignored_until_min_epochs(tmp_path: Path) -> None:
    stopper = tc.callbacks.EarlyStopping(monitor="val_loss", patience=0, stopping_threshold=1e9)
    trainer = quiet_trainer(tmp_path, max_epochs=10, min_epochs=4, callbacks=[stopper])
    trainer.fit(Classifier(), loader(n=64), loader(n=32))
    assert trainer.current_epoch == 4


def test_without_minimums_should_stop_ends_the_run_at_once(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=10, callbacks=[StopsAtOnce()])
    trainer.fit(Classifier(), loader(n=64))
    assert trainer.global_step == 1
