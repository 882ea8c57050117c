"""Where a failed run says why: the failing rank, its error log, and the end of that log (its traceback)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACEBACK_START = "Traceback (most recent call last)"
MAX_LINES = 30
# What the trainer core logs on the rank that failed first, and on the ranks it stopped.
_FAILED_HERE = re.compile(r"Rank (\d+) failed; stopping every rank")
_FAILED_FIRST = re.compile(r"another rank failed first: rank (\d+)")
_RANK_LOG = re.compile(r"rank(\d+)\.log$")


@dataclass(frozen=True)
class FailureReport:
    """The error log of the rank that failed, and its last lines (from the last traceback on)."""

    rank: int | None
    log_path: Path
    lines: list[str]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def failing_rank(run_dir: Path) -> int | None:
    """The rank that the ranks' own logs name as the one that failed first, or None when none says so."""
    texts = [_read(log_file) for log_file in sorted((run_dir / "logs").glob("rank*.log"))]
    # "failed first" is decided by the job's rendezvous store: it outranks a rank's own failure message.
    for pattern in (_FAILED_FIRST, _FAILED_HERE):
        named = [int(rank) for text in texts for rank in pattern.findall(text)]
        if named:
            return named[0]
    return None


def _slurm_error_logs(run_dir: Path, manifest: dict[str, Any]) -> dict[int, Path]:
    """Task (rank) -> stderr file of the run's newest Slurm job, as submitit names them."""
    job_ids = manifest.get("slurm_job_ids") or []
    if not job_ids:
        return {}
    folder = Path(manifest.get("slurm_folder") or run_dir / "slurm")
    prefix = f"{job_ids[-1]}_"
    found: dict[int, Path] = {}
    for path in folder.glob(f"{job_ids[-1]}_*_log.err"):
        task = path.name.removeprefix(prefix).removesuffix("_log.err")
        if task.isdigit():
            found[int(task)] = path
    return found


def _rank_logs(run_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in (run_dir / "logs").glob("rank*.log"):
        match = _RANK_LOG.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _candidates(run_dir: Path, manifest: dict[str, Any]) -> list[tuple[int, Path]]:
    """(rank, log) pairs, the failing rank's first when known, each rank's Slurm stderr before its log."""
    slurm_logs, rank_logs = _slurm_error_logs(run_dir, manifest), _rank_logs(run_dir)
    ranks = sorted(set(slurm_logs) | set(rank_logs))
    first = failing_rank(run_dir)
    if first is not None and first in ranks:
        ranks.remove(first)
        ranks.insert(0, first)
    pairs: list[tuple[int, Path]] = []
    for rank in ranks:
        pairs += [(rank, logs[rank]) for logs in (slurm_logs, rank_logs) if rank in logs]
    return pairs


def tail_from_traceback(text: str, max_lines: int = MAX_LINES) -> list[str]:
    """The lines from the last traceback on (at most max_lines, its end kept), else the last 15 lines."""
    lines = text.splitlines()
    starts = [index for index, line in enumerate(lines) if TRACEBACK_START in line]
    selected = lines[starts[-1] :] if starts else lines[-15:]
    return selected[-max_lines:]


def failure_report(run_dir: Path, manifest: dict[str, Any]) -> FailureReport | None:
    """The error log of the run's failing rank: the first log holding a traceback, the named rank first."""
    candidates = _candidates(run_dir, manifest)
    for rank, path in candidates:
        text = _read(path)
        if TRACEBACK_START in text:
            return FailureReport(rank, path, tail_from_traceback(text))
    if candidates:
        rank, path = candidates[0]
        return FailureReport(rank, path, tail_from_traceback(_read(path)))
    return None
