"""A user's model and data module: noisy linear regression, written against the trainer core's API."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc


class LinearRegression(tc.TrainingModule):
    """y = w.x + b, fitted with SGD; logs val_mse across ranks."""

    def __init__(self, num_features: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(num_features, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features, targets = batch
        loss = F.mse_loss(self.linear(features).squeeze(-1), targets)
        self.log("train_mse", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        features, targets = batch
        self.log("val_mse", F.mse_loss(self.linear(features).squeeze(-1), targets), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


class RegressionData(tc.DataModule):
    """Random inputs and targets from a fixed random linear map plus noise, built in memory by setup."""

    def __init__(self, num_samples: int = 2048, num_features: int = 8, batch_size: int = 32) -> None:
        super().__init__()
        self.num_samples, self.num_features, self.batch_size = num_samples, num_features, batch_size

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        weights = torch.randn(self.num_features, generator=generator)
        features = torch.randn(self.num_samples, self.num_features, generator=generator)
        targets = features @ weights + 0.1 * torch.randn(self.num_samples, generator=generator)
        split = self.num_samples // 5
        self.val_set = TensorDataset(features[:split], targets[:split])
        self.train_set = TensorDataset(features[split:], targets[split:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
