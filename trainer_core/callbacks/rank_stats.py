"""Per-rank statistics for the monitoring callbacks: when to log, and min/max across ranks with their ranks.

Every rank must reach the same gather at the same step, so the decision to log depends only on loop
counters that are identical on every rank (`trainer.progress.stepped_batches`), never on the rank.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer


class LogCadence:
    """Says which batch ends write to the loggers: the ones where the trainer writes its own step metrics.

    The trainer writes after a batch whose optimizer step brings `stepped_batches` to a multiple of
    `log_every_n_steps`; with gradient accumulation the other batches of that window must not log again.
    """

    def __init__(self) -> None:
        self._last_stepped = -1

    def due(self, trainer: Trainer) -> int | None:
        """The logger step to write at now (the trainer's own), or None when this batch end does not log."""
        stepped = int(trainer.progress.stepped_batches)
        if stepped == self._last_stepped or stepped == 0 or stepped % int(trainer.log_every_n_steps):
            return None
        self._last_stepped = stepped
        return stepped - 1

    def reset(self) -> None:
        self._last_stepped = -1


@dataclasses.dataclass(frozen=True)
class Extremes:
    """One statistic across the ranks: its lowest and highest value and the rank that holds each."""

    min: float
    min_rank: int
    max: float
    max_rank: int


def extremes(per_rank: Sequence[Mapping[str, float]]) -> dict[str, Extremes]:
    """Min and max of every statistic over the ranks that report it (a rank may lack a GPU counter)."""
    names = sorted({name for stats in per_rank for name in stats})
    result: dict[str, Extremes] = {}
    for name in names:
        values = [(stats[name], rank) for rank, stats in enumerate(per_rank) if name in stats]
        low = min(values, key=lambda item: (item[0], item[1]))
        high = max(values, key=lambda item: (item[0], -item[1]))
        result[name] = Extremes(low[0], low[1], high[0], high[1])
    return result


def flatten(prefix: str, per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Logger scalars: `<prefix><name>` with one rank; `/min`, `/max`, `/min_rank`, `/max_rank` with more."""
    if len(per_rank) == 1:
        return {prefix + name: float(value) for name, value in per_rank[0].items()}
    scalars: dict[str, float] = {}
    for name, item in extremes(per_rank).items():
        scalars[f"{prefix}{name}/min"] = item.min
        scalars[f"{prefix}{name}/max"] = item.max
        scalars[f"{prefix}{name}/min_rank"] = float(item.min_rank)
        scalars[f"{prefix}{name}/max_rank"] = float(item.max_rank)
    return scalars


def gather(trainer: Trainer, payload: Any) -> list[Any]:
    """Every rank's `payload`, indexed by rank. Call it on every rank at the same point of the loop."""
    collectives = getattr(trainer, "collectives", None)
    if collectives is None or collectives.world_size == 1:
        return [payload]
    return list(collectives.all_gather_object(payload))


def hostname() -> str:
    """This machine's short name, as a user finds it in the Slurm node list."""
    return socket.gethostname().split(".")[0]
