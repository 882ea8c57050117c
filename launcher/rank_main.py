"""What every rank runs: read the run's config.yaml, log to logs/rank{r}.log, build the Trainer and fit.

Started as `python -m launcher.rank_main RUN_DIR` by the local backend (torch's elastic agent) or by `srun`,
or called in-process by `launch` for a one-rank job. Never runs Hydra: the config was composed once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from launcher import rundir
from launcher.config import JobConfig
from launcher.errors import FILE_ONLY, NotFileOnly, RunError
from launcher.signals import SignalRecorder, ignore_from_now, signal_name
from launcher.startup import collector_paused
from launcher.targets import instantiate
from launcher.validate import job_from_dict

log = logging.getLogger(__name__)


def global_rank() -> int:
    """This process's global rank, from torchrun-style or Slurm variables (0 in a one-process job)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup_logging(run_dir: Path, rank: int, console: bool) -> None:
    """Every rank logs to its own file; with `console`, also to stderr. Each line carries the rank."""
    log_file = run_dir / "logs" / f"rank{rank}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(f"[rank{rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(log_file)]
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].addFilter(NotFileOnly())
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def read_job(run_dir: Path) -> JobConfig:
    """The run's resolved config, validated again (the file may have been edited by hand)."""
    data: dict[str, Any] = yaml.safe_load((run_dir / rundir.CONFIG_FILE).read_text())
    return job_from_dict(data)


def build_callbacks(job: JobConfig, run_dir: Path) -> list[Any]:
    """ModelCheckpoint into run_dir/checkpoints (with last.ckpt), optional callbacks, the manifest keeper."""
    import trainer_core as tc
    from launcher.manifest_callback import RunManifestCallback

    callbacks: list[Any] = [RunManifestCallback(run_dir)]
    settings = job.callbacks
    if job.trainer.enable_checkpointing:
        checkpoint = dataclasses.asdict(settings.checkpoint)
        callbacks.append(
            tc.callbacks.ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, **checkpoint)
        )
    if settings.early_stopping.enabled:
        stopping = {k: v for k, v in dataclasses.asdict(settings.early_stopping).items() if k != "enabled"}
        callbacks.append(tc.callbacks.EarlyStopping(**stopping))
    if settings.lr_monitor:
        callbacks.append(tc.callbacks.LearningRateMonitor())
    if settings.device_stats:
        callbacks.append(tc.callbacks.DeviceStatsMonitor())
    return callbacks


def build_logger(job: JobConfig, run_dir: Path) -> Any:
    """The metric logger, writing under the run directory with a fixed version so a resume continues it."""
    import trainer_core as tc

    if job.logger.kind == "tensorboard":
        return tc.loggers.TensorBoardLogger(save_dir=str(run_dir), name="tb", version="")
    if job.logger.kind == "csv":
        return tc.loggers.CSVLogger(save_dir=str(run_dir), name="csv", version="")
    return False


@dataclasses.dataclass
class Outcome:
    """How `fit` ended on this rank: "finished", or "preempted" by `stop_signal` with last.ckpt committed."""

    status: str
    stop_signal: int | None  # the signal that stopped fit (None when it finished)
    global_step: int
    job: JobConfig


