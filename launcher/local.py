"""The local backend: one rank in this process, or N ranks through torch's elastic agent on this machine."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path

from launcher import rundir
from launcher.config import JobConfig
from launcher.errors import LaunchError, RunError
from launcher.signals import Forwarder, SignalRecorder, rank_pids, signal_name

log = logging.getLogger(__name__)


class RankFailure(LaunchError):
    """One or more ranks of a local job exited with an error; the message holds their tracebacks."""


class Interrupted(LaunchError):
    """The job was stopped by a signal (a second Ctrl-C) before it could save; exit code 130 (as Ctrl-C)."""

    exit_code = 130


class Stopped(LaunchError):
    """A stop signal ended the job cleanly: every rank saved last.ckpt; `launch run.id=<id>` resumes it.

    `exit_code` is 128 + the signal's number, the shell's convention for a process ended by a signal: 130
    for Ctrl-C, 143 for SIGTERM, 140 for SIGUSR2. It is not 0, so `launch ... && next-step` does not go on
    as if training had finished; it is not 1, so a script can tell a resumable stop from a failure.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def free_port() -> int:
    """A TCP port that is free on the loopback interface now (bind port 0), for this job's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_local(run_dir: Path, job: JobConfig, recorder: SignalRecorder | None = None) -> None:
    """Run the job on this machine; the manifest says "failed" or "interrupted" if it did not finish.

    A stop signal (Ctrl-C, SIGTERM, SIGUSR2) makes every rank save last.ckpt and stop; this raises `Stopped`.
    `recorder`: the stop signals this process recorded before the job started (one stops it at once).
    """
    recorder = recorder if recorder is not None else SignalRecorder()
    try:
        if job.trainer.devices == 1:
            signum = _run_in_process(run_dir, recorder)
        else:
            signum = _run_elastic(run_dir, job.trainer.devices, recorder.received)
    except BaseException as error:
        status = "interrupted" if isinstance(error, (KeyboardInterrupt, Interrupted)) else "failed"
        if rundir.read_manifest(run_dir).get("status") in ("running", "preempted"):
            rundir.update_manifest(run_dir, status=status)
        raise
    if signum is not None:
        raise _stopped(run_dir, signum)


def _stopped(run_dir: Path, signum: int) -> Stopped:
    """Count the stop in run.json and say how to resume."""
    manifest = rundir.read_manifest(run_dir)
    rundir.update_manifest(run_dir, preemption_count=int(manifest.get("preemption_count", 0)) + 1)
    step = manifest.get("last_committed_step")
    run_id = manifest.get("run_id", run_dir.name)
    return Stopped(
        f"stopped by {signal_name(signum)}: {run_dir / rundir.LAST_CKPT} committed at step {step}. "
        f"Resume with the same command and run.id={run_id}",
        signum,
    )


def _run_in_process(run_dir: Path, recorder: SignalRecorder) -> int | None:
    """One rank in this process; the stop signal that ended fit early, or None when it finished."""
    from launcher import rank_main

    ours = not recorder.installed
    if ours:
        recorder.install()
    try:
        outcome = rank_main.run(run_dir, in_launcher=True, recorder=recorder)
    finally:
        if ours:
            recorder.restore()
    return outcome.stop_signal if outcome.status == "preempted" else None


def _run_elastic(run_dir: Path, nproc: int, received: int | None = None) -> int | None:
    """N ranks under torch's elastic agent, in a thread; this (main) thread forwards stop signals to them.

    In a thread, the agent installs no signal handlers of its own (it does so only on the main thread):
    its handler would pass SIGTERM on and SIGKILL the ranks 30 s later, even while they write a checkpoint.
    `received`: a stop signal that came before the ranks started; they get it as soon as they can.
    Returns the stop signal when the ranks stopped early with last.ckpt committed, else None.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    forwarder = Forwarder(rank_pids, received)
    errors: list[BaseException] = []
    agent = threading.Thread(
        target=_agent_main, args=(run_dir, nproc, errors), name="elastic-agent", daemon=True
    )
    forwarder.install()
    try:
        agent.start()
        while agent.is_alive():
            agent.join(timeout=0.2)
            forwarder.follow_up()  # a signal that came while the agent was still starting the ranks
    finally:
        forwarder.restore()
    if forwarder.count > 1:
        raise Interrupted("stopped at once by a second stop signal; the previous last.ckpt is intact.")
    if errors and isinstance(errors[0], ChildFailedError):
        if forwarder.received is not None:
            raise Interrupted(
                f"stopped by {signal_name(forwarder.received)} before every rank could save; the previous "
                "last.ckpt is intact."
            )
        raise _failure_recorded_in(run_dir) or RankFailure(errors[0].format_msg()) from None
    if errors:
        raise errors[0]
    if forwarder.received is None or rundir.read_manifest(run_dir).get("status") != "preempted":
        return None
    return forwarder.received


def _failure_recorded_in(run_dir: Path) -> RunError | None:
    """The one-line failure a rank recorded in run.json (a checkpoint it could not write or resume)."""
    manifest = rundir.read_manifest(run_dir)
    code, error = manifest.get("exit_code"), manifest.get("error")
    if manifest.get("status") == "failed" and isinstance(code, int) and isinstance(error, str):
        return RunError(error, code)
    return None


def _agent_main(run_dir: Path, nproc: int, errors: list[BaseException]) -> None:
    try:
        _launch_ranks(run_dir, nproc)
    except BaseException as error:  # handed to the main thread, which reports it
        errors.append(error)


def _launch_ranks(run_dir: Path, nproc: int) -> None:
    """Start nproc ranks of `python -m launcher.rank_main RUN_DIR` under torch's elastic agent and wait."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # CPU ranks share the cores: one thread each avoids oversubscription (torchrun does the same).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_dir.name,
        # One node, no restarts: the static rendezvous (torchrun's default) is enough, and it skips the
        # dynamic one's random 0-0.3 s delay before the ranks start.
        rdzv_backend="static",
        rdzv_configs={"rank": 0},
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
    elastic_launch(config, sys.executable)("-m", "launcher.rank_main", str(run_dir))
