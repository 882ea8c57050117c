"""EarlyStopping: patience and min_delta, thresholds, non-finite values, state, rank agreement."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc
from trainer_core.callbacks.early_stopping import EarlyStopping
from trainer_core.errors import MisconfigurationError


class FakeTrainer:
    def __init__(self, any_rank_stops: bool = False) -> None:
        self.callback_metrics: dict[str, Any] = {}
        self.should_stop = False
        self.current_epoch = 0
        self.sanity_checking = False
        self.fast_dev_run = False
        self.state = SimpleNamespace(stage="fit")
        self.val_check_interval = 1.0
        self.check_val_every_n_epoch = 1
        self.decisions: list[tuple[bool, bool]] = []
        self._any_rank_stops = any_rank_stops

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.decisions.append((decision, all))
        # Another rank that wants to stop makes every rank stop (all=False means "any").
        return decision or (self._any_rank_stops and not all)


def run(callback: EarlyStopping, values: list[float], trainer: FakeTrainer | None = None) -> FakeTrainer:
    """Feed one value per epoch until the callback stops the trainer; return the trainer."""
    trainer = trainer or FakeTrainer()
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for value in values:
        trainer.callback_metrics = {"val_loss": torch.tensor(value)}
        callback.on_validation_end(trainer, None)  # type: ignore[arg-type]
        callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
        if trainer.should_stop:
            break
        trainer.current_epoch += 1
    return trainer


def test_stops_after_patience_checks_without_improvement() -> None:
    callback = EarlyStopping("val_loss", patience=2)
    trainer = run(callback, [1.0, 0.9, 0.95, 0.91, 0.5])
    assert trainer.should_stop
    assert callback.stopped_epoch == 3
    assert float(callback.best_score) == pytest.approx(0.9)
    assert callback.wait_count == 2


def test_min_delta_counts_small_improvements_as_none() -> None:
    callback = EarlyStopping("val_loss", patience=2, min_delta=0.1)
    trainer = run(callback, [1.0, 0.95, 0.92, 0.1])
    assert trainer.should_stop and callback.stopped_epoch == 2


def test_mode_max() -> None:
    callback = EarlyStopping("val_loss", patience=1, mode="max")
    trainer = run(callback, [0.1, 0.2, 0.3, 0.25])
    assert trainer.should_stop and callback.stopped_epoch == 3


def test_keeps_going_while_improving() -> None:
    trainer = run(EarlyStopping("val_loss", patience=1), [5.0, 4.0, 3.0, 2.0])
    assert not trainer.should_stop


def test_stopping_and_divergence_thresholds() -> None:
    stop_at = EarlyStopping("val_loss", patience=100, stopping_threshold=0.5)
    assert run(stop_at, [1.0, 0.7, 0.4, 0.3]).should_stop and stop_at.stopped_epoch == 2
    diverge = EarlyStopping("val_loss", patience=100, divergence_threshold=10.0)
    assert run(diverge, [1.0, 5.0, 11.0]).should_stop and diverge.stopped_epoch == 2


def test_non_finite_value_stops_unless_check_finite_is_off() -> None:
    callback = EarlyStopping("val_loss", patience=100)
    assert run(callback, [1.0, math.nan]).should_stop
    relaxed = EarlyStopping("val_loss", patience=100, check_finite=False)
    assert not run(relaxed, [1.0, math.nan]).should_stop


def test_missing_metric_with_strict_names_it_and_lists_available() -> None:
    callback = EarlyStopping("val_acc")
    with pytest.raises(MisconfigurationError, match=r"'val_acc'.*\['val_loss'\]"):
        run(callback, [1.0])
    assert not run(EarlyStopping("val_acc", strict=False), [1.0]).should_stop


def test_decision_is_any_rank_and_stops_this_rank_too() -> None:
    trainer = run(EarlyStopping("val_loss", patience=5), [1.0, 0.5], FakeTrainer(any_rank_stops=True))
    assert trainer.should_stop
    assert trainer.decisions[0] == (False, False)


def test_skipped_during_sanity_check_and_fast_dev_run() -> None:
    trainer = FakeTrainer()
    trainer.sanity_checking = True
    callback = EarlyStopping("val_loss", patience=0)
    run(callback, [1.0, 2.0], trainer)
    assert not trainer.should_stop and trainer.decisions == []


def test_checks_at_validation_end_when_validation_is_not_once_per_epoch() -> None:
    trainer = FakeTrainer()
    trainer.check_val_every_n_epoch = 2
    callback = EarlyStopping("val_loss", patience=1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    trainer.callback_metrics = {"val_loss": torch.tensor(1.0)}
    callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert trainer.decisions == []
    callback.on_validation_end(trainer, None)  # type: ignore[arg-type]
    assert len(trainer.decisions) == 1


def test_state_round_trip_continues_the_count() -> None:
    first = EarlyStopping("val_loss", patience=3)
    run(first, [1.0, 1.1, 1.2])
    state = first.state_dict()
    assert set(state) == {"wait_count", "stopped_epoch", "best_score", "patience"}
    resumed = EarlyStopping("val_loss", patience=3)
    resumed.load_state_dict(state)
    trainer = run(resumed, [1.3])
    assert trainer.should_stop and resumed.wait_count == 3


def test_bad_mode_names_the_key() -> None:
    with pytest.raises(MisconfigurationError, match="mode"):
        EarlyStopping("val_loss", mode="median")


def test_real_fit_stops_when_the_metric_stalls(tmp_path: Path) -> None:
    class Frozen(tc.TrainingModule):
        """A model that cannot improve (learning rate 0): val_loss is the same every epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    loader = DataLoader(TensorDataset(torch.ones(8, 2)), batch_size=4)
    stopper = EarlyStopping("val_loss", patience=2)
    trainer = tc.Trainer(
        max_epochs=20,
        callbacks=[stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Frozen(), loader, loader)
    assert stopper.stopped_epoch == 2
    assert trainer.current_epoch == 3
    assert trainer.should_stop
