"""The trainer-level DDP checks at 4 and 8 ranks: Gloo on CPU here, NCCL where that many GPUs exist.

Exactly-once evaluation of sets that no world size divides (some with fewer batches than ranks, and ranks
with nothing to read), `sync_dist` metrics equal to one process's over the whole set, predictions once and in
dataset order on rank zero; and a stop signal to one non-zero rank mid-epoch that stops every rank at one
step with `last.ckpt` committed, then a resume that ends where the uninterrupted run ends. The bodies and
their checks are the 2-rank tests' own (test_trainer_ddp.py, test_preemption_ddp.py), run on more ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.multiproc import test_preemption_ddp as preemption
from tests.multiproc.ddp_models import Regression, loader, quiet_trainer
from tests.multiproc.test_trainer_ddp import ACCELERATOR, EXACTLY_ONCE, body, check_exactly_once, shard

RunRanks = Callable[..., Any]  # the `run_ranks` fixture of conftest.py

pytestmark = pytest.mark.multiproc


def _world(backend: str, world: int) -> Any:
    """One (backend, world size) parameter; NCCL is marked `gpu` and needs `world` CUDA GPUs."""
    marks: list[Any] = []
    if backend == "nccl":
        reason = f"NCCL at world size {world} needs {world} CUDA GPUs"
        marks = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < world, reason=reason)]
    return pytest.param(backend, world, marks=marks, id=f"{backend}-{world}")


# Gloo runs at both sizes on any machine (8 ranks share 2 CPU cores in 15-30 s a test); the ids ("nccl-8")
# let `pytest -k nccl` pick the GPU runs.
WORLDS = [_world("gloo", 4), _world("gloo", 8), _world("nccl", 4), _world("nccl", 8)]

# Batches of 4 over world - 1 samples (one rank reads nothing) and world + 1 samples (one rank reads two):
# either way fewer batches than ranks, and a size that the world size does not divide.
SMALL_SETS = """
world = int(os.environ["WORLD_SIZE"])
results = []
for size in (world - 1, world + 1):
    trainer = quiet_trainer(accelerator={accelerator}, devices=world)
    model = Regression()
    validated = trainer.validate(model, loader(size, batch_size=4))[0]
    tested = trainer.test(model, loader(size, batch_size=4))[0]
    predictions = trainer.predict(model, loader(size, batch_size=4))
    flat = None if predictions is None else [int(v) for batch in predictions for v in batch]
    results.append({"size": size, "seen": model.seen, "validate": validated, "test": tested,
                    "predictions": flat})
save_result(results)
"""
SYNCED = ("v_mean", "v_sum", "v_max", "v_min")


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("backend", "world"), WORLDS)
def test_training_shards_exactly_once_evaluation_synced_metrics_and_predictions(
    run_ranks: RunRanks, backend: str, world: int
) -> None:
    job = run_ranks(body(EXACTLY_ONCE, accelerator=ACCELERATOR[backend]), nprocs=world, timeout=200)
    job.assert_succeeded()
    assert len(job.results) == world
    check_exactly_once(job.results, backend)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("backend", "world"), WORLDS)
def test_fewer_batches_than_ranks_are_evaluated_and_predicted_once(
    run_ranks: RunRanks, backend: str, world: int
) -> None:
    job = run_ranks(body(SMALL_SETS, accelerator=ACCELERATOR[backend]), nprocs=world, timeout=200)
    job.assert_succeeded()
    for index, size in enumerate((world - 1, world + 1)):
        assert math.ceil(size / 4) < world and size % world != 0  # what the sizes are chosen for
        one = quiet_trainer(devices=1).validate(Regression(), loader(size, batch_size=4))[0]
        per_rank = [results[index] for results in job.results]
        for rank, result in enumerate(per_rank):
            assert result["size"] == size
            assert result["seen"]["val"] == result["seen"]["test"] == shard(size, world, rank), (size, rank)
            for name in SYNCED:  # one process's value over the whole set, on every rank, empty shard or not
                assert result["validate"][name] == pytest.approx(float(one[name])), (size, rank, name)
                assert result["test"][name] == pytest.approx(float(one[name])), (size, rank, name)
            expected = [10 * i for i in range(size)] if rank == 0 else None
            assert result["predictions"] == expected, (size, rank)


# The preempted-and-resumed job per (backend, world size), run by whichever of the two tests below comes
# first: one job serves both (three fits on every rank; 8 ranks take half a minute on 2 cores).
_PREEMPTED: dict[tuple[str, int], Any] = {}


def _preempted_and_resumed(run_ranks: RunRanks, root: Path, backend: str, world: int) -> Any:
    """INTERRUPT_AND_RESUME with a SIGUSR2 to the last rank mid-epoch (after step 5 of 8 batches per rank)."""
    if (backend, world) not in _PREEMPTED:
        hook, when, settings = preemption.POINTS["mid_epoch"]
        options: dict[str, Any] = {**settings, "accelerator": ACCELERATOR[backend]}
        values = {"root": str(root), "settings": options, "hook": repr(hook), "when": when}
        script = preemption.body(preemption.INTERRUPT_AND_RESUME, **values)
        _PREEMPTED[(backend, world)] = run_ranks(script, nprocs=world, timeout=260)
    return _PREEMPTED[(backend, world)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("backend", "world"), WORLDS)
def test_signal_on_one_nonzero_rank_mid_epoch_stops_every_rank_and_resume_ends_alike(
    run_ranks: RunRanks, tmp_path: Path, backend: str, world: int
) -> None:
    job = _preempted_and_resumed(run_ranks, tmp_path, backend, world)
    job.assert_succeeded()
    assert len(job.results) == world
    preemption.assert_stopped_together(job.results)  # the signal went to the last rank only
    for rank, result in enumerate(job.results):
        assert result["device"] == (f"cuda:{rank}" if backend == "nccl" else "cpu"), rank
        assert result["loops"]["epoch"] == 0 and 0 < result["loops"]["epoch_batches"] < 8, rank
    # Weights within 1e-5, as the other NCCL tests compare them: CUDA kernels need not reproduce every bit,
    # and on CPU bit equality is the next test's.
    preemption.assert_resumed_exactly(job.results, exact=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("backend", "world"), [("gloo", 4), ("gloo", 8)], ids=["gloo-4", "gloo-8"])
def test_resume_after_the_signal_is_bit_exact_on_cpu(
    run_ranks: RunRanks, tmp_path: Path, backend: str, world: int
) -> None:
    job = _preempted_and_resumed(run_ranks, tmp_path, backend, world)
    job.assert_succeeded()
    preemption.assert_stopped_together(job.results)
    preemption.assert_resumed_exactly(job.results, exact=True)
