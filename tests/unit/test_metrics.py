"""MetricStore: per-hook defaults, names, weighted epoch means, reductions, and cross-rank agreement."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainer_core.errors import DistributedError, MisconfigurationError
from trainer_core.metrics import MetricStore, infer_batch_size


def test_training_step_defaults_to_on_step_and_elsewhere_to_on_epoch() -> None:
    store = MetricStore()
    store.in_train_step = True
    store.log("loss", torch.tensor(1.0))
    store.in_train_step = False
    store.stage = "validate"
    store.log("val_loss", torch.tensor(2.0))
    assert set(store.logged_metrics) == {"loss"}  # val_loss has no value until its epoch ends
    store.end_epoch("validate")
    assert set(store.logged_metrics) == {"loss", "val_loss"}
    store.in_train_step = True
    store.end_epoch("train")
    assert "loss_epoch" not in store.logged_metrics


def test_forked_metric_gets_step_and_epoch_names_and_plain_name_is_newest() -> None:
    store = MetricStore()
    store.in_train_step = True
    store.set_batch(torch.zeros(4, 3))
    store.log("loss", torch.tensor(1.0), on_epoch=True)
    store.log("loss", torch.tensor(3.0), on_epoch=True)
    assert float(store.callback_metrics["loss"]) == 3.0
    store.end_epoch("train")
    names = set(store.logged_metrics)
    assert names == {"loss_step", "loss_epoch"}
    assert float(store.callback_metrics["loss"]) == 2.0
    store.log("loss", torch.tensor(7.0), on_epoch=True)
    assert float(store.callback_metrics["loss"]) == 7.0


def test_epoch_mean_is_weighted_by_batch_size_given_or_inferred() -> None:
    store = MetricStore()
    store.stage = "validate"
    store.set_batch((torch.zeros(3, 2), torch.zeros(3)))
    store.log("acc", torch.tensor(1.0))
    store.set_batch({"x": torch.zeros(1, 2)})
    store.log("acc", torch.tensor(0.0))
    store.log("other", 10.0, batch_size=9)
    store.log("other", 0.0, batch_size=1)
    values = store.end_epoch("validate")
    assert float(values["acc"][1]) == pytest.approx(0.75)
    assert float(values["other"][1]) == pytest.approx(9.0)


@pytest.mark.parametrize(
    ("reduce_fx", "expected"), [("sum", 6.0), ("max", 3.0), ("min", 1.0), (torch.max, 3.0), (torch.sum, 6.0)]
)
def test_reduce_fx(reduce_fx: Any, expected: float) -> None:
    store = MetricStore()
    store.stage = "test"
    for value in (1.0, 2.0, 3.0):
        store.log("x", torch.tensor(value), reduce_fx=reduce_fx)
    assert float(store.end_epoch("test")["x"][1]) == expected


def test_many_steps_fold_into_float64_without_loss() -> None:
    store = MetricStore()
    store.stage = "validate"
    store.set_batch(torch.zeros(2, 1))
    for step in range(1000):
        store.log("x", torch.tensor(float(step)))
    assert float(store.end_epoch("validate")["x"][1]) == pytest.approx(499.5)


def test_values_stay_tensors_on_the_step_path() -> None:
    store = MetricStore()
    store.in_train_step = True
    loss = torch.tensor(2.0, requires_grad=True) * 1.0
    store.log("loss", loss)
    kept = store.callback_metrics["loss"]
    assert isinstance(kept, torch.Tensor) and not kept.requires_grad


def test_bad_values_and_reductions_name_the_metric() -> None:
    store = MetricStore()
    with pytest.raises(MisconfigurationError, match=r"'vec'.*shape"):
        store.log("vec", torch.zeros(3))
    with pytest.raises(MisconfigurationError, match=r"'x'.*median"):
        store.log("x", 1.0, reduce_fx="median")


def test_progress_bar_metrics_are_floats() -> None:
    store = MetricStore()
    store.in_train_step = True
    store.log("loss", torch.tensor(0.5), prog_bar=True)
    store.log("hidden", torch.tensor(0.5))
    assert store.progress_bar_metrics == {"loss": 0.5}


def test_infer_batch_size() -> None:
    assert infer_batch_size([torch.zeros(5, 2), torch.zeros(5)]) == 5
    assert infer_batch_size({"a": "text", "b": torch.zeros(7)}) == 7
    assert infer_batch_size("no tensors") == 1


class TwoRanks:
    """Collectives of rank 0 whose peer (rank 1) logged `peer_names` with `peer_parts`."""

    def __init__(self, peer_names: list[str], peer_parts: torch.Tensor | None = None) -> None:
        self.peer_names = peer_names
        self.peer_parts = peer_parts
        self.reductions: list[str] = []

    rank = 0
    world_size = 2

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        self.reductions.append(op)
        assert self.peer_parts is not None
        peer = self.peer_parts.to(tensor.dtype)
        if op == "sum":
            return tensor + peer
        return torch.maximum(tensor, peer) if op == "max" else torch.minimum(tensor, peer)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if isinstance(obj, tuple):  # the epoch-end exchange: (saw batches, {name: spec fields})
            _, specs = obj
            return [obj, (True, {name: specs.get(name) for name in self.peer_names})]
        return [obj, self.peer_names]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str = "") -> None:
        return None


def test_sync_dist_mean_is_exact_over_ranks_with_one_collective() -> None:
    # Rank 0: one batch of 3 with value 1.0; rank 1 (peer): weighted sum 0.0 over 1 sample.
    collectives = TwoRanks(["acc"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    store = MetricStore(collectives)
    store.stage = "validate"
    store.log("acc", torch.tensor(1.0), sync_dist=True, batch_size=3)
    store.log("local", torch.tensor(5.0))
    values = store.end_epoch("validate")
    assert float(values["acc"][1]) == pytest.approx(0.75)  # (3*1 + 0) / 4, not the mean of means 0.5
    assert float(values["local"][1]) == 5.0  # not reduced: this rank's value
    assert collectives.reductions == ["sum"]


def test_metric_logged_on_one_rank_only_is_a_distributed_error_naming_it() -> None:
    store = MetricStore(TwoRanks([]))
    store.stage = "validate"
    store.log("only_here", torch.tensor(1.0), sync_dist=True)
    with pytest.raises(DistributedError, match=r"'only_here'.*rank"):
        store.end_epoch("validate")
