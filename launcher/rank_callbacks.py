"""Callbacks every rank adds for preemption and resume: the early signal hand-over, the world-size check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launcher.signals import SignalRecorder
from trainer_core.callbacks import Callback
from trainer_core.errors import CheckpointError
from trainer_core.state import LoopProgress

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer


class HandOverSignal(Callback):
    """At fit's setup: a stop signal that arrived before fit becomes the trainer's, so it stops at once.

    The trainer installs its own handlers when fit starts and forgets what came before; the rank's
    `SignalRecorder` caught it, and this passes it on.
    """

    def __init__(self, recorder: SignalRecorder) -> None:
        self.recorder = recorder

    def setup(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None:
        received = self.recorder.received
        if stage == "fit" and received is not None and trainer.preemption.received is None:
            trainer.preemption.received = received


class WorldSizeCheck(Callback):
    """Records the world size in every checkpoint; resume refuses a mid-epoch position from another one.

    At an epoch boundary a checkpoint resumes with any number of ranks (the next epoch's sampler splits the
    data anew). Inside an epoch, the position is a batch index into each rank's share of the epoch, which
    changes with the number of ranks: resuming there would skip or repeat samples, so it is an error.
    """

    def __init__(self) -> None:
        self.world_size: int | None = None

    @property
    def state_key(self) -> str:
        return "WorldSize"

    def setup(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None:
        self.world_size = trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size}

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: TrainingModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("world_size")
        if saved is None or saved == trainer.world_size:
            return
        progress = LoopProgress()
        progress.load_state_dict(dict(checkpoint.get("loops", {})))
        if progress.resumes_mid_epoch:
            raise CheckpointError(
                f"checkpoints/last.ckpt was written by {saved} rank(s) in the middle of epoch "
                f"{progress.epoch} (after {progress.epoch_batches} batches of each rank's share); this run "
                f"has {trainer.world_size} rank(s), and a position inside an epoch cannot be carried to "
                f"another number of ranks. Resume with {saved} rank(s) (trainer.devices x trainer.num_nodes "
                f"= {saved}), or start a new run (leave run.id out)."
            )
