"""The built-in example that plain `launch` trains: an MLP classifier on Gaussian blobs generated on disk."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc

log = logging.getLogger(__name__)


class Classifier(tc.TrainingModule):
    """A two-layer MLP for `num_classes`-way classification; logs val_loss and val_acc across ranks.

    `fail_on_rank` makes that rank raise at the start of training; `step_delay_s` sleeps in every training
    step (both for demonstrations and tests of failures and preemption).
    """

    def __init__(
        self,
        num_features: int = 32,
        num_classes: int = 10,
        hidden: int = 128,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        fail_on_rank: int | None = None,
        step_delay_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)  # type: ignore[no-any-return]

    def on_train_start(self) -> None:
        # A deliberate failure on one rank, for tests and demos of how a failed rank is reported.
        if self.hparams["fail_on_rank"] == self.global_rank:
            raise RuntimeError(f"model.fail_on_rank={self.global_rank}: this rank fails on purpose")
        # Where training (re)starts: a resumed run's first step, in every rank's log.
        log.info("training starts at step %d (epoch %d)", self.global_step, self.current_epoch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hparams["step_delay_s"]:
            # A slower step, for demos and tests of preemption: a signal then lands inside training.
            time.sleep(self.hparams["step_delay_s"])
        features, labels = batch
        loss = F.cross_entropy(self(features), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        features, labels = batch
        logits = self(features)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log("val_loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.log("val_acc", accuracy, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )


class BlobsDataModule(tc.DataModule):
    """Gaussian blobs, one per class: generated once by `prepare_data` into `data_dir`, read by `setup`."""

    def __init__(
        self,
        data_dir: str = "runs/data",
        num_samples: int = 4000,
        num_features: int = 32,
        num_classes: int = 10,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.num_samples, self.num_features, self.num_classes = num_samples, num_features, num_classes
        self.val_fraction, self.batch_size, self.num_workers, self.seed = (
            val_fraction,
            batch_size,
            num_workers,
            seed,
        )
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @property
    def path(self) -> Path:
        """The dataset file: its name holds every parameter, so different datasets never share a file."""
        name = f"blobs_n{self.num_samples}_f{self.num_features}_c{self.num_classes}_s{self.seed}.pt"
        return self.data_dir / name

    def prepare_data(self) -> None:
        """Generate the dataset once and write it atomically (a temp file, then a rename)."""
        if self.path.is_file():
            return
        generator = torch.Generator().manual_seed(self.seed)
        centers = torch.randn(self.num_classes, self.num_features, generator=generator)
        labels = torch.randint(0, self.num_classes, (self.num_samples,), generator=generator)
        features = centers[labels] + torch.randn(self.num_samples, self.num_features, generator=generator)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"features": features, "labels": labels}, tmp)
        os.replace(tmp, self.path)

    def setup(self, stage: str) -> None:
        data = torch.load(self.path, weights_only=True)
        num_val = int(self.num_samples * self.val_fraction)
        self.val_set = TensorDataset(data["features"][:num_val], data["labels"][:num_val])
        self.train_set = TensorDataset(data["features"][num_val:], data["labels"][num_val:])

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') runs before train_dataloader"
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup('fit') runs before val_dataloader"
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
