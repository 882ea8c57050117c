"""The callback every rank adds for preemption: a stop signal from before fit is handed to the trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.signals import SignalRecorder
from trainer_core.callbacks import Callback

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
