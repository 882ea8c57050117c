"""The job process of a local run: started first thing by `launch`, it imports torch while Hydra composes.

Importing torch and the trainer core takes about two seconds; composing the config takes about half a
second. Done one after the other, they add up before the first training step. So `launch` (one local run,
not a sweep, not Slurm) forks this process at once (before it has imported anything heavy, and before any
thread exists) and composes the config meanwhile, on another core. Then, over a pipe:

1. `{"check": job}`: the launcher asks the job process to import the model and data classes and check their
   arguments (`launcher.preflight.check_targets`). The launcher itself never imports them, and so never
   imports torch; the answer is `{"ok": true}` or `{"error": message}`, and an error ends `launch` with
   code 2 before any run directory is written.
2. `{"run": run_dir}`: the run directory holds `config.yaml` and `run.json`; the job process runs the job
   exactly as `launch` would (`launcher.local.run_local`: one rank in this process, or N ranks under torch's
   elastic agent), prints the outcome as `launch` does, and exits with `launch`'s exit code.

The job process leads its own session, so a terminal's Ctrl-C reaches only `launch`, which passes every stop
signal on (`WarmJob.run`); the first one makes the job save last.ckpt and stop, a second one stops it at
once, as without this process. It ends when `launch` ends: by end of file on its pipe before the run, by a
SIGKILL from `launch` (`WarmJob.cancel`) when the config is refused, and by a SIGTERM from the kernel (a
clean, resumable stop) if `launch` dies while the job runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import IO, Any

from launcher.errors import ConfigError, LaunchError, exit_code_for
from launcher.signals import STOP_SIGNALS, SignalRecorder
from launcher.startup import collector_paused

log = logging.getLogger("launcher")

# Arguments after which `launch` composes no single local run: nothing to warm up for.
_NO_WARM_START = {
    "-m", "--multirun", "-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info",
    "--version", "-sc", "--shell-completion",
}  # fmt: skip


def applies(argv: list[str]) -> bool:
    """Whether `launch ARGV` is (most likely) one local run, worth a job process started now.

    Only a guess from the command line: `launch` decides once the config is composed, and cancels a job
    process that it does not need (a sweep set in a config file, a cluster chosen by an experiment).
    """
    for argument in argv:
        if argument in _NO_WARM_START or argument.lstrip("+~").startswith(("cluster=", "hydra.mode=")):
            return False
    return os.environ.get("LAUNCH_WARM_START", "1") != "0"


class WarmJob:
    """The launcher's handle on the job process: ask it to check targets, hand it the run, or cancel it."""

    def __init__(self, pid: int, requests: IO[str], replies: IO[str]) -> None:
        self.pid = pid
        self._requests = requests
        self._replies = replies
        self._exit_code: int | None = None

    @classmethod
    def start(cls) -> WarmJob:
        """Fork the job process, in its own session; it begins importing torch at once.

        A fork, not a new interpreter: `launch` has imported next to nothing yet and runs no thread, and the
        job process starts its imports without paying for the interpreter's start a second time.
        """
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the job process: it never returns from here
            os.close(requests_write)
            os.close(replies_read)
            code = 1
            try:
                os.setsid()
                code = _job_process(os.fdopen(requests_read, "r"), os.fdopen(replies_write, "w"))
            except BaseException:  # the job process ends here, whatever happens: never back in `launch`
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(requests_read)
        os.close(replies_write)
        return cls(pid, os.fdopen(requests_write, "w"), os.fdopen(replies_read, "r"))

    def check_targets(self, job: Any) -> None:
        """`preflight.check_targets(job)` in the job process; a ConfigError here when it refuses."""
        import dataclasses

        reply = self._ask({"check": dataclasses.asdict(job)})
        if "error" in reply:
            raise ConfigError(reply["error"])
        if "failure" in reply:
            raise LaunchError(f"importing the model and data classes failed:\n{reply['failure']}")

    def run(self, run_dir: Path) -> int:
        """Hand over the run and wait for it, passing stop signals on; the job process's exit code."""
        previous = {number: signal.signal(number, self._pass_on) for number in STOP_SIGNALS}
        try:
            self._send({"run": str(run_dir)})
            return self._wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def cancel(self) -> None:
        """End the job process now if it still runs (its session: anything it started goes too)."""
        if self._exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._wait()
        self._requests.close()
        self._replies.close()

    def _wait(self) -> int:
        """The job process's exit code once it ended; 128 + the signal's number if a signal ended it."""
        if self._exit_code is None:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            self._exit_code = code if code >= 0 else 128 - code
        return self._exit_code

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._requests.write(json.dumps(message) + "\n")
            self._requests.flush()
        except BrokenPipeError:
            raise self._died() from None

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self._send(message)
        line = self._replies.readline()
        if not line:
            raise self._died()
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _died(self) -> LaunchError:
        return LaunchError(
            f"the job process exited with code {self._wait()} before the job started; its error is printed "
            f"above. Check that torch imports in this environment: {sys.executable} -c 'import torch'."
        )


