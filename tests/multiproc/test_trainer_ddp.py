"""`tc.Trainer` on two real ranks: DDP gradients, samplers, exactly-once evaluation, predictions in order.

Gloo on CPU here; the tests parametrised over `backend` also run with NCCL on CUDA where 2 GPUs exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.multiproc.ddp_models import Regression, loader, quiet_trainer, weights

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc

BACKENDS = [
    "gloo",
    pytest.param(
        "nccl",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs 2 CUDA GPUs"),
        ],
    ),
]
ACCELERATOR = {"gloo": "cpu", "nccl": "gpu"}

# Every body starts from this: the test models and a seeded process.
SETUP = """
import os
import torch
import trainer_core as tc
from tests.multiproc.ddp_models import (
    IndexedPoints, Regression, append_line, floats, loader, quiet_trainer, weights,
)
tc.seed_everything(3)
"""


def body(text: str, **values: Any) -> str:
    """SETUP plus `text` with `{name}` replaced by `values[name]` (braces elsewhere are left alone)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", repr(value))
    return SETUP + text


@pytest.mark.timeout(180)
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(
    run_ranks: RunRanks, backend: str, accumulate: int
) -> None:
    script = body(
        """
model = Regression()
trainer = quiet_trainer(
    accelerator={accelerator}, devices=2, max_epochs=2, accumulate_grad_batches={accumulate}
)
trainer.fit(model, loader(64, batch_size=4))
save_result({"weights": weights(model), "world_size": trainer.world_size, "steps": trainer.global_step,
             "device": str(next(model.parameters()).device)})
""",
        accelerator=ACCELERATOR[backend],
        accumulate=accumulate,
    )
    job = run_ranks(script)
    job.assert_succeeded()
    reference = Regression()
    single = quiet_trainer(devices=1, max_epochs=2, accumulate_grad_batches=accumulate)
    single.fit(reference, loader(64, batch_size=8))
    expected = weights(reference)
    for rank, result in enumerate(job.results):
        assert result["world_size"] == 2
        assert result["steps"] == single.global_step == 2 * 8 // accumulate
        if backend == "nccl":
            assert result["device"] == f"cuda:{rank}"
        for name, values in expected.items():
            assert torch.allclose(torch.tensor(result["weights"][name]), torch.tensor(values), atol=1e-5)


# Fit with 40 shuffled training samples and 101 validation samples (batches of 10), then test and predict on
# the 101, on as many ranks as torchrun started (its WORLD_SIZE): 101 is divisible by no world size tested.
EXACTLY_ONCE = """
world = int(os.environ["WORLD_SIZE"])
model = Regression()
trainer = quiet_trainer(accelerator={accelerator}, devices=world, max_epochs=2)
trainer.fit(model, loader(40, batch_size=4, shuffle=True), loader(101, batch_size=10))
fit_metrics = floats(trainer.callback_metrics)
test_metrics = trainer.test(model, loader(101, batch_size=10))[0]
predictions = trainer.predict(model, loader(101, batch_size=10))
flat = None if predictions is None else [int(v) for batch in predictions for v in batch]
save_result({"seen": model.seen, "fit": fit_metrics, "test": test_metrics, "predictions": flat,
             "world_size": trainer.world_size, "device": str(model.device)})
"""


def shard(size: int, world: int, rank: int) -> list[int]:
    """The contiguous evaluation shard of `size` samples that rank `rank` reads (no padding)."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


def check_exactly_once(results: list[dict[str, Any]], backend: str) -> None:
    """The assertions on every rank's result of EXACTLY_ONCE, for any number of ranks."""
    world = len(results)
    for rank, result in enumerate(results):
        assert result["world_size"] == world, rank
        assert result["device"] == (f"cuda:{rank}" if backend == "nccl" else "cpu"), rank
    for epoch in range(2):  # training: disjoint shards covering the set, a new shuffle every epoch
        shards = [result["seen"]["train"][epoch] for result in results]
        assert [len(s) for s in shards] == [40 // world] * world, epoch
        assert sorted(i for s in shards for i in s) == list(range(40)), epoch
    for result in results:
        assert result["seen"]["train"][0] != result["seen"]["train"][1]
    assert results[0]["seen"]["train"][0] != sorted(results[0]["seen"]["train"][0])
    # validation (two epochs) and test: every sample once per pass, in contiguous shards in dataset order
    assert sorted(i for result in results for i in result["seen"]["test"]) == list(range(101))
    assert sorted(i for result in results for i in result["seen"]["val"]) == sorted(2 * list(range(101)))
    expected = {"v_mean": 50.0, "v_sum": 5050.0, "v_max": 100.0, "v_min": 0.0}
    for rank, result in enumerate(results):
        own = shard(101, world, rank)
        assert result["seen"]["test"] == own and result["seen"]["val"] == own + own, rank
        for name, value in expected.items():
            assert result["fit"][name] == pytest.approx(value), (rank, name)
            assert result["test"][name] == pytest.approx(value), (rank, name)
        # without sync_dist, each rank's own shard (2 ranks: 0..50 gives 25.0 and 51..100 gives 75.5)
        assert result["test"]["v_local"] == pytest.approx(sum(own) / len(own)), rank
    assert results[0]["predictions"] == [10 * i for i in range(101)]
    assert [result["predictions"] for result in results[1:]] == [None] * (world - 1)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", BACKENDS)
def test_samplers_exactly_once_evaluation_synced_metrics_and_predictions(
    run_ranks: RunRanks, backend: str
) -> None:
    job = run_ranks(body(EXACTLY_ONCE, accelerator=ACCELERATOR[backend]), nprocs=2)
    job.assert_succeeded()
    check_exactly_once(job.results, backend)


@pytest.mark.timeout(180)
def test_more_ranks_than_samples_evaluates_and_predicts_the_one_sample_once(run_ranks: RunRanks) -> None:
    script = body(
        """
model = Regression(sync=False)
trainer = quiet_trainer(devices=2)
trainer.validate(model, loader(1, batch_size=4))
predictions = trainer.predict(model, loader(1, batch_size=4))
flat = None if predictions is None else [int(v) for batch in predictions for v in batch]
save_result({"seen": model.seen["val"], "predictions": flat})
"""
    )
    job = run_ranks(script)
    job.assert_succeeded()
    assert [result["seen"] for result in job.results] == [[0], []]
    assert [result["predictions"] for result in job.results] == [[0], None]


@pytest.mark.timeout(180)
def test_a_synced_metric_with_an_empty_shard_on_one_rank(run_ranks: RunRanks) -> None:
    script = body(
        """
metrics = quiet_trainer(devices=2).validate(Regression(), loader(1, batch_size=4))[0]
save_result(metrics)
"""
    )
    job = run_ranks(script)
    job.assert_succeeded()
    for result in job.results:
        assert (result["v_mean"], result["v_sum"], result["v_max"], result["v_min"]) == (0, 0, 0, 0)
