"""Batches and dataloaders for the loops: device moves, `limit_*_batches`, look-ahead."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, SequentialSampler

from trainer_core.errors import MisconfigurationError


def move_to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor (inside lists, tuples, dicts and named tuples) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({key: move_to_device(value, device) for key, value in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def loader_length(loader: Iterable[Any]) -> float:
    """The number of batches of `loader`, or infinity when it has no length (an iterable dataset)."""
    try:
        return float(len(loader))  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return math.inf


def limited_length(loader: Iterable[Any], limit: int | float, key: str) -> int | float:
    """How many batches of `loader` a loop runs under `limit_*_batches` (`key`): an int, or a fraction."""
    length = loader_length(loader)
    if isinstance(limit, bool) or limit < 0 or (isinstance(limit, float) and limit > 1.0):
        raise MisconfigurationError(
            f"{key}={limit!r}: use an int >= 0 (a number of batches) or a float in [0.0, 1.0] (a fraction)"
        )
    if isinstance(limit, int):
        return min(length, limit) if length != math.inf else limit
    if limit == 1.0:
        return length
    if length == math.inf:
        raise MisconfigurationError(
            f"{key}={limit} is a fraction but the dataloader has no length; pass an int number of batches"
        )
    return int(length * limit)


def as_loader_list(loaders: Any) -> list[Any]:
    """One dataloader, a list/tuple of them, or None, as a list."""
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def without_shuffle(loader: Any) -> Any:
    """A copy of a `DataLoader` that reads in order (for `overfit_batches`); other iterables are unchanged."""
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, SequentialSampler):
        return loader
    if loader.batch_sampler is not None and not hasattr(loader.batch_sampler, "batch_size"):
        return loader  # a custom batch sampler: its order is the user's
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )


class LookAhead:
    """Iterate batches one ahead, so the loop knows which one is the last (for accumulation and validation).

    It never fetches past `limit`, so a limited loop reads no extra batch.
    """

    def __init__(self, loader: Iterable[Any], limit: int | float, start: int = 0) -> None:
        self._iterator: Iterator[Any] = iter(loader)
        self._limit = limit
        self._index = start
        for _ in range(start):  # a mid-epoch restart: skip the batches already trained on
            next(self._iterator, None)

    def __iter__(self) -> Iterator[tuple[int, Any, bool]]:
        if self._index >= self._limit:
            return
        sentinel = object()
        current = next(self._iterator, sentinel)
        while current is not sentinel:
            index = self._index
            upcoming = sentinel if index + 1 >= self._limit else next(self._iterator, sentinel)
            yield index, current, upcoming is sentinel
            self._index += 1
            current = upcoming
