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


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", BACKENDS)
def test_samplers_exactly_once_evaluation_synced_metrics_and_predictions(
    run_ranks: RunRanks, backend: str
) -> None:
    script = body(
        """
model = Regression()
trainer = quiet_trainer(accelerator={accelerator}, devices=2, max_epochs=2)
trainer.fit(model, loader(40, batch_size=4, shuffle=True), loader(101, batch_size=10))
fit_metrics = floats(trainer.callback_metrics)
test_metrics = trainer.test(model, loader(101, batch_size=10))[0]
predictions = trainer.predict(model, loader(101, batch_size=10))
flat = None if predictions is None else [int(v) for batch in predictions for v in batch]
save_result({"seen": model.seen, "fit": fit_metrics, "test": test_metrics, "predictions": flat})
""",
        accelerator=ACCELERATOR[backend],
    )
    job = run_ranks(script)
    job.assert_succeeded()
    zero, one = job.results
    for epoch in range(2):  # training: disjoint shards covering the set, a new shuffle every epoch
        shards = [zero["seen"]["train"][epoch], one["seen"]["train"][epoch]]
        assert len(shards[0]) == len(shards[1]) == 20
        assert sorted(shards[0] + shards[1]) == list(range(40))
    assert zero["seen"]["train"][0] != zero["seen"]["train"][1]
    assert zero["seen"]["train"][0] != sorted(zero["seen"]["train"][0])
    # validation (two epochs) and test: every sample once per pass, contiguous shards of 51 and 50
    assert sorted(zero["seen"]["test"] + one["seen"]["test"]) == list(range(101))
    assert sorted(zero["seen"]["val"] + one["seen"]["val"]) == sorted(2 * list(range(101)))
    expected = {"v_mean": 50.0, "v_sum": 5050.0, "v_max": 100.0, "v_min": 0.0}
    for result in job.results:
        for name, value in expected.items():
            assert result["fit"][name] == pytest.approx(value), name
            assert result["test"][name] == pytest.approx(value), name
    assert zero["test"]["v_local"] == pytest.approx(25.0)  # rank zero's own shard: 0..50
    assert one["test"]["v_local"] == pytest.approx(75.5)  # rank one's: 51..100
    assert zero["predictions"] == [10 * i for i in range(101)]
    assert one["predictions"] is None


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
