"""LearningRateMonitor: Lightning's names, intervals, momentum and weight decay, no logger."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer_core.callbacks.lr_monitor import LearningRateMonitor
from trainer_core.errors import MisconfigurationError


class RecordingLogger:
    def __init__(self) -> None:
        self.records: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((dict(metrics), step))


class FakeTrainer:
    def __init__(self, optimizers: list[torch.optim.Optimizer], configs: list[Any]) -> None:
        self.optimizers = optimizers
        self.lr_scheduler_configs = configs
        self.loggers: list[Any] = [RecordingLogger()]
        self.is_global_zero = True
        self.global_step = 0
        self.log_every_n_steps = 2


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


def config(scheduler: Any, interval: str = "epoch", name: str | None = None) -> Any:
    return SimpleNamespace(scheduler=scheduler, interval=interval, name=name)


def start(callback: LearningRateMonitor, trainer: FakeTrainer) -> RecordingLogger:
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    return trainer.loggers[0]  # type: ignore[no-any-return]


def test_names_follow_lightning() -> None:
    adam = torch.optim.Adam(params(), lr=0.1)
    adam2 = torch.optim.Adam(params(), lr=0.2)
    sgd = torch.optim.SGD([{"params": params()}, {"params": params(), "lr": 0.5}], lr=0.3)
    named = torch.optim.SGD([{"params": params(), "name": "head"}, {"params": params()}], lr=0.4)
    trainer = FakeTrainer([adam, adam2, sgd, named], [])
    callback = LearningRateMonitor(logging_interval="step")
    logger = start(callback, trainer)
    callback.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    metrics, step = logger.records[-1]
    assert metrics == {
        "lr-Adam": 0.1,
        "lr-Adam-1": 0.2,
        "lr-SGD/pg1": 0.3,
        "lr-SGD/pg2": 0.5,
        "lr-SGD-1/head": 0.4,
        "lr-SGD-1/pg2": 0.4,
    }
    assert step == 0


def test_scheduler_name_and_interval() -> None:
    optimizer = torch.optim.SGD(params(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = FakeTrainer([optimizer], [config(scheduler, "epoch", name="my-lr")])
    callback = LearningRateMonitor()
    logger = start(callback, trainer)
    callback.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    assert logger.records == []  # an epoch-interval scheduler is not logged at steps
    for _ in range(2):
        callback.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
        optimizer.step()
        scheduler.step()
    assert [metrics for metrics, _ in logger.records] == [{"my-lr": 1.0}, {"my-lr": 0.5}]
    assert callback.lrs == {"my-lr": [1.0, 0.5]}


def test_step_logging_every_n_steps() -> None:
    optimizer = torch.optim.SGD(params(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = FakeTrainer([optimizer], [config(scheduler, "step")])
    callback = LearningRateMonitor()
    logger = start(callback, trainer)
    for step in range(5):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)  # type: ignore[arg-type]
        optimizer.step()
        scheduler.step()
    assert [(metrics["lr-SGD"], step) for metrics, step in logger.records] == [
        (1.0, 0),
        (0.25, 2),
        (0.0625, 4),
    ]


def test_momentum_and_weight_decay() -> None:
    adam = torch.optim.Adam(params(), lr=0.1, betas=(0.8, 0.99), weight_decay=0.01)
    sgd = torch.optim.SGD(params(), lr=0.1, momentum=0.9)
    trainer = FakeTrainer([adam, sgd], [])
    callback = LearningRateMonitor(logging_interval="epoch", log_momentum=True, log_weight_decay=True)
    logger = start(callback, trainer)
    callback.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    metrics = logger.records[-1][0]
    assert metrics["lr-Adam-momentum"] == pytest.approx(0.8)
    assert metrics["lr-Adam-weight_decay"] == pytest.approx(0.01)
    assert metrics["lr-SGD-momentum"] == pytest.approx(0.9)


def test_other_ranks_log_nothing() -> None:
    trainer = FakeTrainer([torch.optim.SGD(params(), lr=1.0)], [])
    trainer.is_global_zero = False
    callback = LearningRateMonitor()
    logger = start(callback, trainer)
    callback.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    callback.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    assert logger.records == []


def test_needs_a_logger_and_a_valid_interval() -> None:
    trainer = FakeTrainer([], [])
    trainer.loggers = []
    with pytest.raises(MisconfigurationError, match="logger"):
        LearningRateMonitor().on_train_start(trainer, None)  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationError, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")
