"""`ThroughputMonitor`: samples/s, step time, data-wait time, the fit's ETA, and the straggler warning.

Per step the monitor only reads clocks and counts samples; at the steps where the trainer writes its loggers
every rank gathers its interval's numbers (one `all_gather_object`), rank zero logs them, and every rank runs
the straggler check on the same numbers.

Why stragglers are judged on "data wait + forward" and not on step time: DDP's gradient all-reduce makes every
rank wait for the slowest one, so wall-clock step times are equal on all ranks. What differs is the work a
rank does before it reaches the all-reduce: waiting on its loader and running the forward pass. On CUDA the
forward is timed with CUDA events (GPU time, not launch time), read once per log interval.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from trainer_core.callbacks import rank_stats
from trainer_core.callbacks.base import Callback
from trainer_core.errors import MisconfigurationError
from trainer_core.metrics import infer_batch_size

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

PREFIX = "throughput/"


class ForwardTimer:
    """Time from a batch's start to its first backward: host clock on CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._started: Any = None
        self._host_s = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self) -> None:
        if self._cuda:
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
        else:
            self._started = time.perf_counter()

    def stop(self) -> None:
        """End the running measurement; later calls within the same batch (more backwards) do nothing."""
        if self._started is None:
            return
        if self._cuda:
            ended = torch.cuda.Event(enable_timing=True)
            ended.record()
            self._events.append((self._started, ended))
        else:
            self._host_s += time.perf_counter() - self._started
        self._started = None

    def collect(self) -> float:
        """Seconds measured since the previous `collect` (waits for the GPU to reach the last event)."""
        total = self._host_s
        if self._events:
            self._events[-1][1].synchronize()
            total += sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
        self._host_s, self._events = 0.0, []
        return total


class StragglerWatch:
    """Warns when one rank's per-step time stays above `factor` x the median of the other ranks.

    The median of the *other* ranks: with two ranks the median of all would include the slow rank itself.
    A rank is reported once per streak of `intervals` consecutive log intervals; the streak restarts when
    it drops below the threshold.
    """

    def __init__(self, factor: float, intervals: int) -> None:
        self.factor = factor
        self.intervals = intervals
        self.streaks: dict[int, int] = {}

    def update(self, per_step_s: Sequence[float], hosts: Sequence[str], every_n_steps: int) -> list[str]:
        """Record one interval's per-rank times; the warnings due now."""
        warnings: list[str] = []
        if len(per_step_s) < 2:
            return warnings
        import statistics  # here, not at import: it loads `decimal`, a noticeable part of a rank's start

        for rank, own in enumerate(per_step_s):
            others = statistics.median(t for r, t in enumerate(per_step_s) if r != rank)
            slow = others > 0 and own > self.factor * others
            self.streaks[rank] = self.streaks.get(rank, 0) + 1 if slow else 0
            if self.streaks[rank] == self.intervals:
                warnings.append(
                    f"Straggler: rank {rank} on host {hosts[rank]} spent {own:.4g} s per step on data wait "
                    f"and forward, above {self.factor:g}x the median of the other ranks ({others:.4g} s), "
                    f"for {self.intervals} consecutive log intervals of {every_n_steps} steps. "
                    "Every rank waits for it at each gradient sync: check that host's data loading "
                    "(throughput/data_wait_s per rank), GPU clocks and temperature (DeviceStatsMonitor) "
                    "and other processes on it."
                )
        return warnings


