"""A checkpoint's temporary file: where `torch.save` writes (memory up to a bound, then the file), its name,
and the clean-up of temporary files whose writer is gone."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import IO, Any

TEMPORARY_MARK = ".tmp-"  # `.<name>.tmp-<pid>-<id>`: resume ignores such files


def temporary_path(target: Path) -> Path:
    """A fresh temporary name beside `target`, naming this process (see `remove_stale_temporaries`)."""
    return target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}-{os.urandom(4).hex()}")


class Spool:
    """Where `torch.save` writes: memory up to `limit` bytes (the caller then makes no system call, a fifth of
    a small save; the committer writes it out), past it the temporary file (memory never holds it twice)."""

    def __init__(self, temporary: Path, limit: int) -> None:
        self.temporary = temporary
        self.size = 0
        self._limit = limit
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None

    def write(self, data: Any) -> int:
        # torch's writer passes byte memoryviews (a hundred per small save, so no new memoryview each time)
        size = data.nbytes if type(data) is memoryview else memoryview(data).nbytes
        if self._memory is not None and self.size + size <= self._limit:
            written = self._memory.write(data)
        else:
            written = (self._file or self._spill()).write(data)
        self.size += size
        return written

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def to_disk(self) -> None:
        """Every byte in the temporary file, fsynced, and the file closed."""
        file = self._file or self._spill()
        try:
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        finally:
            self.close()

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()

    def _spill(self) -> IO[bytes]:
        try:
            self._file = open(self.temporary, "xb")  # noqa: SIM115 (closed by to_disk or close)
        except FileNotFoundError:  # the first save to a directory: made here, off the caller for small saves
            self.temporary.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.temporary, "xb")  # noqa: SIM115
        if self._memory is not None:
            with self._memory.getbuffer() as written_so_far:
                self._file.write(written_so_far)
            self._memory = None
        return self._file


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files of `target` whose writer is gone (a crash or kill -9 mid-save left them)."""
    prefix = f".{target.name}{TEMPORARY_MARK}"
    try:
        with os.scandir(target.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except OSError:
        return  # the checkpoint is committed; a leftover temporary only costs disk space
    for name in names:
        if _writer_gone(name[len(prefix) :]):
            discard(target.with_name(name))


def _writer_gone(suffix: str) -> bool:
    """Whether the process named in a temporary file's `<pid>-<id>` suffix no longer runs on this host."""
    pid_text = suffix.partition("-")[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False  # ours (another save may be writing it) or not a name we made: leave it
    try:
        os.kill(int(pid_text), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, under another user
    return False


def discard(path: Path) -> None:
    """Delete a temporary file, ignoring errors: one already gone (another process cleaned it up) is fine,
    and while a failure is being handled a second error must not hide the first."""
    with contextlib.suppress(OSError):
        path.unlink()
