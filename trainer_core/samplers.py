"""Sampler injection and exactly-once evaluation: which samples each rank reads, and predictions in order.

Training loaders get a `DistributedSampler` (disjoint shards, the loader's shuffle, the global seed);
validation, test and predict loaders get `ExactlyOnceSampler` (contiguous shards, no padding), and
`collect_predictions` puts every rank's predict outputs back in dataset order on rank zero. Nothing here
calls `torch.distributed` except through `Collectives`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from trainer_core.collectives import Collectives
from trainer_core.seed import current_seed

log = logging.getLogger(__name__)


class _SamplerIndices(Dataset[int]):
    """A sampler's indices, drawn afresh by `redraw`, as a dataset that a `DistributedSampler` can shard."""

    def __init__(self, sampler: Sampler[Any]) -> None:
        self.sampler = sampler
        self.indices: list[Any] = []

    def redraw(self) -> None:
        self.indices = list(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __getitem__(self, position: int) -> Any:
        return self.indices[position]


class DistributedSamplerWrapper(DistributedSampler[Any]):
    """Shards a custom sampler's indices across ranks, in the sampler's own order (no extra shuffle).

    The sampler is iterated on every rank every epoch, so a random one must draw the same indices on every
    rank: seed its generator alike everywhere (`seed_everything` before building it does).
    """

    def __init__(
        self, sampler: Sampler[Any], num_replicas: int, rank: int, seed: int = 0, drop_last: bool = False
    ) -> None:
        super().__init__(_SamplerIndices(sampler), num_replicas, rank, shuffle=False, seed=seed,
                         drop_last=drop_last)  # fmt: skip
        self.sampler = sampler

    def __iter__(self) -> Iterator[Any]:
        indices: _SamplerIndices = self.dataset  # type: ignore[assignment]
        indices.redraw()
        return (indices[position] for position in super().__iter__())

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class ExactlyOnceSampler(Sampler[int]):
    """This rank's contiguous shard of the evaluation indices: every sample on exactly one rank, no padding.

    Shard sizes differ by at most one (101 samples on 2 ranks: 51 and 50); with more ranks than samples some
    shards are empty. Contiguous shards keep dataset order when the ranks' outputs are concatenated by rank.
    """

    def __init__(self, source: Sampler[int] | range, world_size: int, rank: int) -> None:
        self.source = source
        self.world_size = world_size
        self.rank = rank

    def _bounds(self, total: int) -> tuple[int, int]:
        base, extra = divmod(total, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        indices = list(self.source)
        start, end = self._bounds(len(indices))
        return iter(indices[start:end])

    def __len__(self) -> int:
        start, end = self._bounds(len(self.source))  # type: ignore[arg-type]
        return end - start


def _is_shardable(loader: DataLoader[Any]) -> bool:
    """Map-style data batched by a plain BatchSampler (or unbatched): what a sampler swap can shard."""
    if isinstance(loader.dataset, IterableDataset):
        return False
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        log.warning(
            "The DataLoader has a custom batch_sampler (%s): it is left as it is, so shard it per rank "
            "yourself (or set use_distributed_sampler=False to silence this).",
            type(loader.batch_sampler).__name__,
        )
        return False
    return not isinstance(loader.sampler, DistributedSampler)  # the user's own: left alone


def _plain_shuffle(sampler: Sampler[Any], dataset_size: int) -> bool | None:
    """True/False for the two stock samplers a DistributedSampler replaces; None for anything custom."""
    if type(sampler) is SequentialSampler:
        return False
    if type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == dataset_size:
        return True
    return None


def train_loader_with_sampler(
    loader: DataLoader[Any], world_size: int, rank: int, seed: int | None = None
) -> DataLoader[Any]:
    """The training loader with its sampler replaced by a `DistributedSampler` for this rank.

    The loader's shuffle is kept (RandomSampler -> shuffle=True), the seed is `seed` or the one given to
    `seed_everything` (so every rank shuffles alike and the shards are disjoint), and `drop_last` is the
    loader's. When the dataset size is not divisible by the world size, DistributedSampler pads the shards by
    repeating a few samples from the start (or, with drop_last, drops the tail): harmless for training, where
    every rank must take the same number of steps. Custom samplers are wrapped (`DistributedSamplerWrapper`);
    a user's own `DistributedSampler`, iterable datasets and custom batch samplers are left alone.
    Call `set_epoch(loader, epoch)` at the start of every epoch for a new shuffle.
    """
    if not _is_shardable(loader):
        return loader
    seed = seed if seed is not None else (current_seed() or 0)
    shuffle = _plain_shuffle(loader.sampler, len(loader.dataset))  # type: ignore[arg-type]
    sampler: DistributedSampler[Any]
    if shuffle is None:
        custom: Sampler[Any] = loader.sampler  # type: ignore[assignment]
        sampler = DistributedSamplerWrapper(custom, world_size, rank, seed, loader.drop_last)
    else:
        sampler = DistributedSampler(loader.dataset, world_size, rank, shuffle, seed, loader.drop_last)
    return _rebuild(loader, sampler)


def eval_loader_with_sampler(loader: DataLoader[Any], world_size: int, rank: int) -> DataLoader[Any]:
    """The validation/test/predict loader sharded so that every sample is seen exactly once, on one rank.

    Order is sequential (a shuffled evaluation loader is evaluated in dataset order, since each rank would
    otherwise draw a different permutation); a custom sampler's indices are sharded in its own order.
    """
    if not _is_shardable(loader):
        return loader
    shuffle = _plain_shuffle(loader.sampler, len(loader.dataset))  # type: ignore[arg-type]
    source = range(len(loader.dataset)) if shuffle is not None else loader.sampler  # type: ignore[arg-type]
    return _rebuild(loader, ExactlyOnceSampler(source, world_size, rank))  # type: ignore[arg-type]


def _rebuild(loader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    """A DataLoader with the same settings as `loader` and the given sampler."""
    if type(loader) is not DataLoader:
        log.warning("%s is rebuilt as a plain DataLoader to set its sampler", type(loader).__name__)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )


def set_epoch(loader: Iterable[Any], epoch: int) -> None:
    """Tell the loader's sampler (or its batch sampler's) which epoch starts, for a new shuffle per epoch."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return


def batch_indices(loader: DataLoader[Any]) -> list[list[int]]:
    """The dataset indices of each batch the loader yields, in order (for putting predictions in order)."""
    if loader.batch_sampler is not None:
        return [list(batch) for batch in loader.batch_sampler]
    return [[index] for index in loader.sampler]


def gather_predictions(
    preds_per_rank: Sequence[Sequence[Any]], indices: Sequence[Sequence[Sequence[int]]]
) -> list:
    """All ranks' batch predictions as one list in dataset order.

    `preds_per_rank[r][b]` is rank r's prediction for its batch b, whose dataset indices are
    `indices[r][b]`. Batches are ordered by their first dataset index; empty batches are dropped.
    """
    keyed = [
        (batch_idx[0], rank, position, prediction)
        for rank, (predictions, rank_indices) in enumerate(zip(preds_per_rank, indices))
        for position, (prediction, batch_idx) in enumerate(zip(predictions, rank_indices))
        if len(batch_idx) > 0
    ]
    keyed.sort(key=lambda item: item[:3])
    return [prediction for *_, prediction in keyed]


def collect_predictions(
    collectives: Collectives, predictions: list[Any], indices: list[list[int]]
) -> list[Any] | None:
    """Every rank's predictions, in dataset order, on rank zero (None on the other ranks)."""
    gathered = collectives.all_gather_object((_to_cpu(predictions), indices))
    if collectives.rank != 0:
        return None
    return gather_predictions([preds for preds, _ in gathered], [idx for _, idx in gathered])


def _to_cpu(value: Any) -> Any:
    """Tensors moved to the CPU, so that rank zero can unpickle another rank's GPU outputs."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value
