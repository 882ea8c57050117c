"""ModelCheckpoint: file names, top-k retention, triggers, state across a restart, rank agreement."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc
from trainer_core.callbacks import Callback
from trainer_core.callbacks.model_checkpoint import ModelCheckpoint, format_template
from trainer_core.checkpoint import save, wait_for_pending
from trainer_core.errors import MisconfigurationError


class FakeTrainer:
    """The trainer attributes ModelCheckpoint reads; `save_checkpoint` writes a real file on rank zero."""

    def __init__(self, root: Path, rank: int = 0, channel: list[Any] | None = None) -> None:
        self.default_root_dir = str(root)
        self.loggers: list[Any] = []
        self.log_dir = None
        self.current_epoch = 0
        self.global_step = 0
        self.callback_metrics: dict[str, Any] = {}
        self.global_rank = rank
        self.is_global_zero = rank == 0
        self.sanity_checking = False
        self.fast_dev_run: int | bool = False
        self.state = SimpleNamespace(stage="fit")
        self.num_val_batches = [2]
        self.check_val_every_n_epoch = 1
        self.val_check_interval = 1.0
        self.ckpt_path: str | None = None
        self.saved: list[str] = []
        self.present_at_save: list[set[str]] = []
        # Two fake ranks in one process: rank zero's broadcasts are queued here for rank one to take.
        self._channel = channel

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if self._channel is None:
            return obj
        if self.is_global_zero:
            self._channel.append(obj)
            return obj
        return self._channel.pop(0)

    def save_checkpoint(
        self, path: str, weights_only: bool = False, background: bool = False, also_as: Sequence[str] = ()
    ) -> None:
        for name in (path, *also_as):
            self.saved.append(name)
            directory = os.path.dirname(name)
            self.present_at_save.append(set(os.listdir(directory)) if os.path.isdir(directory) else set())
            if self.is_global_zero:
                os.makedirs(directory, exist_ok=True)
                torch.save({"global_step": self.global_step}, name)


def end_epoch(callback: ModelCheckpoint, trainer: FakeTrainer, steps: int = 10, **metrics: float) -> None:
    """One epoch: `steps` optimizer steps, then validation with `metrics`, then the epoch end."""
    trainer.global_step += steps
    trainer.callback_metrics = {name: torch.tensor(value) for name, value in metrics.items()}
    callback.on_validation_end(trainer, None)  # type: ignore[arg-type]
    callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    trainer.current_epoch += 1


def files(directory: Path) -> list[str]:
    """The checkpoints in `directory` once queued deletions are done; fails on a manifest without its file."""
    wait_for_pending()
    names = sorted(os.listdir(directory)) if directory.exists() else []
    checkpoints = [name for name in names if name.endswith(".ckpt")]
    orphans = [name for name in names if name.endswith(".ckpt.json") and name[: -len(".json")] not in names]
    assert orphans == [], f"manifests without their checkpoint: {orphans}"
    return checkpoints


def test_template_inserts_metric_names_and_applies_formats() -> None:
    assert format_template("{epoch:02d}-{val_loss:.2f}", {"epoch": 3, "val_loss": 0.1234}) == (
        "epoch=03-val_loss=0.12"
    )
    assert format_template("{epoch}-{val_loss:.2f}", {"epoch": 3, "val_loss": torch.tensor(0.5)}) == (
        "epoch=3-val_loss=0.50"
    )
    plain = format_template("e{epoch}_l{val_loss:.1f}", {"epoch": 1, "val_loss": 2.0}, False)
    assert plain == "e1_l2.0"


def test_template_missing_metric_is_zero_and_longer_names_win() -> None:
    assert format_template("{missing:d}", {}) == "missing=0"
    assert format_template("{epoch}-{epoch_test}", {"epoch": 1, "epoch_test": 7}) == "epoch=1-epoch_test=7"
    assert format_template("{val.loss:.1f}", {"val.loss": 0.25}) == "val.loss=0.2"


def test_default_name_and_dirpath(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint()
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert callback.dirpath == os.path.join(str(tmp_path), "checkpoints")
    end_epoch(callback, trainer, steps=5)
    assert files(tmp_path / "checkpoints") == ["epoch=0-step=5.ckpt"]
    end_epoch(callback, trainer, steps=5)
    # save_top_k=1 without a monitor keeps only the newest.
    assert files(tmp_path / "checkpoints") == ["epoch=1-step=10.ckpt"]


def test_dirpath_follows_the_logger_log_dir(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    trainer.loggers = [object()]
    trainer.log_dir = str(tmp_path / "tb" / "version_3")  # type: ignore[assignment]
    callback = ModelCheckpoint()
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert callback.dirpath == str(tmp_path / "tb" / "version_3" / "checkpoints")


def test_top_k_keeps_the_best_files_and_tracks_best_and_kth(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}-{val_loss:.2f}", monitor="val_loss", save_top_k=2, save_last=True
    )
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for score in (0.5, 0.4, 0.6, 0.3):
        end_epoch(callback, trainer, val_loss=score)
    assert files(tmp_path) == ["epoch=1-val_loss=0.40.ckpt", "epoch=3-val_loss=0.30.ckpt", "last.ckpt"]
    assert callback.best_model_path == str(tmp_path / "epoch=3-val_loss=0.30.ckpt")
    assert callback.best_model_score is not None and float(callback.best_model_score) == pytest.approx(0.3)
    assert callback.kth_best_model_path == str(tmp_path / "epoch=1-val_loss=0.40.ckpt")
    assert set(callback.best_k_models) == {str(tmp_path / f) for f in files(tmp_path) if f != "last.ckpt"}
    assert callback.last_model_path == str(tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 40


def test_mode_max_keeps_the_highest(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="acc", mode="max", save_top_k=1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for score in (0.1, 0.9, 0.5):
        end_epoch(callback, trainer, acc=score)
    assert files(tmp_path) == ["epoch=1.ckpt"]


def test_old_top_k_file_is_deleted_only_after_the_new_one_is_written(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    end_epoch(callback, trainer, loss=1.0)
    end_epoch(callback, trainer, loss=0.5)
    # While epoch=1.ckpt was being written, epoch=0.ckpt was still on disk.
    assert "epoch=0.ckpt" in trainer.present_at_save[-1]
    assert files(tmp_path) == ["epoch=1.ckpt"]


class CommittingTrainer(FakeTrainer):
    """Saves as the real trainer does: through `save_atomic`, committed in the background when asked."""

    def save_checkpoint(
        self, path: str, weights_only: bool = False, background: bool = False, also_as: Sequence[str] = ()
    ) -> None:
        self.saved += [path, *also_as]
        save({"global_step": self.global_step}, [path, *also_as], sync=not background)


@pytest.mark.timeout(60)
def test_a_save_point_with_retention_does_not_wait_for_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = CommittingTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    end_epoch(callback, trainer, loss=1.0)
    wait_for_pending()
    held, real_fsync = threading.Event(), os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (held.wait(timeout=30), real_fsync(fd)))
    epoch_end = threading.Thread(target=end_epoch, args=(callback, trainer), kwargs={"loss": 0.5})
    epoch_end.start()
    epoch_end.join(timeout=10)
    returned = not epoch_end.is_alive()  # saved and retired epoch=0 while the commit is held
    on_disk = sorted(name for name in os.listdir(tmp_path) if not name.startswith("."))
    held.set()
    epoch_end.join(timeout=30)
    assert returned
    assert on_disk == ["epoch=0.ckpt", "epoch=0.ckpt.json"]  # the old file stays until the new one lands
    assert files(tmp_path) == ["epoch=1.ckpt"]


def test_save_top_k_zero_with_save_last_writes_only_last(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="loss", save_top_k=0, save_last=True)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    end_epoch(callback, trainer, loss=1.0)
    end_epoch(callback, trainer, loss=0.5)
    assert files(tmp_path) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 20


def test_save_top_k_minus_one_keeps_everything(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=-1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for score in (1.0, 2.0, 0.5):
        end_epoch(callback, trainer, loss=score)
    assert files(tmp_path) == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]
    assert callback.best_model_path.endswith("epoch=2.ckpt")


def test_every_n_train_steps(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for batch_idx in range(5):
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, None, None, None, batch_idx)  # type: ignore[arg-type]
    assert files(tmp_path) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    # Step-based saving does not also save at epoch ends.
    callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert len(files(tmp_path)) == 2


def test_every_n_epochs(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", every_n_epochs=2, save_top_k=-1)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for _ in range(5):
        end_epoch(callback, trainer)
    assert files(tmp_path) == ["epoch=1.ckpt", "epoch=3.ckpt"]


def test_save_last_at_train_end_holds_the_final_state(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", every_n_epochs=2, save_last=True)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for _ in range(3):
        end_epoch(callback, trainer)
    callback.on_train_end(trainer, None)  # type: ignore[arg-type]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 30


def test_missing_monitored_metric_names_it_and_lists_the_available(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="val_los")
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationError, match=r"'val_los'.*\['train_loss', 'val_loss'\]"):
        end_epoch(callback, trainer, val_loss=1.0, train_loss=2.0)


@pytest.mark.parametrize("setting", ["sanity_checking", "fast_dev_run", "validate_stage"])
def test_never_saves_during_sanity_check_fast_dev_run_or_outside_fit(tmp_path: Path, setting: str) -> None:
    trainer = FakeTrainer(tmp_path)
    if setting == "sanity_checking":
        trainer.sanity_checking = True
    elif setting == "fast_dev_run":
        trainer.fast_dev_run = True
    else:
        trainer.state.stage = "validate"
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    end_epoch(callback, trainer, loss=1.0)
    if setting != "validate_stage":
        callback.on_train_end(trainer, None)  # type: ignore[arg-type]
    assert files(tmp_path) == []


def test_state_dict_lets_a_resumed_run_continue_the_top_k(tmp_path: Path) -> None:
    trainer = FakeTrainer(tmp_path)
    first = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=2)
    first.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for score in (0.5, 0.4):
        end_epoch(first, trainer, loss=score)
    saved_state = torch.load(_roundtrip(first.state_dict(), tmp_path), weights_only=True)

    resumed = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=2)
    resumed.setup(trainer, None, "fit")  # type: ignore[arg-type]
    resumed.load_state_dict(saved_state)
    end_epoch(resumed, trainer, loss=0.45)
    # The resumed callback knew about epoch 0 (0.5) and replaced it with the better 0.45.
    assert files(tmp_path) == ["epoch=1.ckpt", "epoch=2.ckpt"]
    assert resumed.best_model_path.endswith("epoch=1.ckpt")


def _roundtrip(state: dict[str, Any], directory: Path) -> Path:
    path = directory.parent / "callback_state.pt"
    torch.save(state, path)
    return path


def test_rank_zero_decides_for_every_rank(tmp_path: Path) -> None:
    channel: list[Any] = []
    rank0, rank1 = FakeTrainer(tmp_path, 0, channel), FakeTrainer(tmp_path, 1, channel)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss") for _ in range(2)]
    for trainer, callback in zip((rank0, rank1), callbacks):
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    # The ranks see different (unsynchronised) values; rank zero's decision must win on both.
    for loss0, loss1 in ((1.0, 0.1), (0.5, 9.0), (0.7, 0.01)):
        end_epoch(callbacks[0], rank0, loss=loss0)
        end_epoch(callbacks[1], rank1, loss=loss1)
    assert rank1.saved == rank0.saved
    assert callbacks[1].best_model_path == callbacks[0].best_model_path
    assert callbacks[0].best_model_path.endswith("epoch=1.ckpt")
    assert files(tmp_path) == ["epoch=1.ckpt"]


def test_missing_metric_on_rank_zero_raises_on_every_rank(tmp_path: Path) -> None:
    channel: list[Any] = []
    rank0, rank1 = FakeTrainer(tmp_path, 0, channel), FakeTrainer(tmp_path, 1, channel)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, monitor="loss") for _ in range(2)]
    for trainer, callback in zip((rank0, rank1), callbacks):
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationError):
        end_epoch(callbacks[0], rank0, other=1.0)
    with pytest.raises(MisconfigurationError):
        end_epoch(callbacks[1], rank1, loss=1.0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"mode": "avg"}, "mode"), ({"save_top_k": -2}, "save_top_k"), ({"save_top_k": 3}, "monitor")],
)
def test_bad_arguments_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(MisconfigurationError, match=key):
        ModelCheckpoint(**kwargs)


def test_state_key_tells_two_instances_apart() -> None:
    assert ModelCheckpoint(monitor="a").state_key != ModelCheckpoint(monitor="b").state_key


# -- with the real Trainer -------------------------------------------------------------------------------


def _regression_loaders(seed: int = 0) -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=8)
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=8)
    return train, val


def _tiny_module(lr: float = 0.05) -> Any:
    class Regressor(tc.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Regressor()


class RecordValLoss(Callback):
    """Records each epoch's val_loss as callbacks see it, independently of ModelCheckpoint."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val_loss"]))


