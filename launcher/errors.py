"""The launcher's error hierarchy: what `launch` reports to the user, and with which exit code."""

from __future__ import annotations


class LaunchError(Exception):
    """A job that could not be started or that failed; `launch` exits with code 1.

    A subclass whose `exit_code` is set is not a failure but an outcome with its own code (a job stopped
    by a signal), and its message is printed without "error:".
    """

    exit_code: int | None = None


class ConfigError(LaunchError, ValueError):
    """A config that cannot work as given; raised before anything starts. `launch` exits with code 2.

    The message names the key, the value and the fix.
    """


CONFIG_ERROR_EXIT_CODE = 2


class RunError(LaunchError):
    """A run that stopped for a reason the user can act on, told in one line, with its own exit code: 2 for a
    refused resume (no intact checkpoint, another config), 1 for a checkpoint that could not be written.

    The traceback is in the rank's log with `LAUNCH_DEBUG=1`; `launch` shows only the line.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


FILE_ONLY = {"file_only": True}  # `log.error(..., extra=FILE_ONLY)`: for the log file, not the console


class NotFileOnly:
    """A console handler's filter: records marked `FILE_ONLY` are errors that `launch` prints itself."""

    def filter(self, record: object) -> bool:
        return not getattr(record, "file_only", False)


def exit_code_for(error: LaunchError | KeyboardInterrupt) -> int:
    """Print what `launch` says about the error that ends it (on stderr) and return its exit code.

    A config error exits with 2, a failed job with 1, a Ctrl-C that stopped the job at once with 130; a
    clean, resumable stop (`launcher.local.Stopped`) with its own code, 128 + the signal's number.
    """
    import sys

    if isinstance(error, KeyboardInterrupt):
        message, code = "error: interrupted", 130
    elif isinstance(error, ConfigError):
        message, code = f"error: {error}", CONFIG_ERROR_EXIT_CODE
    elif isinstance(error, RunError):
        message, code = f"error: {error}", error.code
    elif error.exit_code is not None:
        message, code = str(error), error.exit_code
    else:
        message, code = f"error: {error}", 1
    print(f"launch: {message}", file=sys.stderr)
    return code
