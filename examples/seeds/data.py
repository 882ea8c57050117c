"""Synthetic stand-ins for MNIST: 28x28 "digits" whose class is where a bright blob sits."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def fake_mnist(n: int = 512, seed: int = 0) -> TensorDataset:
    """`n` images of shape (1, 28, 28) in [0, 1] with labels 0..9 that the pixels determine."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    for digit in range(10):
        row, col = divmod(digit, 5)
        rows = slice(2 + row * 12, 12 + row * 12)
        cols = slice(1 + col * 5, 6 + col * 5)
        images[labels == digit, 0, rows, cols] += 0.7
    return TensorDataset(images, labels)
