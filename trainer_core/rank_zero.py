"""Rank-zero helpers: run a function, or emit a warning or a log line, on global rank zero only."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

_RANK_VARIABLES = ("RANK", "SLURM_PROCID")


def _read_global_rank() -> int:
    # The trainer sets `rank_zero_only.rank` once the rank layout is known; before that (module import time,
    # a plain script) the launchers' variables are the best guess. Under a plain `sbatch` shell SLURM_PROCID
    # is 0, which is right.
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def rank_zero_only(fn: _F) -> _F:
    """Decorate `fn` so that it runs on global rank zero only and returns None elsewhere."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            return fn(*args, **kwargs)
        return None

    return wrapped  # type: ignore[return-value]


rank_zero_only.rank = _read_global_rank()  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 3) -> None:
    """Warn once per job, from rank zero."""
    warnings.warn(message, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_info(message: str, logger: logging.Logger | None = None) -> None:
    """Log `message` at INFO level from rank zero."""
    (logger or logging.getLogger("trainer_core")).info(message)
