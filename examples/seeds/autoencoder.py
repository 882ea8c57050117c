"""The autoencoder seed program (LitAutoEncoder) on synthetic images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, random_split

import trainer_core as tc
from examples.seeds.data import fake_mnist


class LitAutoEncoder(tc.TrainingModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 128), nn.ReLU(), nn.Linear(128, 28 * 28))

    def forward(self, x):
        embedding = self.encoder(x)
        return embedding

    def training_step(self, batch, batch_idx):
        x, y = batch  # noqa: RUF059 (the seed program as written)
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        return optimizer


def main(root: str, max_epochs: int = 3) -> tuple[LitAutoEncoder, tc.Trainer]:
    dataset = fake_mnist(600)
    train, val = random_split(dataset, [500, 100], generator=torch.Generator().manual_seed(0))
    autoencoder = LitAutoEncoder()
    trainer = tc.Trainer(max_epochs=max_epochs, default_root_dir=root, enable_progress_bar=False)
    trainer.fit(autoencoder, DataLoader(train, 32, shuffle=True), DataLoader(val, 32))
    return autoencoder, trainer


if __name__ == "__main__":
    main(".")
