"""The multiple-optimizer seed program: manual optimization with a generator and a discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainer_core as tc


class GAN(tc.TrainingModule):
    def __init__(self, latent=4):
        super().__init__()
        self.automatic_optimization = False
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers(use_pl_optimizer=True)
        real = batch[0]
        fake = self.generator(torch.randn(real.size(0), self.latent))

        loss_b = (
            F.softplus(self.discriminator(fake.detach())).mean()
            + F.softplus(-self.discriminator(real)).mean()
        )
        opt_b.zero_grad()
        self.manual_backward(loss_b)
        opt_b.step()

        loss_a = F.softplus(-self.discriminator(fake)).mean()
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        self.log_dict({"g_loss": loss_a, "d_loss": loss_b}, prog_bar=True)

    def configure_optimizers(self):
        generator_opt = torch.optim.Adam(self.generator.parameters(), lr=0.01)
        disriminator_opt = torch.optim.Adam(self.discriminator.parameters(), lr=0.01)
        return generator_opt, disriminator_opt


def main(root: str) -> tuple[GAN, torch.Tensor, torch.Tensor]:
    """Train; return the model, the real samples and the untrained generator's mean output."""
    torch.manual_seed(0)
    real = torch.randn(512, 2) * 0.1 + torch.tensor([2.0, -1.0])
    model = GAN()
    with torch.no_grad():
        start = model.generator(torch.randn(512, model.latent)).mean(0)
    trainer = tc.Trainer(max_epochs=15, default_root_dir=root, enable_progress_bar=False, logger=False)
    trainer.fit(model, DataLoader(TensorDataset(real), batch_size=64, shuffle=True))
    return model, real, start


if __name__ == "__main__":
    main(".")
