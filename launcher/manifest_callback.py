"""Keeps a run's `run.json` current from inside the trainer: committed steps and the final status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import rundir
from trainer_core.callbacks import Callback
from trainer_core.checkpoint import io as checkpoint_io

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
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._record(trainer, status=status, error=f"{type(exception).__name__}: {exception}")
