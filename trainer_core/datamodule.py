"""`DataModule`: the LightningDataModule contract (prepare, set up, hand out dataloaders)."""

from __future__ import annotations

from typing import Any

from trainer_core.hparams import HyperparametersMixin


class DataModule(HyperparametersMixin):
    """Everything about a dataset in one place: download, split, and the loaders for each stage.

    `prepare_data` runs once (per node with `prepare_data_per_node`, the default; else once per job) before
    any rank calls `setup(stage)`; `setup` runs on every rank with "fit", "validate", "test" or "predict".
    Define the `*_dataloader` methods the stages you run need.
    """

    #: Run `prepare_data` on local rank 0 of every node (True, default) or on global rank 0 only (False).
    prepare_data_per_node: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Any = None

    def prepare_data(self) -> None:
        """Download or write the data (no state: it may run in another process than `setup`)."""

    def setup(self, stage: str) -> None:
        """Build datasets for `stage` ("fit", "validate", "test" or "predict"); runs on every rank."""

    def teardown(self, stage: str) -> None:
        """Release what `setup` built."""

    def train_dataloader(self) -> Any:
        """The training loader (needed by `Trainer.fit`)."""
        raise NotImplementedError(f"{type(self).__name__} does not define train_dataloader")

    def val_dataloader(self) -> Any:
        """The validation loader, or a list of them."""
        raise NotImplementedError(f"{type(self).__name__} does not define val_dataloader")

    def test_dataloader(self) -> Any:
        """The test loader, or a list of them."""
        raise NotImplementedError(f"{type(self).__name__} does not define test_dataloader")

    def predict_dataloader(self) -> Any:
        """The prediction loader, or a list of them."""
        raise NotImplementedError(f"{type(self).__name__} does not define predict_dataloader")

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (empty by default)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back what `state_dict` returned."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to the checkpoint dict before it is written."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what `on_save_checkpoint` added."""

    def defines(self, method: str) -> bool:
        """True when this data module's class defines `method` (a `*_dataloader`, for instance)."""
        return getattr(type(self), method, None) is not getattr(DataModule, method, None)
