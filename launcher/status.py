"""`launch-status DIR`: the runs under a run, sweep or root directory, from their run.json and Slurm's sacct.

Per run: its own status, the Slurm state of its newest job, requeue and time-out counts, the last committed
step, nodes, start and end; under the table, for every failed run, its failing rank's error log and the end
of that log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import rundir
from launcher.failure_logs import failure_report

if TYPE_CHECKING:
    from slurm.accounting import JobInfo

COLUMNS = (
    "run",
    "status",
    "slurm",
    "requeues",
    "timeouts",
    "preemptions",
    "last step",
    "job",
    "nodes",
    "start",
    "end",
    "updated",
)
# Slurm states of a run that did not end well: the status command shows its failing rank's error log.
FAILED_SLURM_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL")


def find_runs(directory: Path) -> list[Path]:
    """The run directories (those holding a run.json) at or below directory, sorted by path."""
    if (directory / rundir.MANIFEST_FILE).is_file():
        return [directory]
    return sorted(path.parent for path in directory.rglob(rundir.MANIFEST_FILE))


def newest_job_id(manifest: dict[str, Any]) -> str | None:
    """The id of the run's newest Slurm job, or None for a local run."""
    job_ids = manifest.get("slurm_job_ids") or []
    return str(job_ids[-1]) if job_ids else None


def query_slurm(manifests: list[dict[str, Any]]) -> tuple[dict[str, JobInfo], str | None]:
    """sacct's view of the runs' newest jobs (one query for all), and a warning when sacct cannot answer."""
    job_ids = [job_id for job_id in map(newest_job_id, manifests) if job_id]
    if not job_ids:
        return {}, None
    from slurm.accounting import query_jobs
    from slurm.errors import SlurmCommandError

    try:
        return query_jobs(job_ids), None
    except SlurmCommandError as error:
        return {}, f"Slurm state unknown: {error}"


def row(run_dir: Path, base: Path, manifest: dict[str, Any], info: JobInfo | None) -> tuple[str, ...]:
    """One table row for a run directory; `info` is sacct's record of its newest Slurm job."""
    name = run_dir.relative_to(base).as_posix() if run_dir != base else run_dir.name
    step = manifest.get("last_committed_step")
    job_id = newest_job_id(manifest)
    requeues = max(int(manifest.get("requeue_count", 0)), info.requeues if info else 0)
    timeouts = max(int(manifest.get("timeout_count", 0)), info.timeouts if info else 0)
    return (
        name,
        str(manifest.get("status", "unknown")),
        info.state if info else ("unknown" if job_id else "-"),
        str(requeues),
        str(timeouts),
        str(manifest.get("preemption_count", 0)),
        "-" if step is None else str(step),
        job_id or "-",
        info.nodes.replace(" ", "_") if info else "-",
        info.start if info else "-",
        info.end if info else "-",
        str(manifest.get("updated", "-")),
    )


def is_failed(manifest: dict[str, Any], info: JobInfo | None) -> bool:
    """Whether the run failed: by its own record, or by Slurm's state of its newest job."""
    return manifest.get("status") == "failed" or (info is not None and info.state in FAILED_SLURM_STATES)


def describe_failure(name: str, run_dir: Path, manifest: dict[str, Any], info: JobInfo | None) -> str:
    """A few lines under the table: the failed run, its failing rank's error log and that log's end."""
    where = f"job {info.job_id} {info.state}, exit {info.exit_code}" if info else "local run"
    report = failure_report(run_dir, manifest)
    if report is None:
        return f"{name}: failed ({where}); no error log found under {run_dir}"
    rank = "unknown rank" if report.rank is None else f"rank {report.rank}"
    body = "\n".join(f"  | {line}" for line in report.lines)
    return f"{name}: failed ({where}) on {rank}; error log: {report.log_path}\n{body}"


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
    manifests = [rundir.read_manifest(run_dir) for run_dir in runs]
    infos, warning = query_slurm(manifests)
    rows, failures = [], []
    for run_dir, manifest in zip(runs, manifests):
        job_id = newest_job_id(manifest)
        info = infos.get(job_id) if job_id else None
        cells = row(run_dir, directory, manifest, info)
        rows.append(cells)
        if is_failed(manifest, info):
            failures.append(describe_failure(cells[0], run_dir, manifest, info))
    print(format_table(rows))
    for text in failures:
        print(f"\n{text}")
    if warning:
        print(f"\nlaunch-status: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()
