"""Checkpoint files: atomic commits on a background thread, verification, `weights_only` loads, hparams.

A checkpoint is a `torch.save`d dict in torch's zip format. `save_atomic` serialises it before it returns (the
caller may change its tensors at once): to memory when small, else to a temporary name beside the target. One
background committer thread then writes it out, fsyncs, checks it, renames it over the target and writes the
manifest, in save order; the fsync and the check are most of a small save's cost, and training does not need
them done to go on. A crash or failure at any point leaves the old file or the new one at the target, never a
torn one, and at most a temporary file (`.<name>.tmp-<pid>-<id>`) that resume ignores and the next commit to
that target deletes once its writer is gone. The directory is not fsynced after the rename: that matters only
on power loss, and then the name still points at the previous complete file, which `verify` accepts.

Retention deletes through the same queue (`remove(path, background=True)`): after the commits queued before,
and only if none failed, so an old file goes once its replacement is committed, without a wait for the fsync.
`load`, `verify`, `newest_verified` and `remove` wait for pending commits first; a failed commit is raised
there, at the next save or by `wait_for_pending()` (called at the end of every trainer stage and at exit) as a
`CheckpointError` naming the file. A save waits only while two commits to its path are pending (a bound on
temporary files: the queue already keeps the later save last). `save_atomic(..., sync=True)` commits at once.

The check is cheap on purpose: the size and the zip central directory, which lists every record's size and
the CRC-32 torch computed while writing. The manifest (`<name>.ckpt.json`) records the size and a SHA-256 of
that list, so `verify` detects a truncated, replaced or edited file without unpickling it; `verify(path,
deep=True)` also re-reads every record against its CRC-32.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import queue
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

import torch

from trainer_core.checkpoint_spool import Spool, discard, remove_stale_temporaries, temporary_path
from trainer_core.errors import CheckpointError
from trainer_core.plain_types import to_plain as to_plain  # hyperparameters in checkpoints

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".json"
_BACKLOG_PER_PATH = 2  # commits to one path that may be pending before the next save to it waits
_IN_MEMORY_LIMIT = 8 * 2**20  # a checkpoint up to this size is serialised to memory, a larger one to its file
_FIX = "Resume from another checkpoint (an earlier top-k file), or start without ckpt_path."


def save_atomic(state: Mapping[str, Any], path: str | os.PathLike[str], *, sync: bool = False) -> None:
    """Write `state` to `path` atomically: the previous file stays intact unless the new one is complete.

    The state is serialised before this returns; the commit (fsync, check, rename, manifest) follows on the
    background committer, or here with `sync=True`. A failed earlier commit is raised here first.
    """
    target = _key(path)
    # A sync commit must follow the queued ones to its path (the later save wins); an async save only keeps
    # the backlog (temporary files on disk) bounded. Either way an earlier commit's failure surfaces here.
    _committer.wait(target, below=1 if sync else _BACKLOG_PER_PATH)
    job = _write_temporary(state, target)
    if sync:
        _commit(job)
    else:
        _committer.submit(job)


def wait_for_pending() -> None:
    """Block until every checkpoint saved so far is committed; raise a failed commit as `CheckpointError`."""
    _committer.wait()


@dataclasses.dataclass
class _Commit:
    """A checkpoint serialised (to memory or its temporary file), waiting to be made durable and renamed."""

    target: Path
    spool: Spool
    position: dict[str, int]


@dataclasses.dataclass
class _Removal:
    """A checkpoint to delete once every commit queued before it has landed."""

    target: Path
    failures_before: int  # commit failures counted when it was queued: one more cancels the deletion


def _key(path: str | os.PathLike[str]) -> Path:
    """One spelling per file, so that waits for "ckpts/last.ckpt" and its absolute path are the same wait."""
    return Path(os.path.abspath(path))


def _write_temporary(state: Mapping[str, Any], target: Path) -> _Commit:
    temporary = temporary_path(target)
    spool = Spool(temporary, _IN_MEMORY_LIMIT)
    try:
        _serialize(state, spool)
        spool.flush()
        return _Commit(target, spool, _position(state))
    except BaseException as error:
        spool.close()
        discard(temporary)  # a second Ctrl-C mid-write: the previous file stays as it was
        if isinstance(error, OSError):
            raise CheckpointError(_write_failed_message(target, error)) from error
        raise


def _commit(job: _Commit) -> None:
    """Make the temporary file durable, check it and rename it over the target; then write the manifest."""
    try:
        job.spool.to_disk()
        digest = _check_written(job)
        _replace(job.spool.temporary, job.target)
    except Exception as error:
        discard(job.spool.temporary)
        raise _commit_error(job.target, error) from error
    except BaseException:
        discard(job.spool.temporary)
        raise
    _write_manifest(job.target, job.spool.size, digest, job.position)
    remove_stale_temporaries(job.target)


def _replace(temporary: Path, target: Path) -> None:
    """Rename `temporary` over `target`; the old manifest goes first, and comes back if the rename fails."""
    manifest = manifest_path(target)
    try:
        previous = manifest.read_bytes()
    except FileNotFoundError:
        previous = None
    # The old manifest describes the old file: drop it before the new file takes the name.
    _remove_quietly(manifest)
    try:
        os.replace(temporary, target)
    except BaseException:
        if previous is not None:
            with contextlib.suppress(OSError):
                manifest.write_bytes(previous)
        raise


def _commit_error(target: Path, error: BaseException) -> CheckpointError:
    if isinstance(error, CheckpointError):
        return error
    if isinstance(error, OSError):
        return CheckpointError(_write_failed_message(target, error))
    bad_zip = isinstance(error, zipfile.BadZipFile)
    what = "the written file does not read back as a torch.save archive" if bad_zip else "unexpected error"
    return CheckpointError(
        f"Could not commit checkpoint {str(target)!r}: {what} ({type(error).__name__}: {error}). The "
        "previous file at that path, if any, is unchanged. Check the file system (disk full, failing "
        "storage) or choose another dirpath."
    )


def _write_failed_message(target: Path, error: OSError) -> str:
    reason = os.strerror(error.errno) if error.errno else str(error)
    hint = (
        "The disk is full: free space or choose another dirpath"
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else "Check that the directory is writable and the file system healthy"
    )
    return (
        f"Could not write checkpoint {str(target)!r} ({reason}). The previous file at that path, if any, is "
        f"unchanged and no temporary file is left. {hint}."
    )


def _position(state: Mapping[str, Any]) -> dict[str, int]:
    """Where in training the checkpoint was written, so "newest" never depends on modification times."""
    loops = state.get("loops")
    total = loops.get("total_batches") if isinstance(loops, Mapping) else None
    position = {"global_step": state.get("global_step"), "epoch": state.get("epoch"), "total_batches": total}
    return {key: value for key, value in position.items() if isinstance(value, int)}


def _serialize(state: Mapping[str, Any], file: Spool) -> None:
    """The one place that turns the state into bytes (tests replace it to simulate a failing write)."""
    torch.save(dict(state), cast("IO[bytes]", file))


def _check_written(job: _Commit) -> str:
    on_disk = job.spool.temporary.stat().st_size
    if on_disk != job.spool.size:
        raise CheckpointError(
            f"Could not commit checkpoint {str(job.target)!r}: wrote {job.spool.size} bytes but the file "
            f"holds {on_disk}. The previous file at that path, if any, is unchanged. The disk may be full or "
            "the file system failing; free space or choose another dirpath."
        )
    return _records_digest(job.spool.temporary)


def _records_digest(path: Path) -> str:
    """SHA-256 over every zip record's name, size and CRC-32: reads only the central directory."""
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
    if not any(record.filename.endswith("data.pkl") for record in records):
        raise zipfile.BadZipFile("no data.pkl record: not a torch.save file")
    listing = "\n".join(f"{r.filename}:{r.file_size}:{r.CRC:08x}" for r in records)
    return hashlib.sha256(listing.encode()).hexdigest()


