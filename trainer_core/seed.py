"""Global seeding, DataLoader worker seeding, and capture/restore of every random number generator's state."""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import random
from typing import Any

import torch

from trainer_core.errors import MisconfigurationError

try:  # numpy is optional for the trainer core; seed and restore it only when it is there
    import numpy as np
except ImportError:  # pragma: no cover - numpy is installed in every supported environment
    np = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Child processes (DataLoader workers, spawned ranks) read the seed from these, as Lightning's PL_GLOBAL_SEED.
SEED_ENV = "HPC_GLOBAL_SEED"
WORKERS_ENV = "HPC_SEED_WORKERS"

# numpy's legacy seeding accepts 32-bit seeds only; so does Lightning's seed_everything.
_MIN_SEED = 0
_MAX_SEED = 2**32 - 1


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed python `random`, numpy, torch and every CUDA device with `seed`, and return it.

    With `seed=None` the seed comes from the `HPC_GLOBAL_SEED` environment variable, else a random one is
    chosen (and a warning says which). The seed is recorded in `HPC_GLOBAL_SEED` (and `workers` in
    `HPC_SEED_WORKERS`) so that child processes and `seed_worker` see it.
    """
    seed = _seed_from_environment() if seed is None else _checked_seed(seed)
    log.info("Seed set to %d", seed)
    os.environ[SEED_ENV] = str(seed)
    os.environ[WORKERS_ENV] = str(int(workers))
    random.seed(seed)
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    return seed


def _checked_seed(seed: Any) -> int:
    try:
        value = operator.index(seed)  # accepts numpy integers, refuses floats and strings
    except TypeError:
        value = None
    if value is None or isinstance(seed, bool) or not _MIN_SEED <= value <= _MAX_SEED:
        raise MisconfigurationError(
            f"seed_everything(seed={seed!r}): the seed must be an integer in [{_MIN_SEED}, {_MAX_SEED}] "
            "(numpy's limit). Pass such an integer, or None to read HPC_GLOBAL_SEED or pick one."
        )
    return value


def _seed_from_environment() -> int:
    value = os.environ.get(SEED_ENV)
    if value is None:
        seed = _random_seed()
        log.warning("No seed given and %s is not set; using seed=%d", SEED_ENV, seed)
        return seed
    try:
        return int(value)
    except ValueError:
        seed = _random_seed()
        log.warning("%s=%r is not an integer; using seed=%d instead", SEED_ENV, value, seed)
        return seed


def _random_seed() -> int:
    return random.SystemRandom().randint(_MIN_SEED, _MAX_SEED)


def current_seed() -> int | None:
    """The seed the last `seed_everything` set in this process or a parent, or None."""
    value = os.environ.get(SEED_ENV)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def seed_worker(worker_id: int, rank: int | None = None) -> None:
    """A DataLoader `worker_init_fn`: a distinct, reproducible seed per (global seed, worker, rank).

    As Lightning's `pl_worker_init_function`: the base seed is the one torch gave this worker minus its id
    (so it depends on the loader's generator, hence on the global seed and the epoch), and python, torch and
    numpy are seeded from a hash of (base seed, worker id, rank).
    """
    if rank is None:
        rank = _global_rank_from_environment()
    base_seed = torch.initial_seed() - worker_id
    seeds = _derive_seeds(base_seed, worker_id, rank, count=4)
    torch.manual_seed(seeds[0])
    random.seed((seeds[1] << 32) | seeds[2])
    if np is not None:
        np.random.seed(seeds[3])


def _global_rank_from_environment() -> int:
    # The trainer sets the global rank once the layout is known; a DataLoader worker inherits it from its
    # rank's process. Before that, `rank_zero` reads the launchers' variables.
    from trainer_core.rank_zero import rank_zero_only

    return int(rank_zero_only.rank)  # type: ignore[attr-defined]


def _derive_seeds(base_seed: int, worker_id: int, rank: int, count: int) -> list[int]:
    """`count` well-mixed 32-bit seeds from three integers (a hash, so nearby inputs give unrelated seeds)."""
    digest = hashlib.sha256(f"{base_seed}:{worker_id}:{rank}".encode()).digest()
    return [int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(count)]


def capture_rng_state() -> dict[str, Any]:
    """Every generator's state as lists, ints, strings and tensors, so `weights_only=True` can read it."""
    return plain_rng_state(raw_rng_state())


RawRngState = tuple[Any, torch.Tensor, list[torch.Tensor] | None, Any]


def raw_rng_state() -> RawRngState:
    """Every generator's state as the generators return it (fresh copies, a few microseconds): what a save
    point takes; `plain_rng_state` turns it into checkpoint types later, on the checkpoint writer's thread."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    numpy_state = np.random.get_state(legacy=True) if np is not None else None  # type: ignore[misc]
    return random.getstate(), torch.get_rng_state(), cuda, numpy_state


def plain_rng_state(raw: RawRngState) -> dict[str, Any]:
    """`raw_rng_state()` as lists, ints, strings and tensors, so `weights_only=True` can read it."""
    (version, internal, gauss_next), torch_state, cuda, numpy_state = raw
    state: dict[str, Any] = {
        # The 625-word generator states go in as int64 tensors: weights_only loading unpickles a list of
        # ints one object at a time, which is slower than the whole rest of a small checkpoint.
        "python": {
            "version": version,
            "state": _int64_tensor(internal),
            "gauss_next": gauss_next,
        },
        "torch": torch_state,
    }
    if cuda is not None:
        state["cuda"] = cuda
    if numpy_state is not None:
        kind, keys, pos, has_gauss, cached_gaussian = numpy_state
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        }
    return state


def _int64_tensor(values: tuple[int, ...]) -> torch.Tensor:
    # Through numpy when it is there: three times faster than torch.tensor on a tuple of Python ints (and
    # fromiter, told the count, a fifth faster than np.array).
    if np is not None:
        return torch.from_numpy(np.fromiter(values, dtype=np.int64, count=len(values)))
    return torch.tensor(values, dtype=torch.int64)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `capture_rng_state` returned; generators missing from `state` are left as they are."""
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(_ints(py["state"])), py["gauss_next"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        _restore_cuda(state["cuda"])
    if "numpy" in state and np is not None:
        npy = state["numpy"]
        keys = np.asarray(_ints(npy["keys"]), dtype=np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))


def _ints(words: torch.Tensor | list[int]) -> list[int]:
    # Tensors as this module writes them; lists as a checkpoint written by hand may hold them.
    return words.tolist() if isinstance(words, torch.Tensor) else [int(word) for word in words]


def _restore_cuda(states: list[torch.Tensor]) -> None:
    count = torch.cuda.device_count()
    if len(states) != count:
        # A resume on a machine with another device count: restore what both have, and say so.
        log.warning(
            "Checkpoint holds CUDA RNG states for %d devices, this process sees %d", len(states), count
        )
    for index, device_state in enumerate(states[:count]):
        torch.cuda.set_rng_state(device_state.cpu(), index)
