"""ThroughputMonitor: samples/s, step time, data wait and ETA in a real fit; the straggler rule."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trainer_core as tc
from trainer_core.callbacks.throughput import ForwardTimer, StragglerWatch, ThroughputMonitor
from trainer_core.errors import MisconfigurationError


class RecordingLogger:
    def __init__(self) -> None:
        self.records: list[tuple[dict[str, float], int | None]] = []
        self.log_dir = self.save_dir = "."

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, metrics: Any = None) -> None: ...
    def save(self) -> None: ...
    def finalize(self, status: str) -> None: ...


class Classifier(tc.TrainingModule):
    def __init__(self, forward_sleep_s: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)
        self.forward_sleep_s = forward_sleep_s

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(self.forward_sleep_s)
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SlowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Every sample takes `delay_s` to read: a loader the training waits on."""

    def __init__(self, size: int, delay_s: float) -> None:
        self.data = TensorDataset(torch.randn(size, 8), torch.randint(0, 2, (size,)))
        self.delay_s = delay_s

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.delay_s)
        return self.data[index]  # type: ignore[no-any-return]


def fit(tmp_path: Path, loader: Any, module: tc.TrainingModule, **trainer_args: Any) -> tuple[Any, Any]:
    logger = RecordingLogger()
    monitor = ThroughputMonitor()
    trainer = tc.Trainer(
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        **trainer_args,
    )
    trainer.fit(module, loader)
    return trainer, (logger, monitor)


def throughput_records(logger: RecordingLogger) -> list[tuple[dict[str, float], int | None]]:
    return [(m, s) for m, s in logger.records if any(k.startswith("throughput/") for k in m)]


@pytest.mark.timeout(60)
def test_a_real_fit_logs_samples_per_second_and_step_time_at_the_trainer_log_steps(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(torch.randn(96, 8), torch.randint(0, 2, (96,))), batch_size=8)
    _, (logger, monitor) = fit(tmp_path, loader, Classifier(), max_epochs=2, log_every_n_steps=4)
    records = throughput_records(logger)
    assert [step for _, step in records] == [3, 7, 11, 15, 19, 23]  # the trainer's own logger steps
    for metrics, _ in records:
        assert metrics["throughput/samples_per_s"] > 0
        assert metrics["throughput/step_time_s"] > 0
        assert metrics["throughput/batches_per_s"] == pytest.approx(1 / metrics["throughput/step_time_s"])
        assert 0 <= metrics["throughput/data_wait_fraction"] <= 1
    # samples/s is 8 samples a batch over the measured step time (one rank, no validation).
    last = records[-1][0]
    assert last["throughput/samples_per_s"] == pytest.approx(8 * last["throughput/batches_per_s"], rel=1e-6)
    assert monitor.job_samples == 96 * 2
    assert monitor.samples_per_s is not None and monitor.samples_per_s > 0


@pytest.mark.timeout(60)
def test_data_wait_and_forward_time_are_measured_where_they_happen(tmp_path: Path) -> None:
    delay_s, batch_size, forward_s = 0.004, 4, 0.01
    # More batches than steps: the loop reads one batch ahead, so every step below waits for one fetch.
    loader = DataLoader(SlowDataset(64, delay_s), batch_size=batch_size)
    _, (logger, _) = fit(
        tmp_path, loader, Classifier(forward_sleep_s=forward_s), max_steps=8, log_every_n_steps=4
    )
    records = throughput_records(logger)
    assert len(records) == 2
    for metrics, _ in records:
        # The loader sleeps batch_size * delay_s per batch before the step sees it; the step sleeps forward_s.
        assert metrics["throughput/data_wait_s"] >= batch_size * delay_s * 0.9
        assert metrics["throughput/forward_s"] >= forward_s * 0.9
        assert metrics["throughput/step_time_s"] >= metrics["throughput/data_wait_s"] + forward_s * 0.9


def test_the_progress_bar_gets_samples_per_second_and_the_fit_eta() -> None:
    monitor = ThroughputMonitor()
    trainer = SimpleNamespace(global_step=100)
    assert monitor.progress_bar_metrics(trainer) == {}  # type: ignore[arg-type]  # nothing measured yet
    monitor._total_steps = 1000
    monitor.last = {"samples_per_s": 1234.5, "wall_s_per_step": 0.5}
    shown = monitor.progress_bar_metrics(trainer)  # type: ignore[arg-type]
    assert shown == {"samples/s": "1234", "fit_eta": "07:30"}  # 900 steps left at 0.5 s
    monitor._total_steps = float("inf")  # an unbounded fit has no ETA
    assert "fit_eta" not in monitor.progress_bar_metrics(trainer)  # type: ignore[arg-type]


