"""What Slurm's accounting (`sacct`) says about jobs: state, nodes, start and end, requeued runs."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from slurm.errors import SlurmCommandError

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
SACCT_FIELDS = ("JobID", "State", "NodeList", "Start", "End", "ExitCode")
# States after which a job does not run again; REQUEUED and PREEMPTED rows are followed by a new run.
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)
# Rows that end one run of a job that then goes back to the queue.
REQUEUE_STATES = frozenset({"REQUEUED", "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED"})
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")


@dataclass(frozen=True)
class JobInfo:
    """One Slurm job (or array task) as sacct records it; runs are oldest first."""

    job_id: str
    state: str  # the newest run's state word: PENDING, RUNNING, COMPLETED, FAILED, ...
    nodes: str  # the newest run's node list ("None assigned" while pending)
    start: str  # the newest run's start ("Unknown" or "None" while pending)
    end: str  # the newest run's end ("Unknown" while running)
    exit_code: str  # "code:signal" of the newest run
    runs: int  # runs recorded (1 + requeues)
    requeues: int  # runs that ended requeued or preempted
    timeouts: int  # runs that ended in TIMEOUT

    @property
    def is_final(self) -> bool:
        """Whether the job will not run again."""
        return self.state in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """Whether the job is queued or running (it may still finish on its own)."""
        return not self.is_final


def expand_array_ids(job_id: str) -> list[str]:
    """A pending array row's id as single task ids: "12_[0-2,5%2]" -> ["12_0", "12_1", "12_2", "12_5"]."""
    match = _ARRAY_RANGE.match(job_id)
    if match is None:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids: list[str] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        ids.extend(f"{base}_{task}" for task in range(int(low), int(high or low) + 1))
    return ids


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """JobInfo per job id from `sacct -n -P -X -D -o JobID,State,NodeList,Start,End,ExitCode` output."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) != len(SACCT_FIELDS):
            continue
        for job_id in expand_array_ids(cells[0]):
            rows.setdefault(job_id, []).append([job_id, *cells[1:]])
    return {job_id: _job_info(job_id, runs) for job_id, runs in rows.items()}


def _job_info(job_id: str, runs: list[list[str]]) -> JobInfo:
    states = [run[1].split()[0] if run[1].strip() else "UNKNOWN" for run in runs]  # "CANCELLED by 0"
    newest = runs[-1]
    return JobInfo(
        job_id=job_id,
        state=states[-1],
        nodes=newest[2],
        start=newest[3],
        end=newest[4],
        exit_code=newest[5],
        runs=len(runs),
        requeues=sum(state in REQUEUE_STATES for state in states),
        timeouts=sum(state == "TIMEOUT" for state in states),
    )


def query_jobs(job_ids: Iterable[str], run: Runner = subprocess.run) -> dict[str, JobInfo]:
    """sacct's record of the jobs (array task ids such as "12_3" included); unknown ids are left out."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    # Pending array tasks appear only in their array's row ("12_[1-3]"): ask for the arrays too.
    queried = sorted({*wanted, *(job_id.split("_")[0] for job_id in wanted)})
    args = ["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(queried), "-o", ",".join(SACCT_FIELDS)]
    try:
        done = run(args, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise SlurmCommandError(
            "`sacct` not found: the Slurm state of a job needs the Slurm client commands on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmCommandError("`sacct` did not answer within 30 s: is slurmdbd up?") from None
    if done.returncode != 0:
        raise SlurmCommandError(f"`{' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    found = parse_sacct(str(done.stdout))
    return {job_id: info for job_id, info in found.items() if job_id in wanted}
