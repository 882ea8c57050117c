"""FitSummary: the end-of-fit screen names the time, steps, throughput, best checkpoint and where logs are."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc


class Classifier(tc.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    return DataLoader(data, batch_size=16)


@pytest.mark.timeout(60)
def test_summary_after_a_fit_with_a_monitored_checkpoint_and_tensorboard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trainer_core.callbacks.summary")
    checkpoint = tc.callbacks.ModelCheckpoint(monitor="val_loss", save_last=True)
    trainer = tc.Trainer(
        max_epochs=2,
        callbacks=[checkpoint],
        default_root_dir=str(tmp_path),
        enable_model_summary=False,
        log_every_n_steps=2,
    )
    trainer.fit(Classifier(), loader(), loader())
    summary = next(cb for cb in trainer.callbacks if isinstance(cb, tc.callbacks.FitSummary)).summary
    assert summary and summary in caplog.text  # logged once, as written
    assert re.search(
        r"Fit finished in \d+m \d\d\.\ds: 8 optimizer steps this run \(global step 8, epoch 2", summary
    )
    assert re.search(r"Throughput: [\d.e+]+ samples/s over all ranks, [\d.e+]+ steps/s", summary)
    assert checkpoint.best_model_score is not None
    score = float(checkpoint.best_model_score)
    assert f"Best checkpoint: {checkpoint.best_model_path} (val_loss={score:.6g}, mode=min)" in summary
    assert os.path.isfile(checkpoint.best_model_path)
    assert f"Last checkpoint: {checkpoint.last_model_path}" in summary
    log_dir = trainer.logger.log_dir
    assert f"TensorBoardLogger: {log_dir}" in summary
    assert f"tensorboard --logdir {os.path.abspath(trainer.logger.root_dir)}" in summary


@pytest.mark.timeout(60)
def test_summary_without_logger_checkpoints_or_throughput_monitor_estimates_from_the_loader(
    tmp_path: Path,
) -> None:
    summary_callback = tc.callbacks.FitSummary()
    trainer = tc.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[summary_callback],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Classifier(), loader())
    text = summary_callback.summary
    assert "3 optimizer steps this run" in text
    assert "Throughput: about" in text  # estimated from batch_size 16, no ThroughputMonitor
    assert "Checkpoints: off" in text
    assert "no logger" in text
    assert "tensorboard --logdir" not in text


@pytest.mark.timeout(60)
def test_summary_counts_only_the_steps_of_a_resumed_run(tmp_path: Path) -> None:
    first = tc.Trainer(max_steps=4, default_root_dir=str(tmp_path), enable_model_summary=False, logger=False)
    first.fit(Classifier(), loader())
    saved = first.checkpoint_callback.best_model_path
    assert os.path.isfile(saved)
    second = tc.Trainer(max_steps=7, default_root_dir=str(tmp_path), enable_model_summary=False, logger=False)
    second.fit(Classifier(), loader(), ckpt_path=saved)
    summary = next(cb for cb in second.callbacks if isinstance(cb, tc.callbacks.FitSummary)).summary
    assert "3 optimizer steps this run (global step 7" in summary


def test_other_ranks_write_no_summary() -> None:
    callback = tc.callbacks.FitSummary()

    class Rank1:
        is_global_zero = False

    callback.on_fit_end(Rank1(), None)  # type: ignore[arg-type]
    assert callback.summary == ""
