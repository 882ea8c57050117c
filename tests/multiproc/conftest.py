"""Run a script body on several real ranks (Gloo on CPU) and collect every rank's result and exit code.

Two launchers: `torchrun` (`python -m torch.distributed.run`, whose agent tears the job down when a rank
fails) and `srun`, which starts the ranks as independent processes with the variables Slurm's `srun` sets,
so that nothing but the trainer core's own failure handling stops the other ranks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every body starts with this: its rank, and `save_result(value)` that writes the rank's result file.
PRELUDE = """
import json, os, sys
rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
def save_result(value):
    path = os.path.join(os.environ["RANK_RESULT_DIR"], f"rank{rank}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle)
    os.replace(path + ".tmp", path)
"""


@dataclass
class JobResult:
    """What each rank left behind: exit codes, result files (None where missing) and the combined output."""

    returncodes: list[int]
    results: list[Any]
    output: str

    def assert_succeeded(self) -> None:
        assert self.returncodes == [0] * len(self.returncodes), self.output
        assert all(result is not None for result in self.results), self.output


def free_port() -> int:
    """A port nobody listens on right now (bind port 0 and let the kernel choose)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _base_env(result_dir: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "TORCHELASTIC"))}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts or crashes prints every thread's Python stack
    env["RANK_RESULT_DIR"] = str(result_dir)
    return {**env, **(extra or {})}


def _srun_env(rank: int, nprocs: int, port: int, nodes: int = 1) -> dict[str, str]:
    """The variables `srun --nodes=M --ntasks-per-node=N/M` sets for one task (every "node" is this host)."""
    per_node = nprocs // nodes
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % per_node),
        "SLURM_NODEID": str(rank // per_node),
        "SLURM_NTASKS": str(nprocs),
        "SLURM_NNODES": str(nodes),
        "SLURM_TASKS_PER_NODE": str(per_node) if nodes == 1 else f"{per_node}(x{nodes})",
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_JOB_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _start(
    script: Path, nprocs: int, launcher: str, env: dict[str, str], logs: Path, nodes: int = 1
) -> list[subprocess.Popen]:
    port = free_port()
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}",
                   "--master-addr=127.0.0.1", f"--master-port={port}", str(script)]  # fmt: skip
        commands = [(command, env)]
    else:
        commands = [
            ([sys.executable, str(script)], {**env, **_srun_env(r, nprocs, port, nodes)})
            for r in range(nprocs)
        ]
    processes = []
    for index, (command, process_env) in enumerate(commands):
        out = (logs / f"process{index}.log").open("w")
        processes.append(subprocess.Popen(command, env=process_env, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=REPO_ROOT, start_new_session=True))  # fmt: skip
    return processes


def _wait(processes: list[subprocess.Popen], timeout: float) -> bool:
    """Wait for every process; on timeout kill each one's own process group and report False."""
    try:
        for process in processes:
            process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return False


RunRanks = Callable[..., JobResult]


@pytest.fixture
def run_ranks(tmp_path: Path) -> Iterator[RunRanks]:
    """`run_ranks(body, nprocs=2, launcher="torchrun"|"srun", timeout=120, env=None, nodes=1) -> JobResult`.

    `nodes` (srun only) spreads the ranks over that many simulated nodes of this host.
    """

    def run(
        body: str,
        nprocs: int = 2,
        launcher: str = "torchrun",
        timeout: float = 120,
        env: dict | None = None,
        nodes: int = 1,
    ) -> JobResult:
        result_dir = tmp_path / f"results-{launcher}"
        result_dir.mkdir()
        script = result_dir / "rank_body.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        processes = _start(script, nprocs, launcher, _base_env(result_dir, env), result_dir, nodes)
        finished = _wait(processes, timeout)
        output = "\n".join(log.read_text() for log in sorted(result_dir.glob("process*.log")))
        if not finished:
            pytest.fail(f"the ranks did not finish within {timeout} s:\n{output}")
        codes = [process.returncode for process in processes]
        if launcher == "torchrun":  # one agent for all ranks: its exit code stands for each
            codes = codes * nprocs
        results = [_read(result_dir / f"rank{rank}.json") for rank in range(nprocs)]
        return JobResult(codes, results, output)

    yield run


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None