class ThroughputMonitor(Callback):
    """Log samples/s, step time and data-wait time under `throughput/`, show samples/s and the fit's ETA on
    the progress bar, and warn about a straggling rank.

    Logged at the steps where the trainer writes its loggers: `samples_per_s` and `batches_per_s` (the whole
    job), `step_time_s` (wall time per training batch, validation excluded), `data_wait_s` (time per batch
    blocked on the dataloader), `data_wait_fraction` and `forward_s`; with several ranks the per-rank ones
    as `/min`, `/max`, `/min_rank`, `/max_rank`. `straggler_factor` and `straggler_intervals` set when a
    rank counts as a straggler (see `StragglerWatch`).
    """

    def __init__(self, straggler_factor: float = 1.5, straggler_intervals: int = 3, prog_bar: bool = True):
        if not straggler_factor > 1.0:
            raise MisconfigurationError(
                f"ThroughputMonitor(straggler_factor={straggler_factor!r}): use a number > 1 "
                "(1.5 warns when a rank is 50% slower than the others)."
            )
        if isinstance(straggler_intervals, bool) or not isinstance(straggler_intervals, int):
            straggler_intervals = -1
        if straggler_intervals < 1:
            raise MisconfigurationError(
                f"ThroughputMonitor(straggler_intervals={straggler_intervals!r}): use an int >= 1 "
                "(consecutive log intervals a rank must stay slow before the warning)."
            )
        self.prog_bar = prog_bar
        self.straggler = StragglerWatch(straggler_factor, straggler_intervals)
        self._cadence = rank_stats.LogCadence()
        self._timer = ForwardTimer(torch.device("cpu"))
        self._host = rank_stats.hostname()
        self._total_steps: float = math.inf
        self.last: dict[str, float] = {}  # the job-wide numbers of the last logged interval
        self.job_samples = 0  # samples of every rank in the logged intervals
        self.job_train_s = 0.0  # their training time (validation excluded)
        self._reset_interval(time.perf_counter())

    def _reset_interval(self, now: float, global_step: int = 0) -> None:
        self._interval_start = self._wall_start = now
        self._start_step = global_step
        self._paused_s = 0.0
        self._paused_at: float | None = None
        self._batches = 0
        self._samples = 0
        self._data_wait_s = 0.0

    # -- the hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._cadence.reset()
        self.straggler.streaks.clear()
        self._timer = ForwardTimer(pl_module.device)
        try:
            self._total_steps = float(trainer.estimated_stepping_batches)
        except Exception:  # an unsized loader without max_steps: no ETA
            self._total_steps = math.inf
        self._reset_interval(time.perf_counter(), trainer.global_step)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: TrainingModule, batch: Any, batch_idx: int
    ) -> None:
        self._timer.start()

    def on_before_backward(self, trainer: Trainer, pl_module: TrainingModule, loss: torch.Tensor) -> None:
        self._timer.stop()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._timer.stop()  # a step that never called backward (manual optimization that skipped it)
        self._batches += 1
        self._samples += infer_batch_size(batch)
        self._data_wait_s += float(getattr(trainer, "last_data_wait_s", 0.0))
        step = self._cadence.due(trainer)
        if step is not None:
            self._end_interval(trainer, step)

    def on_validation_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not trainer.sanity_checking:
            self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self._paused_at is not None:
            self._paused_s += time.perf_counter() - self._paused_at
            self._paused_at = None

    # -- what the progress bar and the summary read ----------------------------------------------------
    def progress_bar_metrics(self, trainer: Trainer) -> dict[str, str]:
        """`samples/s` of the job and the ETA of the whole fit, from the last logged interval."""
        if not self.prog_bar or not self.last:
            return {}
        shown = {"samples/s": f"{self.last['samples_per_s']:.4g}"}
        remaining = self._total_steps - trainer.global_step
        if math.isfinite(remaining) and self.last.get("wall_s_per_step", 0.0) > 0:
            shown["fit_eta"] = _duration(max(remaining, 0.0) * self.last["wall_s_per_step"])
        return shown

    @property
    def samples_per_s(self) -> float | None:
        """The job's mean samples/s over every logged interval (None before the first)."""
        return self.job_samples / self.job_train_s if self.job_train_s > 0 else None

    # -- one log interval ------------------------------------------------------------------------------
    def _end_interval(self, trainer: Trainer, step: int) -> None:
        now = time.perf_counter()
        train_s = max(now - self._interval_start - self._paused_s, 1e-9)
        batches = max(self._batches, 1)
        mine = {
            "host": self._host,
            "samples": self._samples,
            "train_s": train_s,
            "step_time_s": train_s / batches,
            "data_wait_s": self._data_wait_s / batches,
            "forward_s": self._timer.collect() / batches,
        }
        per_rank = rank_stats.gather(trainer, mine)  # every rank, same step: never rank-conditional
        steps = max(trainer.global_step - self._start_step, 1)
        self._record(per_rank, (now - self._wall_start) / steps)
        warnings = self.straggler.update(
            [r["data_wait_s"] + r["forward_s"] for r in per_rank],
            [r["host"] for r in per_rank],
            int(trainer.log_every_n_steps),
        )
        if trainer.is_global_zero:
            for warning in warnings:
                log.warning(warning)
            self._log(trainer, per_rank, step)
        self._reset_interval(time.perf_counter(), trainer.global_step)

    def _record(self, per_rank: list[dict[str, Any]], wall_s_per_step: float) -> None:
        samples = sum(int(r["samples"]) for r in per_rank)
        rate = sum(r["samples"] / r["train_s"] for r in per_rank)
        step_time = max(r["step_time_s"] for r in per_rank)
        self.job_samples += samples
        self.job_train_s += samples / rate if rate > 0 else 0.0
        self.last = {
            "samples_per_s": rate,
            "batches_per_s": 1.0 / step_time if step_time > 0 else 0.0,
            "data_wait_fraction": max(r["data_wait_s"] / r["step_time_s"] for r in per_rank),
            "wall_s_per_step": wall_s_per_step,
        }

    def _log(self, trainer: Trainer, per_rank: list[dict[str, Any]], step: int) -> None:
        if not trainer.loggers:
            return
        timings = [{k: float(r[k]) for k in ("step_time_s", "data_wait_s", "forward_s")} for r in per_rank]
        scalars = rank_stats.flatten(PREFIX, timings)
        scalars.update({PREFIX + k: v for k, v in self.last.items() if k != "wall_s_per_step"})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)


def _duration(seconds: float) -> str:
    """`1:02:03` or `02:03`, as tqdm writes durations."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
