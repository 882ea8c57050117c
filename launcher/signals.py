"""Stop signals outside the trainer: a rank's recorder from process start, and local forwarding to the ranks.

The trainer core handles stop signals during `fit` only (trainer_core.preemption): its handler records the
signal, the ranks agree at the next step boundary, save `last.ckpt` together and `fit` returns "preempted".
Two gaps remain, and this module fills them:

- Before `fit` installs its handler (imports, rendezvous, `prepare_data`) a rank would die of SIGUSR2 or
  SIGTERM (their default action) or lose the signal. `SignalRecorder` records it from the first lines of
  the rank, and `launcher.rank_callbacks.HandOverSignal` passes it to the trainer when fit starts, so the
  first step boundary saves and stops. On Slurm it also replaces submitit's own USR2 handler for the
  whole task: the launcher, not submitit, is the one requeue owner (see `launcher.slurm_job`).
- Locally the ranks run in their own sessions (torch's elastic agent starts them with `start_new_session`),
  so a terminal's Ctrl-C reaches only `launch`. `Forwarder` passes the first SIGINT, SIGTERM or SIGUSR2 to
  every rank; a second one kills the ranks at once (SIGKILL to each rank's process group), which leaves the
  previous `last.ckpt` intact because checkpoints are written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# What stops a job cleanly: USR2 (Slurm's pre-timeout and preemption signal here; not USR1, which NCCL and
# some MPI stacks use themselves), TERM (what schedulers and `kill` send), INT (Ctrl-C).
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
# A rank installs its signal recorder within its first fraction of a second (before torch is imported).
RANK_READY_S = 2.0


def signal_name(number: int | None) -> str:
    """ "SIGUSR2" for 12, "none" for None."""
    return signal.Signals(number).name if number is not None else "none"


class SignalRecorder:
    """Records the first stop signal; a second SIGINT raises KeyboardInterrupt (stop at once)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._sigints = 0
        self._previous: dict[int, Any] = {}

    def install(self, numbers: Iterable[int] = STOP_SIGNALS) -> SignalRecorder:
        """Handle `numbers` from now on (main thread only, Python's rule); returns self."""
        if threading.current_thread() is threading.main_thread():
            for number in numbers:
                self._previous[number] = signal.signal(number, self._record)
        return self

    def restore(self) -> None:
        """Put back the handlers that `install` replaced."""
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    @property
    def installed(self) -> bool:
        """Whether this recorder handles signals now."""
        return bool(self._previous)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only bookkeeping: the trainer saves at a step boundary, never inside a handler.
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            log.warning("received %s: the job saves last.ckpt at the next step boundary", signal_name(signum))


def ignore_from_now(numbers: Iterable[int] = STOP_SIGNALS) -> None:
    """Ignore stop signals once a rank's work is done (main thread only).

    Python puts back the default action of every signal that has a Python handler when the interpreter
    shuts down, and the default action of USR2 and TERM ends the process: a late signal (a time-out signal
    while a finished job exits) would turn a completed task into one killed by a signal. An ignored signal
    stays ignored through the shutdown.
    """
    if threading.current_thread() is threading.main_thread():
        for number in numbers:
            signal.signal(number, signal.SIG_IGN)


class Forwarder:
    """In `launch`: the first stop signal goes to every rank; a second one kills the ranks at once."""

    def __init__(self, ranks: Callable[[], list[int]], received: int | None = None) -> None:
        self._ranks = ranks  # the rank processes' PIDs now (each leads its own process group)
        # A stop signal that came before: passed on by `follow_up` as the ranks become ready.
        self.received: int | None = received
        self.count = 0 if received is None else 1
        self._signalled: set[int] = set()
        self._previous: dict[int, Any] = {}

    def install(self) -> Forwarder:
        """Handle the stop signals in this (main) thread until `restore`; returns self."""
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._forward)
        return self

    def restore(self) -> None:
        """Put back the handlers that `install` replaced."""
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.received = signum
            self._send(signum)
        else:
            self._kill()

    def follow_up(self) -> None:
        """Pass a received stop signal on to ranks that were too young for it (call this now and then)."""
        if self.received is not None and self.count == 1:
            self._deliver(self.received)

    def _deliver(self, signum: int) -> None:
        # A rank younger than RANK_READY_S may not have installed its recorder yet, and USR2's and TERM's
        # default action would kill it: it gets the signal from a later `follow_up`.
        for pid in set(self._ranks()) - self._signalled:
            if _age_s(pid) >= RANK_READY_S:
                self._signalled.add(pid)
                _quietly(os.kill, pid, signum)

    def _send(self, signum: int) -> None:
        self._deliver(signum)
        # The launcher's console output (logging to stderr): the user pressed Ctrl-C and waits for this.
        log.warning(
            "%s: every rank saves last.ckpt at its next step boundary and stops; press Ctrl-C again to stop "
            "at once (the previous last.ckpt stays intact)",
            signal_name(signum),
        )

    def _kill(self) -> None:
        log.warning("second stop signal: stopping every rank now")
        for pid in self._ranks():
            # The whole group: a rank's data loader workers go with it.
            _quietly(os.killpg, pid, signal.SIGKILL)


def _age_s(pid: int) -> float:
    """Seconds since the process started (0 when it is gone)."""
    import psutil

    try:
        return time.time() - float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _quietly(kill: Callable[[int, int], None], pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the rank has exited meanwhile
        kill(pid, signum)


def rank_pids(marker: str = "launcher.rank_main") -> list[int]:
    """The PIDs of this process's children that run a rank (their command line names `marker`)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=False):
        try:
            if marker in " ".join(child.cmdline()):
                found.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
