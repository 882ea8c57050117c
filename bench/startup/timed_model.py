"""The built-in example's classifier, plus a first-step stamp: what `launch model=timed` trains."""

from __future__ import annotations

from typing import Any

import torch

from bench.startup.stamp import first_step
from launcher.example import Classifier


class TimedClassifier(Classifier):
    """`launcher.example.Classifier` whose first training step records the time (see bench.startup.stamp)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        first_step()
        return super().training_step(batch, batch_idx)
