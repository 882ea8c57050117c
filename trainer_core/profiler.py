"""Profilers: `SimpleProfiler` (a per-action time table) and the no-op `PassThroughProfiler` (the default).

The trainer wraps every hook and step in `profiler.profile(action_name)`, calls `setup` before a stage and
`describe` at its end, as Lightning does. `Trainer(profiler="simple")` picks `SimpleProfiler`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from trainer_core.errors import MisconfigurationError

log = logging.getLogger(__name__)


class Profiler:
    """The profiler interface; this base class records nothing."""

    def start(self, action_name: str) -> None:
        """Start timing `action_name`."""

    def stop(self, action_name: str) -> None:
        """Stop timing `action_name`."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[Any]:
        """A context manager that times the code inside it under `action_name`."""
        return _Timed(self, action_name)

    def setup(
        self, stage: str | None = None, local_rank: int | None = None, log_dir: str | None = None
    ) -> None:
        """Called by the trainer before a stage runs (where to write, which rank)."""

    def summary(self) -> str:
        """The recorded times as text ("" when nothing is recorded)."""
        return ""

    def describe(self) -> None:
        """Report the summary (the log and, when configured, a file); called at the end of a stage."""

    def teardown(self, stage: str | None = None) -> None:
        """Called by the trainer after a stage."""


class _Timed:
    # A plain class rather than @contextmanager: the trainer enters one per hook per step, so it stays cheap.
    __slots__ = ("action_name", "profiler")

    def __init__(self, profiler: Profiler, action_name: str) -> None:
        self.profiler = profiler
        self.action_name = action_name

    def __enter__(self) -> None:
        self.profiler.start(self.action_name)

    def __exit__(self, *exc_info: object) -> None:
        self.profiler.stop(self.action_name)


class PassThroughProfiler(Profiler):
    """A profiler that measures nothing and costs next to nothing (the trainer's default)."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[Any]:
        return self._NOTHING


class SimpleProfiler(Profiler):
    """Times every action and reports calls, total, mean and share of the wall time, sorted by total.

    With `filename`, the summary goes to `dirpath/<stage>-<filename>.txt` (`dirpath` defaults to the trainer's
    log directory); without it, to the log at INFO level.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._started: dict[str, float] = {}
        self._calls: dict[str, int] = {}
        self._totals: dict[str, float] = {}
        self._created = time.perf_counter()

    def setup(
        self, stage: str | None = None, local_rank: int | None = None, log_dir: str | None = None
    ) -> None:
        self._stage = stage
        self._local_rank = local_rank
        if self.dirpath is None and log_dir is not None:
            self.dirpath = Path(log_dir)

    def start(self, action_name: str) -> None:
        if action_name in self._started:
            raise ValueError(f"Profiler action {action_name!r} was started twice without a stop in between.")
        self._started[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        begin = self._started.pop(action_name, None)
        if begin is None:
            raise ValueError(f"Profiler action {action_name!r} was stopped without being started.")
        self._calls[action_name] = self._calls.get(action_name, 0) + 1
        self._totals[action_name] = self._totals.get(action_name, 0.0) + (end - begin)

    def summary(self) -> str:
        if not self._totals:
            return ""
        wall = max(time.perf_counter() - self._created, 1e-12)
        rows = sorted(self._totals.items(), key=lambda item: item[1], reverse=True)
        width = max(len("Wall time"), *(len(name) for name, _ in rows))
        header = _row(width, "Action", "Calls", "Total (s)", "Mean (s)", "% of wall")
        lines = ["Profiler report", header, "-" * len(header)]
        lines.append(_row(width, "Wall time", "", f"{wall:.4f}", "", "100.0"))
        for name, total in rows:
            calls = self._calls[name]
            mean, share = total / calls, 100.0 * total / wall
            lines.append(_row(width, name, str(calls), f"{total:.4f}", f"{mean:.6f}", f"{share:.1f}"))
        return "\n".join(lines)

    def describe(self) -> None:
        report = self.summary()
        if not report:
            return
        path = self.output_path()
        if path is None:
            log.info("\n%s", report)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report + "\n")
        log.info("Profiler report written to %s", path)

    def output_path(self) -> Path | None:
        """Where `describe` writes the report, or None when it goes to the log."""
        if self.filename is None or self.dirpath is None:
            return None
        name = f"{self._stage}-{self.filename}" if self._stage else self.filename
        if self._local_rank:  # rank 0 keeps the plain name; other ranks do not overwrite it
            name = f"{name}-{self._local_rank}"
        return self.dirpath / f"{name}.txt"

    def teardown(self, stage: str | None = None) -> None:
        self._started.clear()


def _row(width: int, name: str, calls: str, total: str, mean: str, share: str) -> str:
    return f"{name:<{width}} | {calls:>8} | {total:>10} | {mean:>10} | {share:>9}"


def resolve_profiler(setting: str | Profiler | None) -> Profiler:
    """The profiler for `Trainer(profiler=...)`: None -> pass-through, "simple" -> `SimpleProfiler`."""
    if setting is None:
        return PassThroughProfiler()
    if isinstance(setting, Profiler):
        return setting
    if isinstance(setting, str) and setting.lower() == "simple":
        return SimpleProfiler()
    raise MisconfigurationError(
        f'Trainer(profiler={setting!r}) is not supported. Use profiler="simple", profiler=None, or a '
        "trainer_core.profiler.Profiler instance (SimpleProfiler(dirpath=..., filename=...))."
    )
