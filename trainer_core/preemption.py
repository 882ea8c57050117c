"""Preemption-safe training: signal handlers that only record, and the ranks' agreement to stop and save.

A cluster announces the end of a job with a signal (Slurm's `--signal=USR2@120`, or SIGTERM before a kill);
locally the user presses Ctrl-C. Saving inside a signal handler can deadlock (the handler may interrupt a
collective or a half-written file), so the handler only records the signal. The fit loop asks `agreed()` at
each step boundary: every rank takes part in one small all-reduce, so all of them stop at the same step,
save `last.ckpt` together through the normal atomic path, and `fit` returns with
`trainer.state.status == "preempted"`. Requeueing the job is the launcher's business: it reads
`trainer.received_signal`.

USR2, not USR1, is the default: NCCL and some MPI stacks use USR1 themselves. A second Ctrl-C raises
`KeyboardInterrupt` at once; an interrupted write leaves the previous `last.ckpt` as it was.

Configure it with `Trainer(plugins=[PreemptionSignals(signals=("SIGUSR2",), handle_sigint=False)])`;
`PreemptionSignals(signals=())` with `handle_sigint=False` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGUSR2", "SIGTERM")


@dataclass
class PreemptionSignals:
    """Which signals make `fit` save `last.ckpt` at the next step boundary and return (a `Trainer` plugin).

    `signals`: names ("SIGUSR2") or numbers; default SIGUSR2 and SIGTERM. `handle_sigint`: the first Ctrl-C
    does the same, a second one stops at once.
    """

    signals: Sequence[str | int] = field(default_factory=lambda: DEFAULT_SIGNALS)
    handle_sigint: bool = True

    def numbers(self) -> list[int]:
        """The signal numbers to handle (SIGINT included when `handle_sigint`)."""
        numbers = [_signal_number(value) for value in self.signals]
        if self.handle_sigint:
            numbers.append(int(signal.SIGINT))
        return sorted(set(numbers))


def _signal_number(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(signal.Signals(value))
    name = str(value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    number = getattr(signal, name, None)
    if not isinstance(number, signal.Signals) or name in ("SIGKILL", "SIGSTOP"):
        raise MisconfigurationError(
            f"PreemptionSignals(signals=[..., {value!r}, ...]): {value!r} is not a signal this process can "
            'handle; use names such as "SIGUSR2", "SIGTERM", "SIGUSR1"'
        )
    return int(number)


class Preemption:
    """The trainer's signal recorder: installed during `fit` on the main thread, restored after."""

    def __init__(self, config: PreemptionSignals | None = None) -> None:
        self.config = config or PreemptionSignals()
        self.config.numbers()  # a bad signal name fails when the Trainer is built, not in fit
        self.received: int | None = None  # the first stop signal of this fit
        self._sigint_count = 0
        self._previous: dict[int, Any] = {}

    @classmethod
    def from_plugins(cls, plugins: Any) -> Preemption:
        """The `PreemptionSignals` among `Trainer(plugins=...)` (one or a list), else the defaults."""
        items = plugins if isinstance(plugins, list | tuple) else [plugins]
        configs = [item for item in items if isinstance(item, PreemptionSignals)]
        return cls(configs[-1] if configs else None)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only bookkeeping here: the loop saves at the next step boundary, outside the handler.
        if signum == signal.SIGINT:
            self._sigint_count += 1
            if self._sigint_count > 1:
                raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    @contextlib.contextmanager
    def installed(self, enabled: bool = True) -> Iterator[None]:
        """Handle the configured signals inside the block (main thread only: Python's rule for handlers)."""
        self.received, self._sigint_count = None, 0
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        for number in self.config.numbers():
            self._previous[number] = signal.signal(number, self._record)
        try:
            yield
        finally:
            for number, previous in self._previous.items():
                signal.signal(number, previous)
            self._previous.clear()

    def agreed(self, trainer: Trainer) -> bool:
        """Whether any rank received a stop signal; every rank must call this at the same points.

        With one process no collective; with several, one all-reduce of a single number.
        """
        local = self.received is not None
        if trainer.world_size == 1:
            return local
        votes = torch.tensor([1.0 if local else 0.0], device=trainer.device)
        return bool(trainer.collectives.all_reduce(votes, "max").item() > 0)

    def describe(self) -> str:
        """The received signal's name, for messages."""
        return signal.Signals(self.received).name if self.received is not None else "none"