# -- the job process -----------------------------------------------------------------------------------------
def _end_with_launcher() -> None:
    """Get SIGTERM (a clean stop: save last.ckpt) if `launch` dies; Linux only, elsewhere a no-op."""
    launcher_pid = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != launcher_pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _read(requests: IO[str]) -> dict[str, Any] | None:
    """The next request from `launch`; None at end of file (launch ended without a run)."""
    line = requests.readline()
    if not line:
        return None
    message: dict[str, Any] = json.loads(line)
    return message


def _check(job_dict: dict[str, Any]) -> dict[str, Any]:
    from launcher.preflight import check_targets
    from launcher.validate import job_from_dict

    try:
        check_targets(job_from_dict(job_dict))
    except ConfigError as error:
        return {"error": str(error)}
    except Exception:  # the user's module failed while it was imported: its traceback, as `launch` shows it
        return {"failure": traceback.format_exc()}
    return {"ok": True}


def _prefetch(job: dict[str, Any]) -> None:
    """Import what the job needs before its first step, in this process.

    One rank runs here: the optimizer's torch._dynamo (torch.optim imports it on first use) and the
    logger's writer. N ranks: only the elastic agent runs here, and every rank imports its own.
    """
    if job.get("trainer", {}).get("devices") != 1:
        import torch.distributed.launcher.api

        return
    import torch._dynamo

    if job.get("logger", {}).get("kind") == "tensorboard":
        import torch.utils.tensorboard  # noqa: F401


def _run(run_dir: Path, recorder: SignalRecorder) -> int:
    """Run the job in run_dir as `launch` would; its exit code, after printing what `launch` prints."""
    from launcher.local import run_local
    from launcher.rank_main import read_job

    try:
        run_local(run_dir, read_job(run_dir), recorder=recorder)
    except (LaunchError, KeyboardInterrupt) as error:
        return exit_code_for(error)
    log.info("done: %s", run_dir)
    return 0


def _job_process(requests: IO[str], replies: IO[str]) -> int:
    """The job process after the fork: warm up, answer the target check, run the job; its exit code."""
    recorder = SignalRecorder().install()  # first: a stop signal passed on by `launch` is recorded, not fatal
    _end_with_launcher()
    with collector_paused():
        import torch  # noqa: F401  (the warm-up: what every run needs first, while `launch` composes)

        import launcher.rank_main
        import trainer_core  # noqa: F401

        request = _read(requests)
        if request is None:
            return 0
        replies.write(json.dumps(_check(request["check"])) + "\n")
        replies.flush()
        _prefetch(request["check"])  # while `launch` writes the run directory
    request = _read(requests)
    if request is None:
        return 0
    code = _run(Path(request["run"]), recorder)
    # As a finished rank does: the caller ends the process with os._exit, without the interpreter's teardown
    # (Gloo's sometimes aborts).
    launcher.rank_main.flush_finished_work()
    return code
