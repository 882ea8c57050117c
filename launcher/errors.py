"""The launcher's error hierarchy: what `launch` reports to the user, and with which exit code."""

from __future__ import annotations


class LaunchError(Exception):
    """A job that could not be started or that failed; `launch` exits with code 1."""


class ConfigError(LaunchError, ValueError):
    """A config that cannot work as given; raised before anything starts. `launch` exits with code 2.

    The message names the key, the value and the fix.
    """
