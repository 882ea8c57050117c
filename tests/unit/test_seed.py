"""Seeding, worker seeding and RNG state capture/restore."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from trainer_core.errors import MisconfigurationError
from trainer_core.seed import (
    SEED_ENV,
    WORKERS_ENV,
    capture_rng_state,
    current_seed,
    restore_rng_state,
    seed_everything,
    seed_worker,
)


@pytest.fixture(autouse=True)
def _restore_seed_env() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in (SEED_ENV, WORKERS_ENV, "RANK")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _draws() -> tuple[float, list[float], list[float]]:
    return random.random(), torch.rand(3).tolist(), np.random.rand(3).tolist()


def test_same_seed_gives_same_draws_in_every_library() -> None:
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    assert _draws() != first


def test_seed_is_recorded_for_child_processes() -> None:
    assert seed_everything(77, workers=True) == 77
    assert os.environ[SEED_ENV] == "77"
    assert os.environ[WORKERS_ENV] == "1"
    assert current_seed() == 77


def test_none_reads_the_environment() -> None:
    os.environ[SEED_ENV] = "31"
    assert seed_everything(None) == 31


def test_none_without_environment_picks_a_seed_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    os.environ.pop(SEED_ENV, None)
    seed = seed_everything()
    assert 0 <= seed < 2**32
    assert current_seed() == seed
    assert any(SEED_ENV in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "7", True])
def test_bad_seed_names_value_and_range(bad: object) -> None:
    with pytest.raises(MisconfigurationError, match=r"seed=.*integer in \[0, 4294967295\]"):
        seed_everything(bad)  # type: ignore[arg-type]


def test_numpy_integer_seed_is_accepted() -> None:
    assert seed_everything(np.int64(5)) == 5  # type: ignore[arg-type]


def test_restore_reproduces_the_same_draws() -> None:
    seed_everything(9)
    random.random(), torch.rand(1), np.random.rand()  # move away from the seeded state
    state = capture_rng_state()
    expected = _draws()
    _draws()
    restore_rng_state(state)
    assert _draws() == expected


def test_rng_state_survives_weights_only_load() -> None:
    seed_everything(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = capture_rng_state()
    expected = _draws()
    buffer = io.BytesIO()
    torch.save({"rng_states": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng_states"]
    restore_rng_state(loaded)
    assert _draws() == expected


def _worker_draws(worker_id: int, rank: int) -> tuple[float, float, float]:
    torch.manual_seed(1000 + worker_id)  # what a DataLoader does for each worker before worker_init_fn
    seed_worker(worker_id, rank=rank)
    return random.random(), torch.rand(1).item(), float(np.random.rand())


def test_worker_seeds_differ_per_worker_and_rank_and_repeat() -> None:
    draws = {(w, r): _worker_draws(w, r) for w in range(3) for r in range(2)}
    assert len(set(draws.values())) == len(draws)
    assert _worker_draws(1, 1) == draws[(1, 1)]


def test_worker_rank_defaults_to_the_process_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer_core.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    from_rank_one = _worker_draws(0, rank=1)
    torch.manual_seed(1000)
    seed_worker(0)
    assert (random.random(), torch.rand(1).item(), float(np.random.rand())) == from_rank_one
