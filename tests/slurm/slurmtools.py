"""Helpers of the real Slurm tier: submit with sbatch, poll sacct, and small functions that jobs run."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# States after which a job does not run again (REQUEUED and PREEMPTED rows are followed by a new run).
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
}


@dataclass
class SlurmCluster:
    """The running cluster as the tests see it."""

    state_dir: Path
    slurm_conf: Path
    nodes: int  # as start.sh recorded it; may differ from the asked number when a cluster was already up
    started_here: bool  # True: this session started it and stops it at the end


def sbatch(*args: str) -> str:
    """Submit with `sbatch --parsable ARGS` and return the job id."""
    done = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip().split(";")[0]


def job_rows(job_id: str) -> list[dict[str, str]]:
    """Every allocation row of the job as sacct records it, oldest first (`-D`: requeued runs included)."""
    fields = "JobID,State,ExitCode,NodeList,Partition"
    done = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", fields],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    names = fields.split(",")
    return [dict(zip(names, line.split("|"))) for line in done.stdout.splitlines() if line.strip()]


def job_state(job_id: str) -> str:
    """The job's current state word (e.g. RUNNING, COMPLETED), "" before sacct knows the job."""
    rows = job_rows(job_id)
    # "CANCELLED by 0" -> "CANCELLED"
    return rows[-1]["State"].split()[0] if rows else ""


def wait_for_final_state(job_id: str, timeout_s: float) -> str:
    """Poll sacct until the job reaches a final state; fail with the state seen last after timeout_s."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state in FINAL_STATES:
            return state
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {state or 'unknown to sacct'} after {timeout_s:.0f}s")


def wait_for_state(job_id: str, wanted: str, timeout_s: float) -> None:
    """Poll sacct until the job is in state `wanted` (e.g. RUNNING)."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state == wanted:
            return
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} never reached {wanted} within {timeout_s:.0f}s (last: {state})")


def wait_for_lines(path: Path, count: int, timeout_s: float) -> list[str]:
    """Wait until the file has at least `count` lines; return its lines."""
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.2)
    raise TimeoutError(f"{path} has {len(lines)} line(s), expected {count} within {timeout_s:.0f}s: {lines}")


def describe_task(tag: str) -> dict[str, str]:
    """Run inside a submitit job: where this task runs and which Slurm rank it is."""
    return {
        "tag": tag,
        "hostname": socket.gethostname(),
        "procid": os.environ.get("SLURM_PROCID", ""),
        "ntasks": os.environ.get("SLURM_NTASKS", ""),
        "nodelist": os.environ.get("SLURM_JOB_NODELIST", ""),
        # The first host of the node list must resolve on every node (a rendezvous address).
        "first_host_addr": socket.gethostbyname(socket.gethostname()),
    }