def _fit(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[Any, ModelCheckpoint, Any]:
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        filename="{epoch}-{val_loss:.4f}",
        monitor="val_loss",
        save_top_k=2,
        save_last=True,
    )
    recorder = RecordValLoss()
    trainer = tc.Trainer(
        max_epochs=max_epochs,
        callbacks=[checkpoint, recorder],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=1,
    )
    train, val = _regression_loaders()
    trainer.fit(_tiny_module(), train, val, ckpt_path=ckpt_path)
    return trainer, checkpoint, recorder


def test_real_fit_keeps_top_k_and_last_on_disk(tmp_path: Path) -> None:
    trainer, checkpoint, recorder = _fit(tmp_path, max_epochs=4)
    assert len(recorder.values) == 4
    best_two = sorted(range(4), key=lambda epoch: recorder.values[epoch])[:2]
    expected = sorted(f"epoch={e}-val_loss={recorder.values[e]:.4f}.ckpt" for e in best_two)
    assert files(tmp_path / "ckpt") == sorted([*expected, "last.ckpt"])
    best_epoch = best_two[0]
    assert checkpoint.best_model_path == str(
        tmp_path / "ckpt" / f"epoch={best_epoch}-val_loss={recorder.values[best_epoch]:.4f}.ckpt"
    )
    assert float(checkpoint.best_model_score) == pytest.approx(min(recorder.values))  # type: ignore[arg-type]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == trainer.global_step == 4 * 6
    stored = last["callbacks"][checkpoint.state_key]
    assert stored["best_model_path"] == checkpoint.best_model_path


def test_real_resume_continues_the_top_k_bookkeeping(tmp_path: Path) -> None:
    _, _, first_values = _fit(tmp_path, max_epochs=2)
    trainer, resumed, later_values = _fit(
        tmp_path, max_epochs=5, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    values = first_values.values + later_values.values
    assert trainer.current_epoch == 5 and len(values) == 5
    best_two = sorted(range(5), key=lambda epoch: values[epoch])[:2]
    expected = sorted(f"epoch={e}-val_loss={values[e]:.4f}.ckpt" for e in best_two)
    # Files of the first run were ranked together with the new ones and removed when beaten.
    assert files(tmp_path / "ckpt") == sorted([*expected, "last.ckpt"])
    assert set(resumed.best_k_models) == {str(tmp_path / "ckpt" / name) for name in expected}
