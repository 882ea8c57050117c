"""Keeps a run's `run.json` current from inside the trainer: committed steps and the final status."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from launcher import rundir
from trainer_core.callbacks import Callback

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
        last_ckpt = self.run_dir / rundir.LAST_CKPT
        if last_ckpt.is_file():
            changes.setdefault("last_committed_step", self._committed_step(trainer))
        rundir.update_manifest(self.run_dir, **changes)

    @staticmethod
    def _committed_step(trainer: Trainer) -> int:
        """The step of the newest committed last.ckpt: checkpoints are saved at the end of an epoch, so at
        the start of the next one (or at the end of fit) the trainer's step is that of last.ckpt."""
        return int(trainer.global_step)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._record(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._record(trainer, status="completed")

    def on_exception(self, trainer: Trainer, pl_module: TrainingModule, exception: BaseException) -> None:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._record(trainer, status=status, error=f"{type(exception).__name__}: {exception}")
