"""TensorBoardLogger and CSVLogger: folders, scalars and hparams read back, column growth, resume in place."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc
from trainer_core.callbacks import LearningRateMonitor
from trainer_core.loggers import CSVLogger, Logger, TensorBoardLogger
from trainer_core.rank_zero import rank_zero_only


def scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_tensorboard_versions_count_up(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path)
    assert first.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    first.log_metrics({"a": 1.0}, step=0)
    first.finalize("success")
    assert TensorBoardLogger(tmp_path).version == 1
    assert TensorBoardLogger(tmp_path, name="exp", version=7).log_dir == str(tmp_path / "exp" / "version_7")
    assert TensorBoardLogger(tmp_path, name="", version="run").log_dir == str(tmp_path / "run")
    assert TensorBoardLogger(tmp_path, version=2, sub_dir="train").log_dir.endswith("version_2/train")
    assert isinstance(first, Logger)


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, prefix="fit")
    for step in range(3):
        logger.log_metrics({"loss": torch.tensor(1.0 / (step + 1)), "acc": step * 0.5}, step=step)
    logger.finalize("success")
    assert scalars(logger.log_dir, "fit-loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [step for step, _ in scalars(logger.log_dir, "fit-acc")] == [0, 1, 2]


def test_tensorboard_hparams_plugin_and_yaml(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam"}, "path": tmp_path})
    logger.finalize("success")
    accumulator = EventAccumulator(logger.log_dir)
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in content
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.01)
    assert hparams["opt/name"].string_value == "adam"  # nested keys are flattened for the HPARAMS tab
    assert hparams["layers"].string_value == "[64, 32]"
    assert scalars(logger.log_dir, "hp_metric") == [(0, -1.0)]
    saved = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert saved == {"lr": 0.01, "layers": [64, 32], "opt": {"name": "adam"}, "path": str(tmp_path)}


def test_tensorboard_resume_continues_one_series_without_duplicates(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path, version="run")
    for step in range(10):
        first.log_metrics({"loss": float(step)}, step=step)
    first.finalize("failed")
    # The checkpoint was taken after step 5: steps 6..9 are logged again by the resumed run.
    resumed = TensorBoardLogger(tmp_path, version="run")
    resumed.resume_from_step(6)
    for step in range(6, 12):
        resumed.log_metrics({"loss": 100.0 + step}, step=step)
    resumed.finalize("success")
    series = scalars(resumed.log_dir, "loss")
    assert [step for step, _ in series] == list(range(12))
    assert [value for step, value in series if step >= 6] == [100.0 + s for s in range(6, 12)]


def test_loggers_write_nothing_on_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    for logger in (TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv")):
        logger.log_hyperparams({"lr": 1})
        logger.log_metrics({"loss": 1.0}, step=0)
        logger.experiment.add_scalar("x", 1.0)  # a dummy experiment swallows direct calls too
        logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_csv_columns_grow_and_rows_keep_their_values(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)  # second row: flushed
    logger.log_metrics({"loss": 0.25, "val_loss": torch.tensor(0.75)}, step=2)
    logger.finalize("success")
    header, rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    assert header == ["step", "loss", "val_loss"]
    assert [(r["step"], r["loss"], r["val_loss"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", ""),
        ("2", "0.25", "0.75"),
    ]
    assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text()) == {"lr": 0.1}
    assert Path(logger.log_dir) == tmp_path / "lightning_logs" / "version_0"


def test_csv_buffers_until_flush(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 1.0}, step=1)
    assert not (Path(logger.log_dir) / "metrics.csv").exists()
    logger.log_metrics({"loss": 1.0}, step=2)
    assert len(read_csv(Path(logger.log_dir) / "metrics.csv")[1]) == 3


def test_csv_resume_drops_rows_from_the_resume_step(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, version="run")
    for step in range(5):
        first.log_metrics({"loss": float(step)}, step=step)
    first.finalize("failed")
    resumed = CSVLogger(tmp_path, version="run")
    resumed.resume_from_step(3)
    resumed.log_metrics({"loss": 30.0, "lr": 0.1}, step=3)
    resumed.finalize("success")
    header, rows = read_csv(Path(resumed.log_dir) / "metrics.csv")
    assert header == ["step", "loss", "lr"]
    assert [(r["step"], r["loss"]) for r in rows] == [("0", "0.0"), ("1", "1.0"), ("2", "2.0"), ("3", "30.0")]


# -- with the real Trainer -------------------------------------------------------------------------------


class Regressor(tc.TrainingModule):
    def __init__(self, lr: float = 0.05, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8), DataLoader(TensorDataset(x[32:], y[32:]))


def test_real_fit_writes_tensorboard_and_csv(tmp_path: Path) -> None:
    tensorboard, table = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    trainer = tc.Trainer(
        max_epochs=3,
        logger=[tensorboard, table],
        callbacks=[LearningRateMonitor()],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Regressor(lr=0.1), *loaders())
    assert trainer.global_step == 12
    # TensorBoard: one train_loss point per step, val_loss per epoch, the learning rate halving each epoch.
    assert [step for step, _ in scalars(tensorboard.log_dir, "train_loss")] == list(range(12))
    assert len(scalars(tensorboard.log_dir, "val_loss")) == 3
    assert [value for _, value in scalars(tensorboard.log_dir, "lr-SGD")] == pytest.approx([0.1, 0.05, 0.025])
    # CSV: the columns grew as metrics appeared; every step has a row.
    header, rows = read_csv(Path(table.log_dir) / "metrics.csv")
    assert {"step", "epoch", "train_loss", "val_loss", "lr-SGD"} <= set(header)
    assert {int(row["step"]) for row in rows if row["train_loss"]} == set(range(12))
    assert sum(1 for row in rows if row["val_loss"]) == 3
    # Checkpoints go beside the first logger's files.
    assert (Path(tensorboard.log_dir) / "checkpoints").is_dir()


def test_real_fit_records_the_module_hparams(tmp_path: Path) -> None:
    tensorboard, table = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    trainer = tc.Trainer(
        max_epochs=1, logger=[tensorboard, table], enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(Regressor(lr=0.1), *loaders())
    for logger in (tensorboard, table):
        saved = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
        assert saved == {"lr": 0.1, "width": 4}


class _SaveAtEpoch(tc.callbacks.Callback):
    def __init__(self, path: Path, epoch: int) -> None:
        self.path, self.epoch = path, epoch

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_resumed_fit_continues_the_same_series_with_no_step_twice(tmp_path: Path) -> None:
    def run(ckpt_path: Path | None) -> tuple[TensorBoardLogger, CSVLogger]:
        tensorboard = TensorBoardLogger(tmp_path, name="", version="tb")
        table = CSVLogger(tmp_path, name="", version="csv")
        trainer = tc.Trainer(
            max_epochs=3,
            logger=[tensorboard, table],
            callbacks=[_SaveAtEpoch(tmp_path / "epoch1.ckpt", 1)],
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(Regressor(lr=0.1), *loaders(), ckpt_path=ckpt_path)
        return tensorboard, table

    run(None)  # the whole run logs steps 0..11; the checkpoint holds the state at step 8
    tensorboard, table = run(tmp_path / "epoch1.ckpt")
    assert [step for step, _ in scalars(tensorboard.log_dir, "train_loss")] == list(range(12))
    assert [step for step, _ in scalars(tensorboard.log_dir, "val_loss")] == [3, 7, 11]
    assert [step for step, _ in scalars(tensorboard.log_dir, "hp_metric")] == [0]
    _, rows = read_csv(Path(table.log_dir) / "metrics.csv")
    train_steps = [int(row["step"]) for row in rows if row["train_loss"]]
    assert train_steps == list(range(12))
    for logger in (tensorboard, table):
        saved = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
        assert saved == {"lr": 0.1, "width": 4}
