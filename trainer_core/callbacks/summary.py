"""`FitSummary`: one screen at the end of `fit` saying how it went and where everything was written."""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
from typing import TYPE_CHECKING, Any

from trainer_core.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)


class FitSummary(Callback):
    """Log, on rank zero when `fit` ends, a short summary: wall time, steps, throughput, the best checkpoint
    and its metric, where the logs and TensorBoard files are, and the command that opens TensorBoard on them.

    Throughput comes from a `ThroughputMonitor` among the callbacks (exact samples/s of the whole job);
    without one it is estimated from the training loader's batch size. `summary` holds the text after fit.
    """

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._start_step = 0
        self._start_batches = 0
        self.summary = ""

    def on_fit_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        # After a resume these count from the restored step: the summary describes this run.
        self._started = time.perf_counter()
        self._start_step = trainer.global_step
        self._start_batches = trainer.progress.total_batches

    def on_fit_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not trainer.is_global_zero:
            return
        wall_s = time.perf_counter() - self._started
        lines = [_title(trainer, wall_s, trainer.global_step - self._start_step)]
        lines.append(self._throughput(trainer, wall_s))
        lines += _checkpoints(trainer)
        lines += _logs(trainer)
        self.summary = "\n".join(lines)
        log.info("\n%s", self.summary)

    def _throughput(self, trainer: Trainer, wall_s: float) -> str:
        from trainer_core.callbacks.throughput import ThroughputMonitor

        steps = trainer.global_step - self._start_step
        per_s = f"{steps / wall_s:.4g} steps/s" if wall_s > 0 else "-"
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)), None)
        if monitor is not None and monitor.samples_per_s is not None:
            return f"  Throughput: {monitor.samples_per_s:.4g} samples/s over all ranks, {per_s}"
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        batches = trainer.progress.total_batches - self._start_batches
        if isinstance(batch_size, int) and wall_s > 0:
            rate = batches * batch_size * trainer.world_size / wall_s
            return f"  Throughput: about {rate:.4g} samples/s over all ranks (wall time), {per_s}"
        return f"  Throughput: {per_s}"


def _title(trainer: Trainer, wall_s: float, steps: int) -> str:
    status = "stopped early" if trainer.should_stop else "finished"
    return (
        f"Fit {status} in {_duration(wall_s)}: {steps} optimizer steps this run "
        f"(global step {trainer.global_step}, epoch {trainer.current_epoch}, {trainer.world_size} rank(s))"
    )


def _checkpoints(trainer: Trainer) -> list[str]:
    callback = trainer.checkpoint_callback
    if callback is None:
        return ["  Checkpoints: off"]
    lines: list[str] = []
    best, score = callback.best_model_path, callback.best_model_score
    if best and callback.monitor is not None and score is not None:
        value = float(score)
        shown = f"{value:.6g}" if math.isfinite(value) else str(value)
        lines.append(f"  Best checkpoint: {best} ({callback.monitor}={shown}, mode={callback.mode})")
    elif best:
        lines.append(f"  Checkpoint: {best}")
    if callback.last_model_path:
        lines.append(f"  Last checkpoint: {callback.last_model_path}")
    if not lines:
        lines.append(f"  Checkpoints: none written (directory {callback.dirpath})")
    return lines


def _logs(trainer: Trainer) -> list[str]:
    from trainer_core.loggers import TensorBoardLogger

    lines: list[str] = [] if trainer.loggers else ["  Logs: no logger (logger=False)"]
    for logger in trainer.loggers:
        kind = type(logger).__name__
        lines.append(f"  {kind}: {getattr(logger, 'log_dir', None) or getattr(logger, 'save_dir', '?')}")
    lines += [f"  Log file: {path}" for path in _log_files()]
    boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if boards:
        root = boards[0].root_dir or boards[0].log_dir
        lines.append(f"  Open TensorBoard: tensorboard --logdir {shlex.quote(os.path.abspath(root))}")
    return lines


def _log_files() -> list[str]:
    """The files the logging module writes to (a launcher's per-rank log file, for instance)."""
    seen: list[str] = []
    for logger in (logging.getLogger(), logging.getLogger("trainer_core")):
        for handler in logger.handlers:
            path: Any = getattr(handler, "baseFilename", None)
            if isinstance(path, str) and path != os.devnull and path not in seen:
                seen.append(path)
    return seen


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h {minutes:02d}m {secs:04.1f}s" if hours else f"{minutes}m {secs:04.1f}s"
