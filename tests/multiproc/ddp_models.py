"""Small modules and datasets that the trainer-level DDP tests run on every rank and in one process."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import trainer_core as tc


class IndexedPoints(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """`size` points (x, y) with their own index, so a test can tell which samples a rank saw."""

    def __init__(self, size: int, features: int = 4, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, features, generator=generator)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index], torch.tensor(index)


class Regression(tc.TrainingModule):
    """A linear regression that records the sample indices each stage saw and logs reduced metrics.

    Validation logs, per sample value v = index: `v_mean`, `v_sum`, `v_max`, `v_min` with sync_dist and
    `v_local` (mean) without, so a test can compare with one process over the whole set (`sync=False`
    leaves the sync_dist ones out).
    """

    def __init__(
        self, lr: float = 0.1, fail_at_step: int | None = None, fail_rank: int = 1, sync: bool = True
    ) -> None:
        super().__init__()
        self.sync = sync
        self.layer = nn.Linear(4, 1)
        torch.nn.init.constant_(self.layer.weight, 0.5)
        torch.nn.init.zeros_(self.layer.bias)
        self.lr = lr
        self.fail_at_step = fail_at_step
        self.fail_rank = fail_rank
        # "train": one list of indices per epoch; "val" and "test": the indices of every pass, in order.
        self.seen: dict[str, list[Any]] = {"train": [], "val": [], "test": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)  # type: ignore[no-any-return]

    def on_train_epoch_start(self) -> None:
        self.seen["train"].append([])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index = batch
        if self.fail_at_step == self.global_step and self.global_rank == self.fail_rank:
            raise RuntimeError(f"rank {self.global_rank} fails on purpose at step {self.global_step}")
        self.seen["train"][-1].extend(int(i) for i in index)
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def _evaluate(self, stage: str, batch: Any) -> None:
        index = batch[2]
        if not self.trainer.sanity_checking:
            self.seen[stage].extend(int(i) for i in index)
        values = index.to(torch.float64)
        if self.sync:
            self.log("v_mean", values.mean(), sync_dist=True)
            self.log("v_sum", values.sum(), sync_dist=True, reduce_fx="sum")
            self.log("v_max", values.max(), sync_dist=True, reduce_fx="max")
            self.log("v_min", values.min(), sync_dist=True, reduce_fx="min")
        self.log("v_local", values.mean())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return batch[2] * 10  # the dataset order is checkable from the outputs alone

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(size: int, batch_size: int, shuffle: bool = False) -> DataLoader[Any]:
    """A DataLoader over `IndexedPoints(size)`."""
    return DataLoader(IndexedPoints(size), batch_size=batch_size, shuffle=shuffle)


def quiet_trainer(**settings: Any) -> tc.Trainer:
    """A Trainer with no logger, checkpoints, progress bar or summary unless `settings` asks for them."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return tc.Trainer(**{**defaults, **settings})


def weights(module: nn.Module) -> dict[str, list[float]]:
    """The module's parameters as plain lists (JSON for a rank's result file)."""
    return {name: p.detach().cpu().flatten().tolist() for name, p in module.named_parameters()}


def floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """A metric dict as plain floats."""
    return {name: float(value) for name, value in metrics.items()}


def append_line(path: str, line: str) -> None:
    """Append one line to a file shared by the ranks (O_APPEND: whole lines, whichever rank writes)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
