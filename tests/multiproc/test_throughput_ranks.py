"""Two real Gloo ranks: DeviceStatsMonitor min/max across ranks, ThroughputMonitor straggler warning."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc

BODY = """
import logging, time
from datetime import timedelta
from types import SimpleNamespace
import torch
from trainer_core import distributed as D
from trainer_core.callbacks import DeviceStatsMonitor, ThroughputMonitor
from trainer_core.environment import RankEnvironment

collectives = D.init_process_group(RankEnvironment.detect(), "gloo", timedelta(seconds=60),
                                   agreement_timeout=timedelta(seconds=30))
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("trainer_core.callbacks.throughput").addHandler(Keep(level=logging.WARNING))

class Recorder:
    def __init__(self):
        self.records = []
    def log_metrics(self, metrics, step=None):
        self.records.append([metrics, step])

trainer = SimpleNamespace(collectives=collectives, is_global_zero=rank == 0, loggers=[Recorder()],
                          log_every_n_steps=1, global_step=0, last_data_wait_s=0.0, sanity_checking=False,
                          progress=SimpleNamespace(stepped_batches=0), estimated_stepping_batches=6)
module = SimpleNamespace(device=torch.device("cpu"))
throughput = ThroughputMonitor(straggler_intervals=3)
stats = DeviceStatsMonitor(interval_s=60)
throughput.on_train_start(trainer, module)
stats.on_train_start(trainer, module)
batch = torch.zeros(16, 4)
for step in range(1, 7):
    throughput.on_train_batch_start(trainer, module, batch, step)
    time.sleep(0.04 if rank == 1 else 0.005)  # rank 1's forward is slow
    throughput.on_before_backward(trainer, module, torch.tensor(0.0))
    collectives.barrier("gradient sync")  # DDP's all-reduce: both ranks leave together
    trainer.progress.stepped_batches = trainer.global_step = step
    stats._latest = {"gpu_utilization_percent": 90.0 - 50 * rank, "gpu_memory_used_mb": 1000.0 + rank}
    throughput.on_train_batch_end(trainer, module, None, batch, step)
    stats.on_train_batch_end(trainer, module, None, batch, step)
stats.on_train_end(trainer, module)
extremes = {k: [v.min, v.min_rank, v.max, v.max_rank] for k, v in stats.extremes.items()}
save_result({"warnings": warnings, "records": trainer.loggers[0].records, "extremes": extremes,
             "bar": stats.progress_bar_metrics(trainer), "samples": throughput.job_samples})
D.destroy_process_group()
"""


@pytest.mark.timeout(120)
def test_straggler_named_by_rank_and_host_and_device_stats_min_max_on_every_rank(run_ranks: RunRanks) -> None:
    job = run_ranks(BODY)
    job.assert_succeeded()
    rank0, rank1 = job.results
    host = socket.gethostname().split(".")[0]
    assert len(rank0["warnings"]) == 1, rank0["warnings"]  # after 3 slow intervals, once
    assert f"rank 1 on host {host}" in rank0["warnings"][0]
    assert rank1["warnings"] == []  # only rank zero reports
    assert rank1["records"] == []  # and only rank zero writes the loggers
    for result in job.results:  # every rank holds the same aggregate
        assert result["extremes"]["gpu_utilization_percent"] == [40.0, 1, 90.0, 0]
        assert result["extremes"]["gpu_memory_used_mb"] == [1000.0, 0, 1001.0, 1]
        assert result["bar"]["gpu"] == "40-90%"
        assert result["samples"] == 6 * 16 * 2  # both ranks' samples
    steps = [step for metrics, step in rank0["records"] if "device_stats/gpu_memory_used_mb/max" in metrics]
    assert steps == [0, 1, 2, 3, 4, 5]
    last = next(m for m, _ in reversed(rank0["records"]) if "throughput/forward_s/max" in m)
    assert last["throughput/forward_s/max_rank"] == 1.0
    assert last["throughput/forward_s/max"] >= 0.035
