"""The Slurm side's error hierarchy: every error names the key, the value and the fix."""

from __future__ import annotations


class SlurmError(Exception):
    """Base class of every error the Slurm side raises on purpose."""


class SlurmConfigError(SlurmError, ValueError):
    """A `cluster.*` setting that cannot work as given (found without asking the cluster)."""


class SlurmPreflightError(SlurmError):
    """A request the cluster cannot serve (unknown partition, too many nodes, CPUs or GPUs, too long)."""


class SlurmCommandError(SlurmError, RuntimeError):
    """A Slurm command (sinfo, scontrol) that is missing, failed or answered something unreadable."""
