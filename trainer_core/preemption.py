"""Preemption-safe training: signal handlers that only record, and the ranks' agreement to stop and save.

A cluster announces the end of a job with a signal (Slurm's `--signal=USR2@120`, or SIGTERM before a kill);
locally the user presses Ctrl-C. Saving inside a signal handler can deadlock (the handler may interrupt a
collective or a half-written file), so the handler only records the signal. The fit loop checks at each
step boundary, at each epoch start and between validation batches (`StopVotes`): every rank takes part in
one small asynchronous all-reduce per check, read at the next check, so all of them stop at the same point,
save `last.ckpt` together through the normal atomic path, and `fit` returns with
`trainer.state.status == "preempted"`. A validation interrupted this way runs again from its start on
resume. Requeueing the job is the launcher's business: it reads
`trainer.received_signal`.

USR2, not USR1, is the default: NCCL and some MPI stacks use USR1 themselves. A second Ctrl-C raises
`KeyboardInterrupt` at once; an interrupted write leaves the previous `last.ckpt` as it was.

Configure it with `Trainer(plugins=[PreemptionSignals(signals=("SIGUSR2",), handle_sigint=False)])`;
`PreemptionSignals(signals=())` with `handle_sigint=False` turns it off.

`Trainer(plugins=[RunConfig(config=resolved_config)])` stores the config's hash (and the config) in every
checkpoint; resuming from a checkpoint of another config is refused, naming the keys that differ, unless
`RunConfig(..., allow_config_change=True)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch

from trainer_core.collectives import Collectives, Pending, SingleProcess
from trainer_core.errors import CheckpointError, MisconfigurationError

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGUSR2", "SIGTERM")


@dataclass
class PreemptionSignals:
    """Which signals make `fit` save `last.ckpt` at the next step boundary and return (a `Trainer` plugin).

    `signals`: names ("SIGUSR2") or numbers; default SIGUSR2 and SIGTERM. `handle_sigint`: the first Ctrl-C
    does the same, a second one stops at once. `vote_every_s`: with several ranks, about how often (in
    seconds of training) they agree on a signal; 0 votes at every step boundary. The ranks stop within about
    two such periods of the signal, far inside a cluster's warning time (Slurm's `--signal` lead, 120 s).
    """

    signals: Sequence[str | int] = field(default_factory=lambda: DEFAULT_SIGNALS)
    handle_sigint: bool = True
    vote_every_s: float = 0.1

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


@dataclass
class RunConfig:
    """The run's configuration (a `Trainer` plugin): what a checkpoint must match to be resumed.

    `config`: the resolved config as a mapping (its differing keys are named on a mismatch); `config_hash`:
    a hash computed elsewhere (the launcher's), else one is computed from `config`.
    """

    config: Mapping[str, Any] | None = None
    config_hash: str | None = None
    allow_config_change: bool = False
    # How a user of this run overrides the refusal (the launcher names its own config key).
    override_hint: str = "pass RunConfig(..., allow_config_change=True)"

    def digest(self) -> str | None:
        if self.config_hash is not None:
            return self.config_hash
        if self.config is None:
            return None
        text = json.dumps(_plain(self.config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def checkpoint_entry(self) -> dict[str, Any]:
        """What the checkpoint's `run_config` holds (plain types, for weights_only loading)."""
        return {"config_hash": self.digest(), "config": _plain(self.config) if self.config else None}

    def check(self, saved: Mapping[str, Any] | None, path: str) -> None:
        """Refuse a checkpoint written under another config (unless `allow_config_change`)."""
        if not saved or saved.get("config_hash") in (None, self.digest()):
            return
        keys = _differing_keys(saved.get("config"), _plain(self.config) if self.config else None)
        what = f"the keys that differ: {keys}" if keys else "no config stored to name the differing keys"
        message = (
            f"Checkpoint {path!r} was written by a run with config hash {saved.get('config_hash')}, this run "
            f"has {self.digest()} ({what}). Resume with the same config, start a new run, or "
            f"{self.override_hint} to resume anyway"
        )
        if not self.allow_config_change:
            raise CheckpointError(message)
        log.warning("%s; resuming because allow_config_change=True", message.split(". Resume")[0])


def _plain(value: Any) -> Any:
    from trainer_core.checkpoint import to_plain

    return to_plain(value)


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, Mapping):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)) or {f"{prefix}.{key}": value})
    return flat


def _differing_keys(saved: Any, current: Any) -> list[str]:
    if saved is None or current is None:
        return []
    before, after = _flat(saved), _flat(current)
    return sorted(k for k in set(before) | set(after) if before.get(k, ...) != after.get(k, ...))


