"""DeviceStatsMonitor: background sampling, logging at the trainer's log steps, min/max across ranks with the
rank of each, the progress bar's view, NVML off with one info line."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer_core.callbacks.device_stats import DeviceStatsMonitor
from trainer_core.errors import MisconfigurationError


class RecordingLogger:
    def __init__(self) -> None:
        self.records: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((dict(metrics), step))


class FakeCollectives:
    """`world_size` ranks: this one is `rank`; the others report `others[r]` from all_gather_object."""

    def __init__(self, rank: int, others: dict[int, Any]) -> None:
        self.rank = rank
        self.world_size = len(others) + 1
        self.others = others
        self.gathered: list[Any] = []

    def all_gather_object(self, obj: Any) -> list[Any]:
        self.gathered.append(obj)
        return [obj if r == self.rank else self.others[r] for r in range(self.world_size)]


class FakeTrainer:
    def __init__(self) -> None:
        self.loggers: list[Any] = [RecordingLogger()]
        self.is_global_zero = True
        self.global_step = 0
        self.log_every_n_steps = 3
        self.progress = SimpleNamespace(stepped_batches=0)
        self.collectives: Any = None


def run_steps(monitor: DeviceStatsMonitor, trainer: FakeTrainer, stepped: list[int]) -> None:
    """One batch end per entry of `stepped` (the loop's stepped-batch counter after that batch)."""
    module = SimpleNamespace(device=torch.device("cpu"))
    for batch_idx, count in enumerate(stepped):
        trainer.progress.stepped_batches = count
        trainer.global_step = count
        monitor.on_train_batch_end(trainer, module, None, None, batch_idx)  # type: ignore[arg-type]


def wait_for(condition: Any, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail("the sampling thread produced nothing")
        time.sleep(0.01)


def test_samples_cpu_on_a_background_thread_and_logs_every_n_steps() -> None:
    trainer = FakeTrainer()
    module = SimpleNamespace(device=torch.device("cpu"))
    monitor = DeviceStatsMonitor(interval_s=0.01)
    sampled_on: set[int] = set()
    original = monitor._sample

    def recording_sample() -> None:
        sampled_on.add(threading.get_ident())
        original()

    monitor._sample = recording_sample  # type: ignore[method-assign]
    monitor.on_train_start(trainer, module)  # type: ignore[arg-type]
    try:
        wait_for(lambda: len(sampled_on - {threading.get_ident()}) > 0)
        run_steps(monitor, trainer, list(range(1, 8)))
    finally:
        monitor.on_train_end(trainer, module)  # type: ignore[arg-type]
    records = trainer.loggers[0].records
    # The trainer writes its own metrics after stepped batches 3 and 6, at logger steps 2 and 5: the same x.
    assert [step for _, step in records] == [2, 5]
    metrics = records[-1][0]
    assert metrics["device_stats/cpu_process_rss_mb"] > 0
    assert metrics["device_stats/ram_system_available_mb"] > 0
    assert 0 <= metrics["device_stats/ram_system_used_percent"] <= 100
    assert "device_stats/cpu_process_percent" in metrics
    assert not any(name.startswith("device_stats/gpu_") for name in metrics)
    assert monitor._thread is None  # stopped at the end of training


def test_gpu_part_turns_off_with_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trainer_core.callbacks.device_stats")
    trainer = FakeTrainer()
    # A CUDA device on a machine without NVML (or without the device) must not break training.
    module = SimpleNamespace(device=torch.device("cuda", 0))
    monitor = DeviceStatsMonitor(interval_s=60)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the NVML-missing path is tested on CPU machines")
    monitor.on_train_start(trainer, module)  # type: ignore[arg-type]
    run_steps(monitor, trainer, [3])
    monitor.teardown(trainer, module, "fit")  # type: ignore[arg-type]
    info = [r for r in caplog.records if "GPU statistics are off" in r.getMessage()]
    assert len(info) == 1
    assert "device_stats/cpu_system_percent" in trainer.loggers[0].records[0][0]


def test_other_ranks_gather_at_the_same_steps_but_do_not_log() -> None:
    trainer = FakeTrainer()
    trainer.is_global_zero = False
    trainer.collectives = FakeCollectives(rank=1, others={0: {"cpu_process_percent": 50.0}})
    module = SimpleNamespace(device=torch.device("cpu"))
    monitor = DeviceStatsMonitor(interval_s=60)
    monitor.on_train_start(trainer, module)  # type: ignore[arg-type]
    run_steps(monitor, trainer, [1, 2, 3, 4, 5, 6])
    monitor.on_train_end(trainer, module)  # type: ignore[arg-type]
    assert trainer.loggers[0].records == []
    assert len(trainer.collectives.gathered) == 2  # joined the gathers of steps 3 and 6 like rank zero
    assert monitor.latest  # the first sample is taken at start
    assert monitor.extremes["cpu_process_percent"].max >= 0


def test_gradient_accumulation_logs_once_per_log_step() -> None:
    trainer = FakeTrainer()
    monitor = DeviceStatsMonitor(interval_s=60)
    monitor.on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))  # type: ignore[arg-type]
    # Two batches per optimizer step: the counter stays at 3 for the batch that follows the step.
    run_steps(monitor, trainer, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    monitor.on_train_end(trainer, SimpleNamespace(device=torch.device("cpu")))  # type: ignore[arg-type]
    assert [step for _, step in trainer.loggers[0].records] == [2, 5]


def test_min_and_max_across_ranks_with_the_rank_of_each() -> None:
    trainer = FakeTrainer()
    others = {
        1: {"gpu_utilization_percent": 20.0, "gpu_memory_used_mb": 4096.0},
        2: {"gpu_utilization_percent": 95.0, "gpu_memory_used_mb": 30720.0},
    }
    trainer.collectives = FakeCollectives(rank=0, others=others)
    monitor = DeviceStatsMonitor(interval_s=60)
    monitor._latest = {"gpu_utilization_percent": 60.0, "gpu_memory_used_mb": 8192.0, "gpu_power_w": 300.0}
    run_steps(monitor, trainer, [3])
    metrics, step = trainer.loggers[0].records[0]
    assert step == 2
    assert trainer.collectives.gathered == [monitor._latest]
    assert metrics["device_stats/gpu_utilization_percent/min"] == 20.0
    assert metrics["device_stats/gpu_utilization_percent/min_rank"] == 1.0
    assert metrics["device_stats/gpu_utilization_percent/max"] == 95.0
    assert metrics["device_stats/gpu_utilization_percent/max_rank"] == 2.0
    assert metrics["device_stats/gpu_memory_used_mb/max"] == 30720.0
    # A counter only rank 0 reports (power on a board that lacks it elsewhere) is min and max at rank 0.
    assert metrics["device_stats/gpu_power_w/min_rank"] == metrics["device_stats/gpu_power_w/max_rank"] == 0
    assert "device_stats/gpu_utilization_percent" not in metrics
    assert monitor.progress_bar_metrics(trainer) == {"gpu": "20-95%", "gpu_mem": "30.0G"}  # type: ignore[arg-type]
    assert DeviceStatsMonitor(prog_bar=False).progress_bar_metrics(trainer) == {}  # type: ignore[arg-type]


def test_one_rank_logs_plain_names_and_the_bar_shows_cpu_without_a_gpu() -> None:
    trainer = FakeTrainer()
    monitor = DeviceStatsMonitor(interval_s=60)
    monitor._latest = {"cpu_process_percent": 99.6, "cpu_process_rss_mb": 512.0}
    run_steps(monitor, trainer, [3])
    assert trainer.loggers[0].records[0][0] == {
        "device_stats/cpu_process_percent": 99.6,
        "device_stats/cpu_process_rss_mb": 512.0,
    }
    assert monitor.progress_bar_metrics(trainer) == {"cpu": "100%", "rss": "0.5G"}  # type: ignore[arg-type]


def test_needs_a_logger_and_a_positive_interval() -> None:
    trainer = FakeTrainer()
    trainer.loggers = []
    with pytest.raises(MisconfigurationError, match="logger"):
        DeviceStatsMonitor().on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationError, match="interval_s"):
        DeviceStatsMonitor(interval_s=0)
