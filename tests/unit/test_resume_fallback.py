"""Resume never loads an unverified checkpoint: a torn last.ckpt falls back to the newest intact one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer
from trainer_core import checkpoint as checkpoint_io
from trainer_core.preemption import RunConfig


def _fit_with_checkpoints(tmp_path: Path, epochs: int) -> Path:
    directory = tmp_path / "ckpts"
    checkpoint = tc.callbacks.ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=-1)
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(Classifier(), loader(n=64))
    return directory


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_manifest_records_the_training_position(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    manifest = checkpoint_io._read_manifest(directory / "last.ckpt")
    assert manifest is not None
    assert manifest["global_step"] == 8 and manifest["epoch"] == 1 and manifest["total_batches"] == 8


def test_truncated_last_falls_back_to_the_newest_intact_checkpoint_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    _truncate(directory / "last.ckpt")
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    with caplog.at_level(logging.WARNING):
        trainer.fit(Classifier(), loader(n=64), ckpt_path=directory / "last.ckpt")
    # The newest top-k file is epoch=2 (step 12): resume continues from there, one epoch to go.
    assert trainer.ckpt_path == str(directory / "epoch=2-step=12.ckpt")
    assert trainer.global_step == 16
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "last.ckpt" in warning and "epoch=2-step=12.ckpt" in warning


def test_newest_is_chosen_by_step_not_by_modification_time(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=3)
    _truncate(directory / "last.ckpt")
    older = directory / "epoch=0-step=4.ckpt"
    older.touch()  # the newest modification time, but the oldest step
    assert (
        checkpoint_io.newest_verified(directory, exclude=("last.ckpt",)) == directory / "epoch=2-step=12.ckpt"
    )


def test_no_intact_checkpoint_is_an_error_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=1)
    for path in directory.glob("*.ckpt"):
        _truncate(path)
    with pytest.raises(tc.CheckpointError, match=r"last\.ckpt.*fails verification.*start without ckpt_path"):
        quiet_trainer(tmp_path).fit(Classifier(), loader(n=64), ckpt_path=directory / "last.ckpt")


def test_an_explicit_unverified_file_is_refused_without_fallback(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=2)
    target = directory / "epoch=1-step=8.ckpt"
    _truncate(target)
    with pytest.raises(tc.CheckpointError, match=r"epoch=1-step=8\.ckpt.*fails verification"):
        quiet_trainer(tmp_path).fit(Classifier(), loader(n=64), ckpt_path=target)


def test_a_checkpoint_without_manifest_is_accepted_when_complete(tmp_path: Path) -> None:
    directory = _fit_with_checkpoints(tmp_path, epochs=1)
    checkpoint_io.manifest_path(directory / "last.ckpt").unlink()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Classifier(), loader(n=64), ckpt_path=directory / "last.ckpt")
    assert trainer.global_step == 8
    assert torch.load(directory / "last.ckpt", weights_only=True)["global_step"] == 4


def _fit_with_config(tmp_path: Path, config: dict[str, Any], epochs: int, **extra: Any) -> tc.Trainer:
    checkpoint = tc.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        enable_checkpointing=True,
        callbacks=[checkpoint],
        plugins=[RunConfig(config=config, **extra)],
    )
    trainer.fit(Classifier(), loader(n=64), ckpt_path="last" if epochs > 1 else None)
    return trainer


def test_a_checkpoint_of_another_config_is_refused_naming_the_differing_keys(tmp_path: Path) -> None:
    config = {"model": {"lr": 0.1, "hidden": 16}, "data": {"batch_size": 16}}
    _fit_with_config(tmp_path, config, epochs=1)
    saved = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)["run_config"]
    assert saved["config"] == config and len(saved["config_hash"]) == 64
    changed = {"model": {"lr": 0.2, "hidden": 16}, "data": {"batch_size": 16, "workers": 2}}
    with pytest.raises(tc.CheckpointError, match=r"\['data\.workers', 'model\.lr'\].*allow_config_change"):
        _fit_with_config(tmp_path, changed, epochs=2)
    trainer = _fit_with_config(tmp_path, changed, epochs=2, allow_config_change=True)
    assert trainer.global_step == 8
    assert _fit_with_config(tmp_path, changed, epochs=3).global_step == 12  # now saved with the new config