def run(run_dir: Path, in_launcher: bool = False, recorder: SignalRecorder | None = None) -> Outcome:
    """Train the run in run_dir on this rank, resuming from checkpoints/last.ckpt when it exists.

    `in_launcher`: called inside the `launch` process, whose console logging is already set up.
    `recorder`: the stop signals recorded since this process started; one that came before fit stops fit
    at its first step boundary.
    """
    rank = global_rank()
    setup_logging(run_dir, rank, console=rank == 0 and not in_launcher)
    job = read_job(run_dir)
    import trainer_core as tc
    from launcher.rank_callbacks import HandOverSignal

    tc.seed_everything(job.seed)
    model = instantiate(job.model)
    datamodule = instantiate(job.data)
    callbacks = build_callbacks(job, run_dir)
    if recorder is not None:
        callbacks.append(HandOverSignal(recorder))
    identity = rundir.training_identity(dataclasses.asdict(job))
    run_config = tc.RunConfig(
        config=identity,
        allow_config_change=job.run.allow_config_change,
        override_hint="add run.allow_config_change=true to the command",
    )
    trainer = tc.Trainer(
        **dataclasses.asdict(job.trainer),
        default_root_dir=str(run_dir),
        logger=build_logger(job, run_dir),
        callbacks=callbacks,
        plugins=[run_config],
    )
    from trainer_core.checkpoint.resume import has_checkpoints

    last_ckpt = run_dir / rundir.LAST_CKPT
    # Any checkpoint in the run's directory means a resume: from last.ckpt, or, when it is missing or
    # damaged, from the newest intact file beside it (trainer_core.checkpoint.resume).
    ckpt_path = str(last_ckpt) if has_checkpoints(last_ckpt.parent) else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    log.info("run directory: %s (world size %d)", run_dir, trainer.world_size)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except tc.CheckpointError as error:
        raise _checkpoint_failure(run_dir, error) from error
    status = trainer.state.status
    stop_signal = trainer.received_signal if status == "preempted" else None
    if status == "preempted" and trainer.is_global_zero:
        rundir.update_manifest(
            run_dir,
            status="preempted",
            stop_signal=signal_name(stop_signal),
            last_committed_step=int(trainer.global_step),
        )
    return Outcome(status, stop_signal, int(trainer.global_step), job)


def _checkpoint_failure(run_dir: Path, error: Exception) -> RunError:
    """A checkpoint that cannot be written or resumed, as the one line `launch` prints (run.json has it)."""
    from launcher.manifest_callback import told_failure

    told = told_failure(error, run_dir)
    assert told is not None  # a CheckpointError
    message, code = told
    debug = os.environ.get("LAUNCH_DEBUG") == "1"
    log.error("%s", message, exc_info=error if debug else None, extra=FILE_ONLY)
    return RunError(message, code)


def import_for_training() -> None:
    """Import what a rank needs before its first step, with the cyclic collector paused (launcher.startup).

    torch.optim imports torch._dynamo when the first optimizer is made: imported here, it costs less.
    """
    with collector_paused():
        import torch._dynamo
        import torch.distributed.elastic.multiprocessing.errors  # noqa: F401

        import trainer_core  # noqa: F401


def main() -> None:
    """Entry point of one rank: `python -m launcher.rank_main RUN_DIR`.

    A preempted rank exits with code 0: its part is done and last.ckpt is committed; `launch` reads the
    run's status from run.json.
    """
    import_for_training()
    from torch.distributed.elastic.multiprocessing.errors import record

    if len(sys.argv) != 2:
        sys.exit("usage: python -m launcher.rank_main RUN_DIR")
    # record() writes this rank's exception and traceback to the error file the elastic agent reads,
    # so `launch` can show which rank failed and why.
    try:
        record(run)(Path(sys.argv[1]).resolve(), recorder=_recorder)
    except RunError as error:  # told in one line (run.json and the rank's log): no traceback on the console
        ignore_from_now()
        with contextlib.suppress(Exception):
            flush_finished_work()
        os._exit(error.code)
    ignore_from_now()  # a signal that comes while the finished rank exits must not fail it
    _exit_finished_rank()


def _exit_finished_rank() -> None:
    """End a rank whose run finished, without the interpreter's teardown.

    torch's Gloo teardown at interpreter exit now and then aborts ("terminate called without an active
    exception") after a run that finished, which would report a finished job as failed. Everything the rank
    wrote is flushed first: pending checkpoint commits, log handlers, the standard streams.
    """
    flush_finished_work()
    os._exit(0)


def flush_finished_work() -> None:
    """Before a process ends with `os._exit`: pending checkpoint commits done, logs and streams flushed."""
    from trainer_core import checkpoint

    checkpoint.wait_for_pending()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()


# Installed on import, before torch loads: a stop signal sent to a rank that is still starting is recorded,
# not fatal (SIGUSR2's and SIGTERM's default action ends the process).
_recorder = SignalRecorder().install() if __name__ == "__main__" else None

if __name__ == "__main__":
    main()