def test_a_straggler_is_named_after_the_configured_number_of_slow_intervals() -> None:
    watch = StragglerWatch(factor=1.5, intervals=3)
    hosts = ["node01", "node02", "node03", "node04"]
    slow = [0.10, 0.11, 0.30, 0.10]
    assert watch.update(slow, hosts, 50) == []
    assert watch.update(slow, hosts, 50) == []
    warnings = watch.update(slow, hosts, 50)
    assert len(warnings) == 1
    assert "rank 2 on host node03" in warnings[0] and "1.5x" in warnings[0] and "3 consecutive" in warnings[0]
    assert watch.update(slow, hosts, 50) == []  # once per streak
    assert watch.update([0.1, 0.1, 0.1, 0.1], hosts, 50) == []  # back in line: the streak restarts
    assert [watch.update(slow, hosts, 50) for _ in range(3)][-1] != []


def test_no_straggler_below_the_factor_or_when_slowness_moves_between_ranks() -> None:
    watch = StragglerWatch(factor=1.5, intervals=2)
    hosts = ["a", "b"]
    assert watch.update([0.14, 0.10], hosts, 50) == []
    assert watch.update([0.14, 0.10], hosts, 50) == []  # 1.4x: below the factor
    assert watch.update([0.20, 0.10], hosts, 50) == []
    assert watch.update([0.10, 0.20], hosts, 50) == []  # a different rank each time: no streak
    assert watch.update([0.30], ["a"], 50) == []  # one rank has nobody to compare with


class GatheringCollectives:
    """Two ranks; the other rank reports `other` from every all_gather_object."""

    def __init__(self, other: dict[str, Any]) -> None:
        self.world_size = 2
        self.other = other

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj, self.other]


def test_rank_zero_warns_about_a_slow_other_rank_and_logs_min_max_per_rank(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trainer_core.callbacks.throughput")
    other = {"host": "gpu-node-7", "samples": 64, "train_s": 1.0, "step_time_s": 0.125}
    other.update({"data_wait_s": 0.05, "forward_s": 0.05})
    logger = RecordingLogger()
    trainer = SimpleNamespace(
        collectives=GatheringCollectives(other),
        is_global_zero=True,
        loggers=[logger],
        log_every_n_steps=2,
        global_step=0,
        last_data_wait_s=0.0,
        progress=SimpleNamespace(stepped_batches=0),
        estimated_stepping_batches=100,
        sanity_checking=False,
    )
    monitor = ThroughputMonitor(straggler_intervals=2)
    module = SimpleNamespace(device=torch.device("cpu"))
    monitor.on_train_start(trainer, module)  # type: ignore[arg-type]
    batch = (torch.zeros(32, 8), torch.zeros(32))
    for step in range(1, 5):
        monitor.on_train_batch_start(trainer, module, batch, step)  # type: ignore[arg-type]
        monitor.on_before_backward(trainer, module, torch.tensor(0.0))  # type: ignore[arg-type]
        trainer.progress.stepped_batches = trainer.global_step = step
        monitor.on_train_batch_end(trainer, module, None, batch, step)  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "rank 1 on host gpu-node-7" in warnings[0]
    metrics, logged_at = logger.records[-1]
    assert logged_at == 3
    assert metrics["throughput/forward_s/max_rank"] == 1.0
    assert metrics["throughput/data_wait_s/max"] == pytest.approx(0.05)
    assert metrics["throughput/samples_per_s"] > 64  # the other rank's 64/s plus this rank's own


def test_forward_timer_on_cpu_sums_the_measured_spans() -> None:
    timer = ForwardTimer(torch.device("cpu"))
    for _ in range(2):
        timer.start()
        time.sleep(0.01)
        timer.stop()
        timer.stop()  # a second backward in the same batch does not extend the span
    assert timer.collect() >= 0.018
    assert timer.collect() == 0.0


def test_bad_settings_name_the_argument_and_the_fix() -> None:
    with pytest.raises(MisconfigurationError, match=r"straggler_factor=1.0.*> 1"):
        ThroughputMonitor(straggler_factor=1.0)
    with pytest.raises(MisconfigurationError, match=r"straggler_intervals=0.*>= 1"):
        ThroughputMonitor(straggler_intervals=0)


def test_the_progress_bar_adds_throughput_and_a_summary_by_default() -> None:
    callbacks = tc.Trainer(enable_checkpointing=False).callbacks
    assert sum(isinstance(cb, ThroughputMonitor) for cb in callbacks) == 1
    assert sum(isinstance(cb, tc.callbacks.FitSummary) for cb in callbacks) == 1
    quiet = tc.Trainer(enable_checkpointing=False, enable_progress_bar=False).callbacks
    assert not any(isinstance(cb, (ThroughputMonitor, tc.callbacks.FitSummary)) for cb in quiet)
    mine = ThroughputMonitor(straggler_factor=2.0)
    assert [cb for cb in tc.Trainer(callbacks=[mine]).callbacks if isinstance(cb, ThroughputMonitor)] == [
        mine
    ]
