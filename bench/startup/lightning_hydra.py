"""The built-in example's training as a Lightning + Hydra script: `python lightning_hydra.py [overrides]`.

The layout of the common Lightning + Hydra project templates: a Hydra app whose config names the module and
the data module by `_target_`, `hydra.utils.instantiate`, and a `Trainer` with Lightning's defaults
(TensorBoard logger, checkpoint, progress bar, model summary) writing into Hydra's output directory. Under
torchrun (`trainer.devices=2 +trainer.strategy=ddp`) Lightning joins the ranks torchrun started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.startup.hand import load_data
from bench.startup.stamp import first_step


class Classifier(pl.LightningModule):
    """The example's MLP, as a LightningModule."""

    def __init__(
        self, num_features: int, num_classes: int, hidden: int, lr: float, weight_decay: float
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        first_step()
        features, labels = batch
        loss = F.cross_entropy(self.net(features), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        features, labels = batch
        logits = self.net(features)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log("val_loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.log("val_acc", accuracy, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )


class BlobsDataModule(pl.LightningDataModule):
    """The example's Gaussian blobs (generated once into data_dir by prepare_data), as a data module."""

    def __init__(self, data_dir: str, num_samples: int, batch_size: int) -> None:
        super().__init__()
        self.data_dir, self.num_samples, self.batch_size = Path(data_dir), num_samples, batch_size
        self.sets: tuple[TensorDataset, TensorDataset] | None = None

    def prepare_data(self) -> None:
        load_data(self.data_dir)

    def setup(self, stage: str) -> None:
        self.sets = load_data(self.data_dir)

    def train_dataloader(self) -> DataLoader:
        assert self.sets is not None
        return DataLoader(self.sets[0], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.sets is not None
        return DataLoader(self.sets[1], batch_size=self.batch_size)


@hydra.main(config_path="lightning_conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    pl.seed_everything(cfg.seed)
    model = hydra.utils.instantiate(cfg.model)
    data = hydra.utils.instantiate(cfg.data)
    trainer = pl.Trainer(**cfg.trainer, default_root_dir=HydraConfig.get().runtime.output_dir)
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        print(f"pid {os.getpid()}: {metrics}", flush=True)


if __name__ == "__main__":
    main()
