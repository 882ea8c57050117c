"""The first-step clock: programs call `first_step()` in every training step; the first call records the time.

The time (`time.time()`, the clock the benchmark reads before it starts the command) is appended with the
rank to the file that `STARTUP_STAMP` names. Nothing happens when the variable is unset.
"""

from __future__ import annotations

import os
import time

ENV = "STARTUP_STAMP"
_recorded: list[bool] = []


def first_step() -> None:
    """Record this process's first training step (later calls do nothing)."""
    if _recorded:
        return
    _recorded.append(True)
    stamp = time.time()
    path = os.environ.get(ENV)
    if path:
        # One short line per rank in append mode: concurrent ranks never interleave within a line.
        with open(path, "a") as file:
            file.write(f"{os.environ.get('RANK', '0')} {stamp!r}\n")
