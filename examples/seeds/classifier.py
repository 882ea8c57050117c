"""The classifier seed program: warm-up + cosine schedule, old-style validation_epoch_end, and callbacks.

Ported by changing the import and base-class names; `gpus=[0]`, `precision=16` and `stochastic_weight_avg`
(removed from Lightning 2 too) become `precision="bf16-mixed"` on CPU, and MNIST becomes synthetic images.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import trainer_core as tc
from examples.seeds.data import fake_mnist
from trainer_core.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint


def warmup_lr_scheduler(optimizer, warmup_iters, warmup_factor):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: min(1.0, x / warmup_iters))


class LitClsModel(tc.TrainingModule):
    def __init__(self, epochs, warpstep):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(28 * 28, 256), nn.BatchNorm1d(256), nn.ReLU(),
            nn.Linear(256, 512), nn.BatchNorm1d(512), nn.ReLU(),
            nn.Linear(512, 10),
        )  # fmt: skip
        self.epochs = epochs
        self.warpstep = warpstep

    def forward(self, x):
        out = self.model(x)
        return out

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.view(x.size(0), -1)
        out = self(x)
        loss = F.cross_entropy(out, y)
        self.log("train_loss", loss)
        if self.current_epoch == 0:
            self.warmup_lr_scheduler.step()
        return loss

    def on_validation_epoch_start(self) -> None:
        self.start = time.time()

    def on_validation_epoch_end(self) -> None:
        self.end = time.time()
        cost_time = self.end - self.start
        self.log("cost_time", cost_time)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = x.view(x.size(0), -1)
        out = self(x)
        loss = F.cross_entropy(out, y)
        self.log("val_loss", loss)
        acc = (out.argmax(1) == y).sum() / out.size(0)
        self.log("val_acc", acc)
        return {"loss": loss, "acc": acc}

    def validation_step_end(self, batch_parts):
        loss = batch_parts["loss"].item()
        acc = batch_parts["acc"].item()
        return {"loss": loss, "acc": acc}

    def validation_epoch_end(self, validation_step_outputs):
        loss_list = []
        acc_list = []
        for out in validation_step_outputs:
            loss_list.append(out["loss"])
            acc_list.append(out["acc"])
        mean_loss = np.mean(loss_list)
        mean_acc = np.mean(acc_list)
        self.log("val_acc_epoch", mean_acc)
        self.log("val_loss_epoch", mean_loss)
        learning_rate = self.optimizers().state_dict()["param_groups"][0]["lr"]
        self.log("learning_rate", learning_rate)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(
            [param for param in self.parameters() if param.requires_grad], lr=1e-3, weight_decay=5e-5
        )
        lrf = 0.1
        lf = lambda x: ((1 + math.cos(x * math.pi / self.epochs)) / 2) * (1 - lrf) + lrf  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
        self.warmup_lr_scheduler = warmup_lr_scheduler(optimizer, self.warpstep, 1 / self.warpstep)
        return [optimizer], [scheduler]


def main(root: str, epochs: int = 4) -> tuple[LitClsModel, tc.Trainer]:
    train = fake_mnist(640, seed=1)
    val = fake_mnist(160, seed=2)
    batch_size = 32
    warpstep = len(train) // batch_size // 2
    model = LitClsModel(epochs, warpstep)
    trainer = tc.Trainer(
        callbacks=[
            ModelCheckpoint(monitor="val_acc", mode="max"),
            EarlyStopping(monitor="val_acc", mode="max"),
            LearningRateMonitor(logging_interval="step"),
        ],
        max_epochs=epochs,
        log_every_n_steps=5,
        gradient_clip_val=0.1,
        precision="bf16-mixed",
        accumulate_grad_batches=4,
        default_root_dir=root,
        enable_progress_bar=False,
    )
    trainer.fit(model, DataLoader(train, batch_size, True), DataLoader(val, batch_size, False))
    return model, trainer


if __name__ == "__main__":
    main(".")
