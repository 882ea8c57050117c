"""Batches and dataloaders for the loops: device moves, `limit_*_batches`, look-ahead, resumable order."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

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


log = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler[int]):
    """A random order of `length` indices drawn from `seed + epoch` (what an unseeded shuffle becomes).

    The order depends only on the seed and the epoch, like `DistributedSampler`'s, so a resumed run sees the
    same order as the run that never stopped, and drawing it takes nothing from the global RNG.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.length, generator=generator).tolist()  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.length


class ResumableBatchSampler(Sampler[list[int]]):
    """The loader's batches, where the next pass can start at a batch index: skipping costs no data loading.

    `start_at(n)` makes the next iteration begin with batch `n` of the epoch's order (the batch sampler's
    indices are sliced, no sample is read); later iterations start at 0 again.
    """

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self._start = 0

    @property
    def sampler(self) -> Any:
        return getattr(self.batch_sampler, "sampler", None)

    def set_epoch(self, epoch: int) -> None:
        for target in (self.batch_sampler, self.sampler):
            if callable(getattr(target, "set_epoch", None)):
                target.set_epoch(epoch)

    def start_at(self, batch_index: int) -> None:
        self._start = batch_index

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        inner = self.batch_sampler
        if type(inner) is BatchSampler:
            # Slice the index order itself: `start * batch_size` integers, no batch is assembled.
            indices = _indices_from(inner.sampler, start * inner.batch_size)
            return _batched(indices, inner.batch_size, inner.drop_last)
        return itertools.islice(iter(inner), start, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)


def _indices_from(sampler: Any, offset: int) -> Iterator[int]:
    if isinstance(sampler, EpochShuffleSampler):
        return iter(sampler.indices()[offset:])
    if isinstance(sampler, SequentialSampler):
        return iter(range(offset, len(sampler)))
    return itertools.islice(iter(sampler), offset, None)


def _batched(indices: Iterator[int], batch_size: int, drop_last: bool) -> Iterator[list[int]]:
    while batch := list(itertools.islice(indices, batch_size)):
        if len(batch) < batch_size and drop_last:
            return
        yield batch


def resumable_loader(loader: Any, shuffle_seed: int) -> Any:
    """`loader` rebuilt around a `ResumableBatchSampler` (an unseeded shuffle becomes `EpochShuffleSampler`).

    Iterable datasets and loaders without automatic batching are returned as they are: a mid-epoch resume
    then has to read past the batches already seen (`LookAhead` does, with a warning).
    """
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        return loader
    if isinstance(loader.batch_sampler, ResumableBatchSampler):
        return loader
    batch_sampler = loader.batch_sampler
    sampler = loader.sampler
    if type(batch_sampler) is BatchSampler and _unseeded_shuffle(sampler):
        order = EpochShuffleSampler(len(sampler), shuffle_seed)  # type: ignore[arg-type]
        batch_sampler = BatchSampler(order, batch_sampler.batch_size, batch_sampler.drop_last)
    return _rebuilt(loader, ResumableBatchSampler(batch_sampler))


def _unseeded_shuffle(sampler: Any) -> bool:
    return (
        type(sampler) is RandomSampler
        and sampler.generator is None
        and not sampler.replacement
        and sampler._num_samples is None
    )


def _rebuilt(loader: DataLoader[Any], batch_sampler: ResumableBatchSampler) -> DataLoader[Any]:
    options: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        options["in_order"] = loader.in_order
    rebuilt = DataLoader(loader.dataset, batch_sampler=batch_sampler, **options)
    # What readers of the loader expect to find (batch size, the sampler whose `set_epoch` matters); the
    # DataLoader refuses these assignments after construction only to protect its own iteration setup.
    object.__setattr__(rebuilt, "batch_size", loader.batch_size)
    object.__setattr__(rebuilt, "drop_last", loader.drop_last)
    if batch_sampler.sampler is not None:
        object.__setattr__(rebuilt, "sampler", batch_sampler.sampler)
    return rebuilt


def start_loader_at(loader: Any, batch_index: int) -> bool:
    """Make the next pass of `loader` start at `batch_index`; False when it cannot skip by index."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, ResumableBatchSampler):
        batch_sampler.start_at(batch_index)
        return True
    return batch_index == 0


class LookAhead:
    """Iterate batches one ahead, so the loop knows which one is the last (for accumulation and validation).

    It never fetches past `limit`, so a limited loop reads no extra batch. `start` is the index of the first
    batch; with `skip`, the first `start` batches are read and dropped (a loader that cannot start at an
    index), otherwise the loader already starts there.
    """

    def __init__(self, loader: Iterable[Any], limit: int | float, start: int = 0, skip: bool = True) -> None:
        self._iterator: Iterator[Any] = iter(loader)
        self._limit = limit
        self._index = start
        if skip and start:
            log.warning(
                "Resuming mid-epoch on a loader without a batch sampler (an iterable dataset?): reading and "
                "dropping the %d batches already trained on",
                start,
            )
            for _ in range(start):
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
