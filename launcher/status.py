"""`launch-status DIR`: a table of the runs under a run, sweep or root directory, read from their run.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from launcher import rundir

COLUMNS = ("run", "status", "slurm", "requeues", "timeouts", "preemptions", "last step", "updated")


def find_runs(directory: Path) -> list[Path]:
    """The run directories (those holding a run.json) at or below directory, sorted by path."""
    if (directory / rundir.MANIFEST_FILE).is_file():
        return [directory]
    return sorted(path.parent for path in directory.rglob(rundir.MANIFEST_FILE))


def slurm_state(manifest: dict[str, Any]) -> str:
    """The Slurm state of the run's newest job; '-' for local runs.

    The Slurm backend fills `slurm_job_ids`; querying `sacct` for their state belongs here.
    """
    job_ids = manifest.get("slurm_job_ids") or []
    return f"job {job_ids[-1]}" if job_ids else "-"


def row(run_dir: Path, base: Path) -> tuple[str, ...]:
    """One table row for a run directory."""
    manifest = rundir.read_manifest(run_dir)
    name = run_dir.relative_to(base).as_posix() if run_dir != base else run_dir.name
    step = manifest.get("last_committed_step")
    return (
        name,
        str(manifest.get("status", "unknown")),
        slurm_state(manifest),
        str(manifest.get("requeue_count", 0)),
        str(manifest.get("timeout_count", 0)),
        str(manifest.get("preemption_count", 0)),
        "-" if step is None else str(step),
        str(manifest.get("updated", "-")),
    )


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Rows under COLUMNS, left-aligned in columns as wide as their longest cell."""
    widths = [max(len(cells[i]) for cells in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
        for cells in [COLUMNS, *rows]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `launch-status`."""
    parser = argparse.ArgumentParser(
        prog="launch-status", description="State of the runs in a run, sweep or root directory."
    )
    parser.add_argument(
        "directory", nargs="?", default="runs", help="a run, sweep or root directory (default: runs)"
    )
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    if not directory.is_dir():
        print(
            f"launch-status: error: {directory}: no such directory. Pass a run, sweep or root directory.",
            file=sys.stderr,
        )
        sys.exit(2)
    runs = find_runs(directory)
    if not runs:
        print(f"launch-status: no runs under {directory} (no run.json found).")
        return
    print(format_table([row(run_dir, directory) for run_dir in runs]))


if __name__ == "__main__":
    main()
