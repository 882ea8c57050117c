"""The trainer core: what every rank of a job runs, with the LightningModule contract users already know.

`import trainer_core as tc`, then `tc.TrainingModule`, `tc.DataModule`, `tc.Trainer`, `tc.seed_everything`,
`tc.rank_zero_only`, `tc.callbacks.*` and `tc.loggers.*`. It imports neither hydra, omegaconf, the launcher
nor the Slurm package: a plain script under `torchrun` or `srun` can use it on its own.
"""

from __future__ import annotations

from trainer_core import callbacks, loggers
from trainer_core.datamodule import DataModule
from trainer_core.errors import CheckpointError, DistributedError, MisconfigurationError, TrainerCoreError
from trainer_core.module import TrainingModule
from trainer_core.preemption import PreemptionSignals, RunConfig
from trainer_core.rank_zero import rank_zero_only
from trainer_core.seed import seed_everything
from trainer_core.trainer import Trainer

__all__ = [
    "CheckpointError",
    "DataModule",
    "DistributedError",
    "MisconfigurationError",
    "PreemptionSignals",
    "RunConfig",
    "Trainer",
    "TrainerCoreError",
    "TrainingModule",
    "callbacks",
    "loggers",
    "rank_zero_only",
    "seed_everything",
]
