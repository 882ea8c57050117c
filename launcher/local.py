"""The local backend: one rank in this process, or N ranks through torch's elastic agent on this machine."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from launcher import rundir
from launcher.config import JobConfig
from launcher.errors import LaunchError

log = logging.getLogger(__name__)


class RankFailure(LaunchError):
    """One or more ranks of a local job exited with an error; the message holds their tracebacks."""


class Interrupted(LaunchError):
    """The job was stopped by a signal (Ctrl-C, SIGTERM) before it finished."""


def free_port() -> int:
    """A TCP port that is free on the loopback interface now (bind port 0), for this job's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_local(run_dir: Path, job: JobConfig) -> None:
    """Run the job on this machine; the manifest says "failed" or "interrupted" if it did not finish."""
    try:
        if job.trainer.devices == 1:
            from launcher import rank_main

            rank_main.run(run_dir, in_launcher=True)
        else:
            _run_elastic(run_dir, job.trainer.devices)
    except BaseException as error:
        status = "interrupted" if isinstance(error, (KeyboardInterrupt, Interrupted)) else "failed"
        if rundir.read_manifest(run_dir).get("status") == "running":
            rundir.update_manifest(run_dir, status=status)
        raise


def _run_elastic(run_dir: Path, nproc: int) -> None:
    """Start nproc ranks of `python -m launcher.rank_main RUN_DIR` under torch's elastic agent and wait."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # CPU ranks share the cores: one thread each avoids oversubscription (torchrun does the same).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_dir.name,
        rdzv_backend="c10d",
        # A port found now, so two jobs on one machine never collide.
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        # Rank zero owns the console; the others' stdout and stderr go to files (their logging goes to
        # logs/rank{r}.log either way). The agent keeps each rank's error file there too.
        logs_specs=DefaultLogsSpecs(
            log_dir=str(run_dir / "logs" / "elastic"),
            redirects={rank: Std.ALL for rank in range(1, nproc)},
        ),
    )
    log.info("starting %d local ranks (rendezvous %s)", nproc, config.rdzv_endpoint)
    try:
        elastic_launch(config, sys.executable)("-m", "launcher.rank_main", str(run_dir))
    except ChildFailedError as error:
        raise RankFailure(error.format_msg()) from None
    except SignalException as error:
        raise Interrupted(f"stopped by signal {error.sigval.name}; every rank was shut down.") from None
