"""Bad settings and bad modules fail with a message naming the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import trainer_core as tc
from tests.unit.helpers import Classifier, loader, quiet_trainer


@pytest.mark.parametrize("precision", ["64", "fp8", 8, True])
def test_unknown_precision_lists_the_valid_ones(precision: Any) -> None:
    with pytest.raises(tc.MisconfigurationError, match=r'precision=.*"32-true", "16-mixed", "bf16-mixed"'):
        tc.Trainer(precision=precision, logger=False)


@pytest.mark.parametrize("precision", [32, "32", "bf16", "16", 16, "32-true", "bf16-mixed"])
def test_precision_aliases(precision: Any) -> None:
    tc.Trainer(precision=precision, logger=False)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("limit_train_batches", 1.5),
        ("val_check_interval", 0.0),
        ("accumulate_grad_batches", 0),
        ("gradient_clip_algorithm", "l3"),
        ("log_every_n_steps", 0),
        ("fast_dev_run", -1),
        ("accelerator", "tpu"),
        ("devices", "many"),
    ],
)
def test_bad_settings_name_the_key_and_value(key: str, value: Any) -> None:
    with pytest.raises(tc.MisconfigurationError, match=rf"{key}={value!r}"):
        tc.Trainer(**{key: value}, logger=False)


def test_no_training_step(tmp_path: Path) -> None:
    class NoStep(tc.TrainingModule):
        def configure_optimizers(self) -> Any:
            return None

    with pytest.raises(tc.MisconfigurationError, match="training_step"):
        quiet_trainer(tmp_path).fit(NoStep(), loader())


def test_unknown_configure_optimizers_form_lists_the_accepted_ones(tmp_path: Path) -> None:
    class Odd(Classifier):
        def configure_optimizers(self) -> Any:
            return "adam please"

    with pytest.raises(tc.MisconfigurationError, match="configure_optimizers"):
        quiet_trainer(tmp_path).fit(Odd(), loader())


def test_optimizer_idx_signature_points_to_manual_optimization(tmp_path: Path) -> None:
    class OldGan(Classifier):
        def training_step(self, batch: Any, batch_idx: int, optimizer_idx: int) -> Any:  # type: ignore[override]
            return None

    with pytest.raises(tc.MisconfigurationError, match="automatic_optimization = False"):
        quiet_trainer(tmp_path).fit(OldGan(), loader())


def test_missing_monitored_metric_for_plateau_scheduler(tmp_path: Path) -> None:
    class Plateau(Classifier):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "val_acc"}

    with pytest.raises(tc.MisconfigurationError, match=r"val_acc.*train_loss"):
        quiet_trainer(tmp_path).fit(Plateau(), loader())


def test_several_devices_in_one_process_says_how_to_launch(tmp_path: Path) -> None:
    with pytest.raises(tc.MisconfigurationError, match="torchrun"):
        quiet_trainer(tmp_path, devices=2, accelerator="cpu").fit(Classifier(), loader())
