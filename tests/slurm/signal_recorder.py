"""A job task that records its start and the signals it receives, for the preemption tests.

Usage (inside a job step): signal_recorder.py OUT_DIR MODE, where MODE is
  requeue: on USR2, record it; global rank 0 then requeues the job with `scontrol requeue`, as a
           trainer's requeue owner does after saving its checkpoint;
  ignore:  on USR2, record it and keep running, so that Slurm itself requeues the job after GraceTime.
On a restarted run (SLURM_RESTART_COUNT >= 1) it records its start and exits 0 at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def record(out_dir: Path, rank: str, line: str) -> None:
    """Append one line to this rank's record, flushed to disk before going on."""
    with open(out_dir / f"rank{rank}.log", "a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def main() -> int:
    out_dir, mode = Path(sys.argv[1]), sys.argv[2]
    rank = os.environ["SLURM_PROCID"]
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    received: list[int] = []
    # The handler only records; the work happens in the loop below (never inside a handler).
    signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    record(out_dir, rank, f"start restart={restart} host={os.uname().nodename}")
    if restart >= 1:
        return 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        while received:
            signum = received.pop(0)
            record(out_dir, rank, f"{signal.Signals(signum).name} restart={restart}")
            if signum == signal.SIGUSR2 and mode == "requeue" and rank == "0":
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=30)
        time.sleep(0.1)
    record(out_dir, rank, "no signal within 300 s")
    return 1


if __name__ == "__main__":
    sys.exit(main())
