"""The trainer core's error hierarchy: every error a user can cause names the key, the value and the fix."""

from __future__ import annotations


class TrainerCoreError(Exception):
    """Base class of every error the trainer core raises on purpose."""


class MisconfigurationError(TrainerCoreError, ValueError):
    """A setting, a hook's return value or a call's argument that cannot work as given."""


class CheckpointError(TrainerCoreError):
    """A checkpoint that is missing, truncated, corrupt or incompatible with the run."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only storage); the previous one stays committed.

    `message` may hold `{space}`, filled with the free space and the size needed when both are known.
    """

    def __init__(self, message: str, needed: int | None = None, free: int | None = None) -> None:
        space = ""
        if needed is not None and free is not None:
            space = f": {free / 2**20:.1f} MiB free, the checkpoint needs about {needed / 2**20:.1f} MiB"
        super().__init__(message.replace("{space}", space))
        self.needed, self.free = needed, free


class NoCheckpointToResume(CheckpointError):
    """Resume found no intact checkpoint: every candidate was missing, damaged or unreadable."""

    def __init__(self, message: str, tried: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.tried = tried  # (file, why it was skipped), newest first


class DistributedError(TrainerCoreError, RuntimeError):
    """The ranks of a job disagree (a skipped collective, a failed rank, a wrong rank layout)."""
