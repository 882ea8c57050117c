"""TQDMProgressBar: plain lines in a log file, tqdm on a terminal, rank zero only, prog_bar metrics."""

from __future__ import annotations

import io
from typing import Any

import torch

from trainer_core.callbacks.progress import ProgressBar, TQDMProgressBar


class FakeTrainer:
    def __init__(self, batches: int = 100) -> None:
        self.is_global_zero = True
        self.current_epoch = 0
        self.global_step = 0
        self.num_training_batches = batches
        self.num_val_batches = [4]
        self.num_sanity_val_batches = [2]
        self.sanity_checking = False
        self.progress_bar_metrics: dict[str, Any] = {"loss": torch.tensor(0.123456)}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(bar: TQDMProgressBar, trainer: FakeTrainer, validate: bool = False) -> None:
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    for batch_idx in range(trainer.num_training_batches):
        trainer.global_step += 1
        bar.on_train_batch_end(trainer, None, None, None, batch_idx)  # type: ignore[arg-type]
    if validate:
        bar.on_validation_start(trainer, None)  # type: ignore[arg-type]
        for batch_idx in range(4):
            bar.on_validation_batch_end(trainer, None, None, None, batch_idx)  # type: ignore[arg-type]
        bar.on_validation_end(trainer, None)  # type: ignore[arg-type]
    bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    trainer.current_epoch += 1


def test_log_file_gets_a_few_plain_lines_per_epoch() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = FakeTrainer(batches=100)
    run_epoch(bar, trainer, validate=True)
    run_epoch(bar, trainer)
    text = stream.getvalue()
    assert "\r" not in text  # no carriage-return redraws in a file
    lines = text.splitlines()
    assert len(lines) == 20  # every 10 % of each of the two epochs
    assert lines[0].startswith("Epoch 0 10/100 (10%)")
    assert "it/s" in lines[0] and "ETA" in lines[0]
    assert "step=10" in lines[0] and "loss=0.1235" in lines[0]
    assert lines[-1].startswith("Epoch 1 100/100 (100%)") and "step=200" in lines[-1]


def test_log_file_with_unknown_length_still_reports() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream, plain_interval_s=0.0)
    trainer = FakeTrainer(batches=3)
    trainer.num_training_batches = float("inf")  # type: ignore[assignment]
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    for batch_idx in range(3):
        bar.on_train_batch_end(trainer, None, None, None, batch_idx)  # type: ignore[arg-type]
    bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1", "2", "3"]


def test_terminal_gets_tqdm_bars_with_metrics() -> None:
    stream = Terminal()
    bar = TQDMProgressBar(file=stream, leave=True)
    trainer = FakeTrainer(batches=5)
    run_epoch(bar, trainer, validate=True)
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    text = stream.getvalue()
    assert "\r" in text
    assert "Epoch 0: 100%" in text and "5/5" in text
    assert "loss=0.1235" in text and "step=5" in text
    assert "Validation" in text


def test_refresh_rate_limits_redraws() -> None:
    class Counting(TQDMProgressBar):
        reads = 0

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            Counting.reads += 1
            return super().get_metrics(trainer, pl_module)

    bar = Counting(refresh_rate=10, file=Terminal())
    run_epoch(bar, FakeTrainer(batches=50))
    assert Counting.reads == 5 + 1  # one per tenth batch, one at the epoch end


def test_silent_on_other_ranks_and_when_disabled() -> None:
    stream = io.StringIO()
    trainer = FakeTrainer(batches=10)
    trainer.is_global_zero = False
    run_epoch(TQDMProgressBar(file=stream), trainer)
    trainer.is_global_zero = True
    disabled = TQDMProgressBar(file=stream)
    disabled.disable()
    run_epoch(disabled, trainer)
    run_epoch(TQDMProgressBar(refresh_rate=0, file=stream), trainer)
    assert stream.getvalue() == ""
    assert isinstance(disabled, ProgressBar) and not disabled.is_enabled


class OffersMetrics:
    """A monitoring callback that offers the bar its own numbers."""

    def progress_bar_metrics(self, trainer: Any) -> dict[str, str]:
        return {"samples/s": "1234", "fit_eta": "07:30"}


def test_the_bar_shows_what_monitoring_callbacks_offer_after_the_logged_metrics() -> None:
    trainer = FakeTrainer(batches=10)
    trainer.callbacks = [OffersMetrics(), object()]  # type: ignore[attr-defined]
    out = io.StringIO()
    run_epoch(TQDMProgressBar(file=out), trainer)
    last = out.getvalue().strip().splitlines()[-1]
    assert last.endswith("step=10 loss=0.1235 samples/s=1234 fit_eta=07:30")