class Preemption:
    """The trainer's signal recorder: installed during `fit` on the main thread, restored after."""

    def __init__(self, config: PreemptionSignals | None = None, run_config: RunConfig | None = None) -> None:
        self.config = config or PreemptionSignals()
        self.run_config = run_config
        self.config.numbers()  # a bad signal name fails when the Trainer is built, not in fit
        self.received: int | None = None  # the first stop signal of this fit
        self._sigint_count = 0
        self._previous: dict[int, Any] = {}
        self.votes = StopVotes(self, SingleProcess())

    @classmethod
    def from_plugins(cls, plugins: Any) -> Preemption:
        """The `PreemptionSignals` among `Trainer(plugins=...)` (one or a list), else the defaults."""
        items = plugins if isinstance(plugins, list | tuple) else [plugins]
        configs = [item for item in items if isinstance(item, PreemptionSignals)]
        run_configs = [item for item in items if isinstance(item, RunConfig)]
        return cls(configs[-1] if configs else None, run_configs[-1] if run_configs else None)

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

    def start_votes(self, collectives: Collectives) -> StopVotes:
        """A fresh agreement for one `fit` (`self.votes`), every rank voting with this recorder's signal."""
        self.votes = StopVotes(self, collectives)
        return self.votes

    def describe(self) -> str:
        """The received signal's name, for messages."""
        return signal.Signals(self.received).name if self.received is not None else "none"


class StopVotes:
    """The ranks' agreement on a stop signal: small asynchronous all-reduces, each read one vote late.

    A blocking all-reduce at every training step costs a round trip between the ranks each step (with Gloo on
    a busy CPU, a good part of a tiny step). Instead a vote is started asynchronously and read at the next
    vote, long after it finished: the ranks learn of a signal one vote late, but all of them at the same
    check, since they read the same vote. Votes are spaced about `vote_every_s` apart, counted in checks:
    each vote carries every rank's proposal (checks per `vote_every_s` at its own pace, at most
    `MAX_CHECKS_PER_VOTE`) and the smallest one read is the next spacing on every rank alike.

    Once a vote says stop, `agreed` stays True (no further votes); the loop acts on it at the first check
    where it may stop (not inside a gradient accumulation window). Every rank must call `check`,
    `check_now` and `drain` at the same points, so that all of them start the same votes; `drain` at the end
    of a fit leaves none running. With one process there is nobody to wait for: every check reads this
    process's own signal at once. With no signal configured (`PreemptionSignals(signals=(),
    handle_sigint=False)`, alike on every rank) there are no votes at all.
    """

    MAX_CHECKS_PER_VOTE = 100  # bounds the delay when steps suddenly slow down

    def __init__(self, recorder: Preemption, collectives: Collectives) -> None:
        self.recorder = recorder
        self.collectives = collectives
        self.agreed = False
        self.enabled = bool(recorder.config.numbers())
        self._several = collectives.world_size > 1
        self._pending: tuple[Pending, torch.Tensor] | None = None
        self._flags = (torch.zeros(2), torch.zeros(2))  # two votes at most are in flight: reuse their tensors
        self._started = 0
        self._checks_per_vote = 1  # until the first vote read: every check votes
        self._checks = 0  # since the last vote
        self._last_vote = time.perf_counter()

    def check(self) -> bool:
        """At a check point every rank reaches alike: when a vote is due, start it and read the last one."""
        if self.agreed or not self.enabled:
            return self.agreed
        if not self._several:
            self.agreed = self.recorder.received is not None
            return self.agreed
        self._checks += 1
        if self._checks < self._checks_per_vote:
            return False
        previous, self._pending = self._pending, self._start()
        return self._read(previous)

    def check_now(self) -> bool:
        """A vote read at once (one blocking round trip): for rare points such as an epoch's start."""
        self.drain()
        if not self.agreed and self.enabled:
            self._pending = self._start()
            self.drain()
        return self.agreed

    def drain(self) -> bool:
        """Wait for the vote in flight, if any, so that none is left running; return `agreed`."""
        previous, self._pending = self._pending, None
        return self._read(previous)

    def _start(self) -> tuple[Pending, torch.Tensor]:
        now = time.perf_counter()
        per_check = (now - self._last_vote) / max(self._checks, 1)
        wanted = self.recorder.config.vote_every_s / per_check if per_check > 0 else 1.0
        proposal = min(self.MAX_CHECKS_PER_VOTE, max(1, int(wanted)))
        self._last_vote, self._checks = now, 0
        flag = self._flags[self._started % 2]
        self._started += 1
        # One MAX reduction carries both: any rank's signal, and the smallest proposal (as its negative).
        flag[0], flag[1] = (1.0 if self.recorder.received is not None else 0.0), -float(proposal)
        return self.collectives.all_reduce_async(flag, "max"), flag

    def _read(self, vote: tuple[Pending, torch.Tensor] | None) -> bool:
        if vote is not None:
            handle, flag = vote
            handle.wait()
            stop, negative_spacing = flag.tolist()
            self.agreed = self.agreed or stop > 0
            self._checks_per_vote = int(-negative_spacing)
        return self.agreed
