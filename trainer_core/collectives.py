"""The narrow interface through which the trainer, metrics and callbacks talk to the other ranks.

`trainer_core.distributed` implements it over `torch.distributed`; `SingleProcess` is the one-process
implementation. Every rank must make the same calls in the same order: no call ever sits under a rank
condition.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch

ReduceOp = Literal["sum", "max", "min"]


class Pending(Protocol):
    """A collective started with `all_reduce_async`: `wait()` blocks until it is done on this rank."""

    def wait(self) -> object: ...


class Done:
    """A collective that finished when it started (one process: there is nobody to wait for)."""

    def wait(self) -> bool:
        return True


class Collectives(Protocol):
    """Collective operations among the ranks of one job."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """Reduce `tensor` in place over all ranks and return it."""
        ...

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> Pending:
        """Start reducing a CPU `tensor` in place over all ranks; it holds the result once `wait()` returns.

        Every rank must start the same ones in the same order and wait on each before reading `tensor`.
        """
        ...

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank."""
        ...

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank."""
        ...

    def barrier(self, name: str = "") -> None:
        """Wait for every rank; `name` appears in the error if a rank never arrives."""
        ...


class SingleProcess:
    """Collectives of a job with one rank: every operation is the identity."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        return tensor

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> Pending:
        return Done()

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str = "") -> None:
        return None
