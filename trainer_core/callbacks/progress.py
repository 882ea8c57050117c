"""Progress bars: `ProgressBar` (the base) and `TQDMProgressBar`, readable on a terminal and in a log file.

On a terminal, tqdm redraws bars in place. When the stream is not a terminal (a Slurm log file),
carriage-return redraws would fill the file with one huge line, so plain lines are written instead, every
`plain_percent` per cent of the epoch or every `plain_interval_s` seconds, whichever comes first.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from trainer_core.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer


class ProgressBar(Callback):
    """Base class of progress bars: on/off, and the metrics a bar shows."""

    def __init__(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def get_metrics(self, trainer: Trainer, pl_module: TrainingModule) -> dict[str, int | str | float]:
        """What the bar shows after its counters: the `prog_bar=True` metrics, as plain numbers, then what
        monitoring callbacks offer through a `progress_bar_metrics(trainer)` method (samples/s, ETA of the
        fit, device utilisation)."""
        metrics: dict[str, int | str | float] = {}
        for name, value in trainer.progress_bar_metrics.items():
            number = value.item() if hasattr(value, "item") else value
            metrics[name] = number
        for callback in getattr(trainer, "callbacks", ()):
            offered = getattr(callback, "progress_bar_metrics", None)
            if callable(offered):
                metrics.update(offered(trainer))
        return metrics


class TQDMProgressBar(ProgressBar):
    """A training bar (epoch, step, it/s, ETA, `prog_bar` metrics) and a validation bar, on rank zero only.

    `refresh_rate` is the number of batches between redraws (0 turns the bar off); `leave` keeps each
    epoch's bar on screen. `file` is the stream to write to (standard output by default).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        leave: bool = False,
        file: TextIO | None = None,
        plain_percent: float = 10.0,
        plain_interval_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.refresh_rate = refresh_rate
        self.leave = leave
        self._file = file
        self._plain_percent = plain_percent
        self._plain_interval_s = plain_interval_s
        self._train_bar: tqdm[Any] | None = None
        self._val_bar: tqdm[Any] | None = None
        self._plain: _PlainLines | None = None

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.refresh_rate > 0

    @property
    def file(self) -> TextIO:
        return self._file if self._file is not None else sys.stdout

    def _is_terminal(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        return bool(isatty and isatty())

    def _active(self, trainer: Trainer) -> bool:
        return self.is_enabled and trainer.is_global_zero

    # -- training --------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not self._active(trainer):
            return
        total = _finite(trainer.num_training_batches)
        description = f"Epoch {trainer.current_epoch}"
        if self._is_terminal():
            self._close_train_bar()
            self._train_bar = self._new_bar(description, total, position=0, leave=self.leave)
        else:
            self._plain = _PlainLines(
                self.file, description, total, self._plain_percent, self._plain_interval_s
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active(trainer):
            return
        done = batch_idx + 1
        if self._train_bar is not None:
            # Reading the metrics reduces them: only on a redraw.
            if done % self.refresh_rate == 0 or done == self._train_bar.total:
                self._train_bar.set_postfix(self._postfix(trainer, pl_module), refresh=False)
                # `update` redraws at most every `mininterval`: a fast loop is not slowed by the terminal.
                self._train_bar.update(done - self._train_bar.n)
        elif self._plain is not None and self._plain.due(done):
            self._plain.write(done, self._postfix(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not self._active(trainer):
            return
        if self._train_bar is not None:
            self._train_bar.set_postfix(self._postfix(trainer, pl_module), refresh=True)
            if not self.leave:
                self._close_train_bar()
        elif self._plain is not None:
            self._plain.finish(self._postfix(trainer, pl_module))
            self._plain = None

    def on_train_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._close_train_bar()

    # -- validation ------------------------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not self._active(trainer) or not self._is_terminal():
            return
        if trainer.sanity_checking:
            total, description = _finite(sum(_as_list(trainer.num_sanity_val_batches))), "Sanity Checking"
        else:
            total, description = _finite(sum(_as_list(trainer.num_val_batches))), "Validation"
        self._val_bar = self._new_bar(description, total, position=1, leave=False)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: TrainingModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._val_bar is not None and (batch_idx + 1) % self.refresh_rate == 0:
            # Several dataloaders restart batch_idx at 0: count batches, not indices.
            self._val_bar.update(self.refresh_rate)

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if self._train_bar is not None and not trainer.sanity_checking:
            self._train_bar.set_postfix(self._postfix(trainer, pl_module), refresh=True)

    # -- helpers ---------------------------------------------------------------------------------------
    def _postfix(self, trainer: Trainer, pl_module: TrainingModule) -> dict[str, Any]:
        postfix: dict[str, Any] = {"step": trainer.global_step}
        for name, value in self.get_metrics(trainer, pl_module).items():
            postfix[name] = f"{value:.4g}" if isinstance(value, float) else value
        return postfix

    def _new_bar(self, description: str, total: int | None, position: int, leave: bool) -> tqdm[Any]:
        return tqdm(
            total=total,
            desc=description,
            position=position,
            leave=leave,
            file=self.file,
            dynamic_ncols=True,
            smoothing=0,
        )

    def _close_train_bar(self) -> None:
        if self._train_bar is not None:
            self._train_bar.close()
            self._train_bar = None

    def on_exception(self, trainer: Trainer, pl_module: TrainingModule, exception: BaseException) -> None:
        self._close_train_bar()
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None


class _PlainLines:
    """One plain progress line per step of `percent` per cent, or per `interval_s` seconds of training."""

    def __init__(self, file: TextIO, description: str, total: int | None, percent: float, interval_s: float):
        self.file = file
        self.description = description
        self.total = total
        self.every = max(1, math.ceil(total * percent / 100)) if total else None
        self.interval_s = interval_s
        self.start = self.last_time = time.monotonic()
        self.last_written = 0
        self.seen = 0

    def due(self, done: int) -> bool:
        self.seen = done
        if self.every is not None and done // self.every > self.last_written // self.every:
            return True
        return time.monotonic() - self.last_time >= self.interval_s

    def write(self, done: int, postfix: dict[str, Any]) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        where = f"{done}/{self.total} ({100 * done / self.total:.0f}%)" if self.total else f"{done}"
        eta = ""
        if self.total and rate > 0:
            eta = f" ETA {tqdm.format_interval((self.total - done) / rate)}"
        metrics = " ".join(f"{key}={value}" for key, value in postfix.items())
        elapsed_text = tqdm.format_interval(elapsed)
        line = f"{self.description} {where} {rate:.2f} it/s elapsed {elapsed_text}{eta} {metrics}"
        self.file.write(line.rstrip() + "\n")
        self.file.flush()
        self.last_time, self.last_written = now, done

    def finish(self, postfix: dict[str, Any]) -> None:
        if self.seen and self.last_written != self.seen:
            self.write(self.seen, postfix)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _finite(total: Any) -> int | None:
    """A batch count tqdm can show: None when it is unknown or infinite (an iterable dataset)."""
    if total is None or total == float("inf"):
        return None
    return int(total)