def _write_manifest(target: Path, size: int, digest: str, position: dict[str, int]) -> None:
    manifest = {
        "file": target.name,
        "size": size,
        "records_sha256": digest,
        "format": "torch-zip",
        **position,
        "committed_ns": time.time_ns(),
    }
    final = manifest_path(target)
    try:
        # Written in place, not via a temporary: a torn manifest only makes `verify` refuse this file, and
        # resume then falls back to the previous one; a second rename would lengthen every commit.
        final.write_text(json.dumps(manifest, indent=1) + "\n")
    except OSError as error:
        # The checkpoint itself is committed; without a manifest `verify` falls back to the zip structure.
        _remove_quietly(final)
        log.warning("Could not write the manifest %s: %s", final, error)


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """Where the manifest of the checkpoint at `path` lives: `<path>.json`."""
    target = Path(path)
    return target.with_name(target.name + MANIFEST_SUFFIX)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove(path: str | os.PathLike[str], *, background: bool = False) -> None:
    """Delete a checkpoint and its manifest (retention of top-k files); a missing file is not an error.

    Only once the files saved before are committed, and not if one failed (that failure is raised). With
    `background` the deletion is queued behind their commits and this returns at once, else it waits.
    """
    if background:
        _committer.submit_removal(_key(path))
        return
    _committer.wait()
    _delete(Path(path))


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint will be at `path` once the queued saves and deletions are done (no wait)."""
    queued = _committer.last_queued(_key(path))
    return os.path.exists(path) if queued is None else isinstance(queued, _Commit)


def _delete(target: Path) -> None:
    _remove_quietly(target)
    _remove_quietly(manifest_path(target))


def verify(path: str | os.PathLike[str], deep: bool = False) -> bool:
    """Whether `path` is a complete checkpoint: its size and record list match its manifest.

    Without a manifest, whether its zip structure is complete. `deep=True` also re-reads every record and
    checks its CRC-32 (a full read of the file, but no unpickling). Waits for a pending commit to `path`
    first, and raises a failed commit as `CheckpointError`.
    """
    target = Path(path)
    _committer.wait(_key(target))
    try:
        digest = _records_digest(target)
        manifest = _read_manifest(target)
        if manifest is not None and (
            manifest.get("size") != target.stat().st_size or manifest.get("records_sha256") != digest
        ):
            return False
        if deep:
            with zipfile.ZipFile(target) as archive:
                return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
    return True


def newest_verified(directory: str | os.PathLike[str], exclude: Sequence[str] = ()) -> Path | None:
    """The newest checkpoint (`*.ckpt`) in `directory` that verifies, or None.

    Newest by the training position its manifest records (global step, then batches, then commit time);
    files without a manifest count as oldest. Never by modification time, which copies and clock skew break.
    """
    _committer.wait()  # a commit in flight may be the newest file of the directory
    ranked: list[tuple[tuple[int, int, int], Path]] = []
    for candidate in Path(directory).glob("*.ckpt"):
        if candidate.name in exclude or not candidate.is_file():
            continue
        manifest = _read_manifest(candidate) or {}
        key = tuple(_as_int(manifest.get(k)) for k in ("global_step", "total_batches", "committed_ns"))
        ranked.append((key, candidate))  # type: ignore[arg-type]
    for _, candidate in sorted(ranked, key=lambda item: item[0], reverse=True):
        if verify(candidate):
            return candidate
    return None


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(manifest_path(target).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable manifest: matches nothing, so verify says False
    return manifest if isinstance(manifest, dict) else {}


def load(path: str | os.PathLike[str], map_location: Any = None) -> dict[str, Any]:
    """Read a checkpoint with `torch.load(weights_only=True)`; a `CheckpointError` names a bad file.

    Waits for a pending commit to `path` first, so a load right after a save sees the new file.
    """
    target = Path(path)
    _committer.wait(_key(target))
    if not target.is_file():
        what = "is a directory" if target.is_dir() else "does not exist"
        raise CheckpointError(f"Checkpoint {str(target)!r} {what}. Check the path. {_FIX}")
    try:
        state = torch.load(target, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(_unreadable_message(target, error)) from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"Checkpoint {str(target)!r} holds a {type(state).__name__}, not the dict of a trainer "
            f"checkpoint. Was it a torch.save of a bare model or tensor? {_FIX}"
        )
    return state


def _unreadable_message(target: Path, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "weights only load failed" in str(error).lower() or "weights_only" in str(error):
        return (
            f"Checkpoint {str(target)!r} holds objects that weights_only loading refuses ({reason[:200]}). "
            "It was not written by this trainer, or holds hyperparameters that are not plain types. If you "
            "trust the file, load it with torch.load(weights_only=False) and save it again with plain types."
        )
    return (
        f"Checkpoint {str(target)!r} is truncated or corrupt and cannot be read "
        f"({type(error).__name__}: {reason[:200]}). {_FIX}"
    )


class _Committer:
    """One background thread that commits saved checkpoints, and deletes retired ones, in queue order."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Commit | _Removal] = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._pending: Counter[Path] = Counter()  # targets with commits or removals queued or running
        self._last: dict[Path, _Commit | _Removal] = {}  # per pending target, the job queued last
        self._errors: list[CheckpointError] = []  # failures not yet raised to a caller
        self._failed_commits = 0  # so far: a removal skips when one failed after it was queued
        self._thread: threading.Thread | None = None

    def submit(self, job: _Commit | _Removal) -> None:
        """Queue `job`; it runs after every job queued before it."""
        with self._changed:
            self._pending[job.target] += 1
            self._last[job.target] = job
            if self._thread is None:
                # A daemon, so that an idle committer never holds up exit; the exit handler waits instead.
                self._thread = threading.Thread(target=self._run, name="checkpoint-committer", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def submit_removal(self, target: Path) -> None:
        """Queue the deletion of `target`; a failure already recorded is raised instead (the file stays)."""
        with self._changed:
            errors, self._errors = self._errors, []
            if not errors:
                self.submit(_Removal(target, self._failed_commits))  # the condition's lock is reentrant
        _raise(errors)

    def last_queued(self, target: Path) -> _Commit | _Removal | None:
        """The job queued last for `target` while any is pending, else None."""
        with self._changed:
            return self._last.get(target)

    def wait(self, target: Path | None = None, below: int = 1) -> None:
        """Until fewer than `below` jobs for `target` (None: for any file) are pending; raise failed ones."""
        if not self._pending and not self._errors:  # without the lock: a failure is recorded before its
            return  # job stops being pending, so an empty `_pending` read first means none is missed
        with self._changed:
            if target is None:
                self._changed.wait_for(lambda: sum(self._pending.values()) < below)
            else:
                self._changed.wait_for(lambda: self._pending[target] < below)
            errors, self._errors = self._errors, []
        _raise(errors)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            failure = self._remove(job) if isinstance(job, _Removal) else self._commit(job)
            with self._changed:
                if failure is not None:
                    log.error("%s", failure)
                    self._errors.append(failure)
                self._pending[job.target] -= 1
                if self._pending[job.target] <= 0:
                    del self._pending[job.target]
                    del self._last[job.target]
                self._changed.notify_all()

    def _commit(self, job: _Commit) -> CheckpointError | None:
        try:
            _commit(job)
        except BaseException as error:  # recorded, and the jobs queued after it still run
            with self._changed:
                self._failed_commits += 1
            return _commit_error(job.target, error)
        return None

    def _remove(self, job: _Removal) -> CheckpointError | None:
        if self._failed_commits > job.failures_before:
            log.warning("Kept %s: a checkpoint saved before its deletion failed to commit", job.target)
            return None
        try:
            _delete(job.target)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            return CheckpointError(
                f"Could not delete the old checkpoint {str(job.target)!r} ({reason}); the newer ones are "
                "committed. Check the directory's permissions, or delete the file yourself."
            )
        return None


def _raise(errors: list[CheckpointError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise CheckpointError(f"{len(errors)} checkpoint commits failed: " + " | ".join(map(str, errors)))


_committer = _Committer()


def _forget_parent_commits() -> None:
    """In a forked child (a DataLoader worker): the parent's commits are the parent's; start a fresh queue."""
    global _committer
    _committer = _Committer()


def _commit_before_exit() -> None:
    try:
        wait_for_pending()
    except CheckpointError as error:
        log.error("At exit: %s", error)


os.register_at_fork(after_in_child=_forget_parent_commits)
atexit.register(_commit_before_exit)
