"""DeviceStatsMonitor: background sampling, logging every log_every_n_steps, NVML off with one info line."""

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


class FakeTrainer:
    def __init__(self) -> None:
        self.loggers: list[Any] = [RecordingLogger()]
        self.is_global_zero = True
        self.global_step = 0
        self.log_every_n_steps = 3


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
        for step in range(7):
            trainer.global_step = step
            monitor.on_train_batch_end(trainer, module, None, None, step)  # type: ignore[arg-type]
    finally:
        monitor.on_train_end(trainer, module)  # type: ignore[arg-type]
    records = trainer.loggers[0].records
    assert [step for _, step in records] == [0, 3, 6]
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
    monitor.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
    monitor.teardown(trainer, module, "fit")  # type: ignore[arg-type]
    info = [r for r in caplog.records if "GPU statistics are off" in r.getMessage()]
    assert len(info) == 1
    assert "device_stats/cpu_system_percent" in trainer.loggers[0].records[0][0]


def test_other_ranks_sample_but_do_not_log() -> None:
    trainer = FakeTrainer()
    trainer.is_global_zero = False
    module = SimpleNamespace(device=torch.device("cpu"))
    monitor = DeviceStatsMonitor(interval_s=60)
    monitor.on_train_start(trainer, module)  # type: ignore[arg-type]
    monitor.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
    monitor.on_train_end(trainer, module)  # type: ignore[arg-type]
    assert trainer.loggers[0].records == []
    assert monitor.latest  # the first sample is taken at start


def test_needs_a_logger_and_a_positive_interval() -> None:
    trainer = FakeTrainer()
    trainer.loggers = []
    with pytest.raises(MisconfigurationError, match="logger"):
        DeviceStatsMonitor().on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationError, match="interval_s"):
        DeviceStatsMonitor(interval_s=0)
