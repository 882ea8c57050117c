"""Keeps a run's `run.json` current from inside the trainer: committed steps and the final status."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import rundir
from launcher.errors import CONFIG_ERROR_EXIT_CODE
from trainer_core.callbacks import Callback
from trainer_core.checkpoint import io as checkpoint_io
from trainer_core.errors import CheckpointError, CheckpointWriteError, NoCheckpointToResume

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer


class RunManifestCallback(Callback):
    """Global rank zero records the last committed checkpoint step and the run's status in run.json."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _record(self, trainer: Trainer, **changes: object) -> None:
        if not trainer.is_global_zero:
            return
        # Checkpoints are committed in the background: by the next epoch start (or the end of fit) the
        # last save has long landed, so this wait costs nothing in practice and makes the step true.
        if changes.get("status") == "failed":
            with contextlib.suppress(CheckpointError):  # a failure is being reported already
                checkpoint_io.wait_for_pending()
        else:
            checkpoint_io.wait_for_pending()
        step = self._committed_step(self.run_dir / rundir.LAST_CKPT)
        if step is not None:
            changes.setdefault("last_committed_step", step)
        rundir.update_manifest(self.run_dir, **changes)

    @staticmethod
    def _committed_step(last_ckpt: Path) -> int | None:
        """The step of the committed last.ckpt, from its manifest (None when there is none yet)."""
        try:
            return int(json.loads(checkpoint_io.manifest_path(last_ckpt).read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._record(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._record(trainer, status="completed")

    def on_exception(self, trainer: Trainer, pl_module: TrainingModule, exception: BaseException) -> None:
        told = told_failure(exception, self.run_dir)
        if told is not None:
            message, code = told
            self._record(trainer, status="failed", error=message, exit_code=code)
            return
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._record(trainer, status=status, error=f"{type(exception).__name__}: {exception}")


def told_failure(error: BaseException, run_dir: Path) -> tuple[str, int] | None:
    """A failure `launch` reports in one line, and its exit code: a checkpoint that cannot be written (1), or
    a resume that is refused (2: no intact checkpoint, another config); None for any other error."""
    if not isinstance(error, CheckpointError):
        return None
    message = str(error)
    if isinstance(error, NoCheckpointToResume):
        run_id = rundir.read_manifest(run_dir).get("run_id", run_dir.name)
        message += (
            f". Start this run afresh with run.id={run_id} run.resume=never (its checkpoints are set aside, "
            "not deleted), or resume another run with run.id=<its id>"
        )
    return message, 1 if isinstance(error, CheckpointWriteError) else CONFIG_ERROR_EXIT_CODE
