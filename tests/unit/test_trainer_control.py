"""Loop control: limits, validation cadence, max_steps, fast_dev_run, overfit_batches, early epoch end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer


class Counting(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.train_batches: list[tuple[int, int]] = []
        self.val_runs: list[int] = []
        self.val_batches = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.train_batches.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batches += 1

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_runs.append(len(self.train_batches))


def test_limits_as_int_and_fraction(tmp_path: Path) -> None:
    model = Counting()
    trainer = quiet_trainer(tmp_path, limit_train_batches=0.5, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(model, loader(n=128), loader(n=128))
    assert len(model.train_batches) == 4 and model.val_batches == 2
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [2]


@pytest.mark.parametrize(
    ("interval", "every_n", "expected"),
    [(0.5, 1, [4, 8, 12, 16]), (3, 1, [3, 6, 11, 14]), (1.0, 2, [16]), (5, None, [5, 10, 15])],
)
def test_val_check_interval_and_check_val_every_n_epoch(
    tmp_path: Path, interval: Any, every_n: Any, expected: list[int]
) -> None:
    model = Counting()
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        val_check_interval=interval,
        check_val_every_n_epoch=every_n,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader(n=128), loader(n=16))
    assert model.val_runs == expected


def test_sanity_check_runs_two_batches_and_discards_its_metrics(tmp_path: Path) -> None:
    model = Counting()
    trainer = quiet_trainer(tmp_path, limit_train_batches=0, max_epochs=1)
    trainer.fit(model, loader(), loader(n=128))
    assert model.val_batches == 2 and model.val_runs == []


def test_max_steps_stops_mid_epoch(tmp_path: Path) -> None:
    model = Counting()
    trainer = quiet_trainer(tmp_path, max_steps=5, max_epochs=None)
    trainer.fit(model, loader(n=64))
    assert trainer.global_step == 5 and len(model.train_batches) == 5
    assert trainer.settings.max_epochs == -1


def test_max_epochs_defaults_to_1000_without_max_steps(tmp_path: Path) -> None:
    assert tc.Trainer(logger=False, max_epochs=None, default_root_dir=str(tmp_path)).max_epochs == 1000


@pytest.mark.parametrize("fast_dev_run", [True, 3])
def test_fast_dev_run_runs_n_batches_and_writes_nothing(tmp_path: Path, fast_dev_run: Any) -> None:
    model = Counting()
    trainer = tc.Trainer(fast_dev_run=fast_dev_run, default_root_dir=str(tmp_path), enable_progress_bar=False)
    trainer.fit(model, loader(n=128), loader(n=128))
    n = 1 if fast_dev_run is True else 3
    assert len(model.train_batches) == n and model.val_batches == n
    assert trainer.loggers == []
    assert list(tmp_path.rglob("*.ckpt")) == [] and list(tmp_path.rglob("events.*")) == []


def test_overfit_batches_reads_the_same_batches_in_order(tmp_path: Path) -> None:
    firsts: list[float] = []

    class Overfit(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            firsts.append(float(batch[0][0, 0]))
            return super().training_step(batch, batch_idx)

    quiet_trainer(tmp_path, overfit_batches=2, max_epochs=3).fit(Overfit(), loader(shuffle=True))
    assert len(firsts) == 6 and firsts[0:2] == firsts[2:4] == firsts[4:6]


def test_on_train_batch_start_minus_one_ends_the_epoch(tmp_path: Path) -> None:
    class Stopper(Counting):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
            return -1 if batch_idx == 2 else None

    model = Stopper()
    quiet_trainer(tmp_path, max_epochs=2).fit(model, loader(n=128))
    assert model.train_batches == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_estimated_stepping_batches(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Reads(Classifier):
        def configure_optimizers(self) -> Any:
            seen.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=3).fit(Reads(), loader(n=128))
    quiet_trainer(tmp_path, max_epochs=3, max_steps=4).fit(Reads(), loader(n=128))
    assert seen == [3 * 3, 4]


def test_should_stop_ends_the_run(tmp_path: Path) -> None:
    class Stop(tc.callbacks.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            trainer.should_stop = trainer.global_step >= 3

    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[Stop()])
    trainer.fit(Classifier(), loader(n=128))
    assert trainer.global_step == 3
