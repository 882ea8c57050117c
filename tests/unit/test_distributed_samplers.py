"""Sampler injection, exactly-once evaluation shards, prediction order and strategy names, in one process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler, WeightedRandomSampler

from trainer_core import distributed as D
from trainer_core.errors import MisconfigurationError
from trainer_core.seed import seed_everything


def epoch_indices(loader: DataLoader[Any], epoch: int = 0) -> list[int]:
    D.set_epoch(loader, epoch)
    return [int(index) for batch in loader for index in batch]


def shards(
    loader: DataLoader[Any], world_size: int = 2, train: bool = True, epoch: int = 0
) -> list[list[int]]:
    inject = D.train_loader_with_sampler if train else D.eval_loader_with_sampler
    return [epoch_indices(inject(loader, world_size, rank), epoch) for rank in range(world_size)]  # type: ignore[operator]


def test_shuffled_training_loader_is_sharded_disjointly_and_reshuffled_per_epoch() -> None:
    seed_everything(11)
    loader = DataLoader(list(range(30)), batch_size=4, shuffle=True)
    first, second = shards(loader, epoch=0), shards(loader, epoch=1)
    for rank_shards in (first, second):
        assert set(rank_shards[0]).isdisjoint(rank_shards[1])
        assert sorted(rank_shards[0] + rank_shards[1]) == list(range(30))
    assert first[0] != sorted(first[0])
    assert first != second


def test_sampler_keeps_shuffle_and_takes_the_seed_from_seed_everything() -> None:
    seed_everything(5)
    shuffled = D.train_loader_with_sampler(DataLoader(list(range(8)), shuffle=True), 2, 0)
    ordered = D.train_loader_with_sampler(DataLoader(list(range(8))), 2, 1)
    assert isinstance(shuffled.sampler, DistributedSampler) and shuffled.sampler.shuffle
    assert shuffled.sampler.seed == 5
    assert isinstance(ordered.sampler, DistributedSampler) and not ordered.sampler.shuffle
    assert epoch_indices(ordered) == [1, 3, 5, 7]


def test_uneven_training_set_is_padded_unless_drop_last() -> None:
    padded = shards(DataLoader(list(range(11)), batch_size=2))
    assert [len(shard) for shard in padded] == [6, 6]
    assert set(padded[0] + padded[1]) == set(range(11))  # every sample, one repeated to even the shards
    dropped = shards(DataLoader(list(range(11)), batch_size=2, drop_last=True))
    assert [len(shard) for shard in dropped] == [4, 4]  # shards of 5, then the incomplete batch dropped
    assert set(dropped[0]).isdisjoint(dropped[1])


def test_loader_settings_survive_the_rebuild() -> None:
    def collate(batch: list[int]) -> torch.Tensor:
        return torch.tensor(batch) * 10

    loader = DataLoader(list(range(6)), batch_size=3, collate_fn=collate, num_workers=0, pin_memory=False)
    rebuilt = D.train_loader_with_sampler(loader, 2, 0)
    assert rebuilt.batch_size == 3 and rebuilt.collate_fn is collate
    assert [batch.tolist() for batch in rebuilt] == [[0, 20, 40]]


def test_users_distributed_sampler_and_iterable_datasets_are_left_alone() -> None:
    dataset = list(range(8))
    own = DataLoader(dataset, sampler=DistributedSampler(dataset, num_replicas=4, rank=3, shuffle=False))
    assert D.train_loader_with_sampler(own, 2, 0) is own

    class Stream(IterableDataset[int]):
        def __iter__(self) -> Iterator[int]:
            return iter(range(4))

    stream = DataLoader(Stream())
    assert D.train_loader_with_sampler(stream, 2, 0) is stream
    assert D.eval_loader_with_sampler(stream, 2, 0) is stream


class Reversed(Sampler[int]):
    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.size - 1, -1, -1))

    def __len__(self) -> int:
        return self.size


def test_custom_sampler_is_wrapped_in_its_own_order() -> None:
    loader = DataLoader(list(range(10)), sampler=Reversed(10), batch_size=2)
    rank_shards = shards(loader)
    assert rank_shards == [[9, 7, 5, 3, 1], [8, 6, 4, 2, 0]]
    wrapped = D.train_loader_with_sampler(loader, 2, 0).sampler
    assert isinstance(wrapped, D.DistributedSamplerWrapper) and isinstance(wrapped.sampler, Reversed)


def test_seeded_random_custom_sampler_is_disjoint_across_ranks() -> None:
    def loader() -> DataLoader[Any]:
        weights = [1.0] * 20
        sampler = WeightedRandomSampler(
            weights, 20, replacement=False, generator=torch.Generator().manual_seed(1)
        )
        return DataLoader(list(range(20)), sampler=sampler, batch_size=5)

    rank_shards = [epoch_indices(D.train_loader_with_sampler(loader(), 2, rank)) for rank in range(2)]
    assert sorted(rank_shards[0] + rank_shards[1]) == list(range(20))


@pytest.mark.parametrize(
    ("size", "world_size", "expected"),
    [(101, 2, [51, 50]), (1, 2, [1, 0]), (3, 4, [1, 1, 1, 0]), (8, 2, [4, 4])],
)
def test_eval_shards_cover_every_sample_exactly_once(size: int, world_size: int, expected: list[int]) -> None:
    loader = DataLoader(list(range(size)), batch_size=8)
    rank_shards = shards(loader, world_size, train=False)
    assert [len(shard) for shard in rank_shards] == expected
    assert [index for shard in rank_shards for index in shard] == list(range(size))  # contiguous, in order
    assert [
        len(D.eval_loader_with_sampler(loader, world_size, r).sampler) for r in range(world_size)
    ] == expected  # type: ignore[arg-type]


def test_shuffled_eval_loader_is_evaluated_in_dataset_order() -> None:
    rank_shards = shards(DataLoader(list(range(9)), shuffle=True, batch_size=4), train=False)
    assert rank_shards == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]


def test_batch_indices_and_predictions_come_back_in_dataset_order() -> None:
    loaders = [D.eval_loader_with_sampler(DataLoader(list(range(21)), batch_size=4), 2, r) for r in range(2)]
    indices = [D.batch_indices(loader) for loader in loaders]
    assert indices[1][0] == [11, 12, 13, 14]
    predictions = [[[value * 2 for value in batch] for batch in loader] for loader in loaders]
    merged = D.gather_predictions(predictions, indices)
    assert [value for batch in merged for value in batch] == [2 * i for i in range(21)]
    # The order comes from the indices, not from the rank order in which they arrive.
    assert D.gather_predictions(predictions[::-1], indices[::-1]) == merged


def test_gather_predictions_orders_strided_batches_and_drops_empty_ones() -> None:
    preds = [["b0", "b2"], ["b1", "empty"]]
    indices = [[[0, 1], [4, 5]], [[2, 3], []]]
    assert D.gather_predictions(preds, indices) == ["b0", "b1", "b2"]


@pytest.mark.parametrize(
    ("setting", "find_unused"),
    [("auto", False), ("ddp", False), ("ddp_find_unused_parameters_true", True), (D.DDPStrategy(True), True)],
)
def test_strategy_names(setting: str | D.DDPStrategy, find_unused: bool) -> None:
    strategy = D.resolve_strategy(setting)
    assert strategy is not None and strategy.find_unused_parameters is find_unused
    assert strategy.gradient_as_bucket_view and not strategy.static_graph


def test_single_device_strategy_and_unknown_names() -> None:
    assert D.resolve_strategy("single_device") is None
    with pytest.raises(MisconfigurationError, match="strategy='fsdp' is not supported"):
        D.resolve_strategy("fsdp")


def test_backend_follows_the_accelerator() -> None:
    assert D.select_backend("gpu") == D.select_backend("cuda") == "nccl"
    assert D.select_backend("cpu") == "gloo"
