"""The trainer core's error hierarchy: every error a user can cause names the key, the value and the fix."""

from __future__ import annotations


class TrainerCoreError(Exception):
    """Base class of every error the trainer core raises on purpose."""


class MisconfigurationError(TrainerCoreError, ValueError):
    """A setting, a hook's return value or a call's argument that cannot work as given."""


class CheckpointError(TrainerCoreError):
    """A checkpoint that is missing, truncated, corrupt or incompatible with the run."""


class DistributedError(TrainerCoreError, RuntimeError):
    """The ranks of a job disagree (a skipped collective, a failed rank, a wrong rank layout)."""
