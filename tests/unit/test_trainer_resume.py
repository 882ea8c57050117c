"""Checkpoints: the layout, resume bit for bit, and the errors for bad checkpoint paths and files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import trainer_core as tc
from tests.unit.helpers import loader, quiet_trainer, weights


class Noisy(tc.TrainingModule):
    """Dropout, batch norm, Adam and an epoch scheduler: everything resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32),
            torch.nn.BatchNorm1d(32),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(32, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.7)}


class SaveEachEpoch(tc.callbacks.Callback):
    """Writes `epoch{N}.ckpt` from on_train_epoch_end, as a checkpoint callback does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.save_checkpoint(self.directory / f"epoch{trainer.current_epoch}.ckpt")


def _fit(tmp_path: Path, max_epochs: int, ckpt_path: Any = None) -> tuple[Noisy, tc.Trainer]:
    tc.seed_everything(7, workers=True)
    model = Noisy()
    trainer = quiet_trainer(
        tmp_path, max_epochs=max_epochs, deterministic=True, callbacks=[SaveEachEpoch(tmp_path)]
    )
    trainer.fit(model, loader(n=96, shuffle=True), loader(n=32), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.timeout(120)
def test_resume_from_an_epoch_end_gives_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    straight, _ = _fit(tmp_path / "a", max_epochs=4)
    _fit(tmp_path / "b", max_epochs=2)
    resumed, trainer = _fit(tmp_path / "c", max_epochs=4, ckpt_path=tmp_path / "b" / "epoch1.ckpt")
    assert trainer.current_epoch == 4 and trainer.global_step == 4 * 6
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[name]), name
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == pytest.approx([1e-2 * 0.7**4])


def test_checkpoint_layout_is_readable_with_weights_only(tmp_path: Path) -> None:
    _fit(tmp_path, max_epochs=1)
    state = torch.load(tmp_path / "epoch0.ckpt", weights_only=True)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "epoch", "global_step", "loops", "rng_states",
            "callbacks", "precision", "hyper_parameters", "format_version"} <= set(state)  # fmt: skip
    assert state["epoch"] == 0 and state["global_step"] == 6
    assert state["loops"]["epoch_batches_done"] is True


def test_module_checkpoint_hooks(tmp_path: Path) -> None:
    class Hooked(Noisy):
        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["custom"] = {"answer": 42}

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.answer = checkpoint["custom"]["answer"]

    model = Hooked()
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, loader())
    trainer.save_checkpoint(tmp_path / "h.ckpt")
    assert Hooked.load_from_checkpoint(tmp_path / "h.ckpt").answer == 42


def test_missing_ckpt_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(tc.CheckpointError, match=r"nope.ckpt"):
        quiet_trainer(tmp_path).fit(Noisy(), loader(), ckpt_path=tmp_path / "nope.ckpt")


def test_corrupt_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(tc.CheckpointError, match=r"bad.ckpt"):
        quiet_trainer(tmp_path).fit(Noisy(), loader(), ckpt_path=bad)


def test_ckpt_path_last_resumes_from_the_checkpoint_callback(tmp_path: Path) -> None:
    def run(epochs: int, ckpt_path: Any = None) -> tc.Trainer:
        checkpoint = tc.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
        trainer = quiet_trainer(
            tmp_path, max_epochs=epochs, enable_checkpointing=True, callbacks=[checkpoint]
        )
        trainer.fit(Noisy(), loader(), loader(n=32), ckpt_path=ckpt_path)
        return trainer

    run(1)
    trainer = run(2, ckpt_path="last")
    assert trainer.global_step == 2 * 8
