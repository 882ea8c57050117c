"""The data module seed program: setup per stage, fit then test from the best checkpoint."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import trainer_core as tc
from examples.seeds.data import fake_mnist
from trainer_core.callbacks import ModelCheckpoint
from trainer_core.loggers import TensorBoardLogger


class MyDataModule(tc.DataModule):
    def __init__(self, batch_size=32):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage):
        if stage == "fit" or stage is None:
            self.train_dataset = fake_mnist(320, seed=3)
            self.val_dataset = fake_mnist(96, seed=4)
        if stage == "test" or stage is None:
            self.test_dataset = fake_mnist(64, seed=5)

    def prepare_data(self):
        pass

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self):
        return DataLoader(self.test_dataset, batch_size=1, shuffle=True)


class MyModel(tc.TrainingModule):
    def __init__(self, lr=1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        import torch

        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(root: str) -> list[dict[str, float]]:
    dm = MyDataModule()
    checkpoint_callback = ModelCheckpoint(monitor="val_loss")
    model = MyModel()
    logger = TensorBoardLogger(root, name="test_PL")
    trainer = tc.Trainer(
        logger=logger, callbacks=[checkpoint_callback], max_epochs=3, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=dm)
    model = MyModel.load_from_checkpoint(checkpoint_path=checkpoint_callback.best_model_path)
    trainer = tc.Trainer(
        limit_test_batches=0.5, logger=False, enable_progress_bar=False, default_root_dir=root
    )
    return trainer.test(model=model, datamodule=dm)


if __name__ == "__main__":
    print(main("."))
