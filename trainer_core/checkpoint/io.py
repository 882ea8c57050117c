"""The commit protocol: how a checkpoint gets from a save point to a committed file, off the training thread.

At a save point the training thread takes a snapshot of the state (`snapshot.py`: one memory copy into
reused host buffers) and queues it; that is all it pays. Two background threads then, in save order:

1. the serialising thread writes the snapshot with `torch.save` into a temporary file beside the target
   (`.<name>.tmp-<pid>-<id>`), taking its digest as the bytes go by (`digest.py`: the CRC-32s torch
   computes for tensor data, a SHA-256 of every other byte), with no second pass over the data; the
   snapshot's buffers are then free for the next save point;
2. the committing thread fsyncs the file and checks that it holds every byte written, gives every other name
   of the same save point (the top-k file and `last.ckpt` of one step are the same bytes) a hard link to it,
   or a copy where the file system has no links, renames it over the target and writes the manifest
   `<name>.ckpt.json` (size, digest, training position).

So one checkpoint is made durable while the next one is serialised. A crash at any point leaves at each name
either the old file or the new one, never a torn one, and at most a temporary file, which resume ignores and
the next commit to that name deletes once its writer is gone. The previous manifest is removed before the
rename, so a crash between the rename and the new manifest leaves a file without a manifest, which
`integrity.py` checks by its zip records instead.

Bounds: one snapshot in flight (the next save point waits only while the previous snapshot is still being
serialised, logged once with the time waited), so host memory holds one copy of the state; at most
`_COMMIT_BACKLOG` serialised files wait for their commit. Deletions (top-k retention) go through the same
queue, after the commits queued before them, and are skipped when one of those failed. A failure is recorded
and raised on the training thread at the next step boundary (`raise_failure`), the next save, a read, a
deletion or the end of the stage, as a `CheckpointWriteError` naming the file, and for a full disk the free
space and the size needed (checked at the save point too, with one `statvfs`).

Sharded formats (one file per rank) plug in as another `Job`: the writer runs its two stages in queue order;
the protocol (temporary name, fsync, digest, rename, manifest) stays this one.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, cast

import torch

from trainer_core.checkpoint.digest import DigestingFile
from trainer_core.checkpoint.snapshot import BufferPool, Snapshot, in_place, resolved
from trainer_core.errors import CheckpointError, CheckpointWriteError

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".json"
TEMPORARY_MARK = ".tmp-"  # `.<name>.tmp-<pid>-<id>`: resume ignores such files
FORMAT = "torch-zip"
_ARCHIVE_OVERHEAD = 64 << 10  # zip headers, the pickle and record alignment, beyond the tensor bytes
_COMMIT_BACKLOG = 2  # serialised jobs that may wait for their commit (each holds a temporary file)
_NO_LINKS = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def save(state: Mapping[str, Any], paths: Sequence[str | os.PathLike[str]], *, sync: bool = False) -> None:
    """Commit `state` under every name in `paths` (one serialisation; the others are links or copies).

    Returns once the state is snapshotted; the commit follows on the writer thread, or before this returns
    with `sync=True`. A failure of an earlier commit is raised here first.
    """
    targets = [key(path) for path in paths]
    if not targets:
        return
    if sync:
        _save_here(state, targets)
        return
    writer = _writer
    pool = writer.reserve_pool()
    try:
        started = time.perf_counter()
        snap = pool.take(state)
        writer.stats.snapshot_s += time.perf_counter() - started
        _check_free_space(targets[0], snap.tensor_bytes + _ARCHIVE_OVERHEAD)
    except BaseException:
        writer.release_pool(pool)
        raise
    writer.submit(_Save(targets, snap, pool, _position(state)))


def _save_here(state: Mapping[str, Any], targets: list[Path]) -> None:
    """The whole commit on the calling thread, after the saves queued before (the later save wins).

    No snapshot: the caller waits, so the live state cannot change meanwhile, and a second Ctrl-C stops the
    serialisation itself (the previous file stays, the temporary goes).
    """
    _writer.wait()  # raises an earlier failure before anything is written
    job = _Save(targets, in_place(state), None, _position(state))
    _check_free_space(job.target, job.snapshot.tensor_bytes + _ARCHIVE_OVERHEAD)
    try:
        job.prepare(None)
        job.run(None)
    except Exception as error:
        raise commit_error(job, error) from error


def save_atomic(state: Mapping[str, Any], path: str | os.PathLike[str], *, sync: bool = False) -> None:
    """`save(state, [path], sync=sync)`: one file."""
    save(state, [path], sync=sync)


def wait_for_pending() -> None:
    """Block until every checkpoint saved so far is committed; raise a failed commit as `CheckpointError`."""
    _writer.wait()


def failed() -> bool:
    """Whether a commit failure is recorded and not raised yet (the next step boundary raises it)."""
    return bool(_writer.errors)


def raise_failure() -> None:
    """Raise a commit failure the writer recorded since the last call; cheap when there is none."""
    if _writer.errors:
        _writer.wait(target=None, below=None)


@dataclasses.dataclass
class WriterStats:
    """Where the time of this process's background saves went (seconds, summed over saves)."""

    saves: int = 0  # committed
    snapshot_s: float = 0.0  # the training thread: copying the state into the snapshot buffers
    waits: int = 0  # save points that waited for the previous snapshot to be serialised
    waited_s: float = 0.0  # the training thread, in those waits
    serialise_s: float = 0.0  # the serialising thread: torch.save into the temporary file, with the digest
    commit_s: float = 0.0  # the committing thread: fsync, size check, links, rename, manifests


def statistics() -> WriterStats:
    """The counters of this process's checkpoint writer (background saves only)."""
    return _writer.stats


def prepare(tensors: Iterable[torch.Tensor]) -> None:
    """Allocate the next snapshot's buffers for tensors like these now, on a helper thread.

    Pinned host memory for a few GB of CUDA state takes about a second to allocate: called once training has
    its optimizer state, the first save point does not pay for it. Does nothing when buffers are ready.
    """
    _writer.prepare(list(tensors))


def set_snapshots_in_flight(count: int) -> None:
    """How many snapshots may wait for the writer at once (default 1): each holds a copy of the state."""
    if count < 1:
        raise ValueError(f"snapshots in flight must be at least 1, got {count}")
    _writer.pool_limit = count


def remove(path: str | os.PathLike[str], *, background: bool = False) -> None:
    """Delete a checkpoint and its manifest (retention of top-k files); a missing file is not an error.

    Only once the files saved before are committed, and not if one failed (that failure is raised). With
    `background` the deletion is queued behind their commits and this returns at once, else it waits.
    """
    if background:
        _writer.submit_removal(key(path))
        return
    _writer.wait()
    _delete(Path(path))


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint will be at `path` once the queued saves and deletions are done (no wait)."""
    queued = _writer.last_queued(key(path))
    return os.path.exists(path) if queued is None else isinstance(queued, _Save)


def wait_for(path: str | os.PathLike[str]) -> None:
    """Until no commit or deletion of `path` is pending; raises a recorded failure."""
    _writer.wait(key(path))


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """Where the manifest of the checkpoint at `path` lives: `<path>.json`."""
    target = Path(path)
    return target.with_name(target.name + MANIFEST_SUFFIX)


def key(path: str | os.PathLike[str]) -> Path:
    """One spelling per file, so that waits for "ckpts/last.ckpt" and its absolute path are the same wait."""
    return Path(os.path.abspath(path))


# -- jobs --------------------------------------------------------------------------------------------------
class Job(Protocol):
    """What the writer runs, in queue order: a commit (`writes`) or a deletion. Two stages: `prepare` on the
    serialising thread (what needs the snapshot; no name changes), then `run` on the committing thread
    (durability and names), so one checkpoint is made durable while the next one is serialised.

    A sharded checkpoint (a directory of per-rank files) is one more kind of job: its stages write the
    directory under a temporary name with the same steps (fsync, digests, rename, manifest).
    """

    writes: bool
    error: BaseException | None  # what `prepare` raised; `run` is then not called and this is recorded

    @property
    def targets(self) -> list[Path]:
        """The names this job changes; waits for them (and `exists`) see it until it is done."""
        ...

    @property
    def target(self) -> Path: ...

    def prepare(self, writer: Writer) -> None:
        """The first stage (serialise); raise on failure."""
        ...

    def run(self, writer: Writer) -> None:
        """The second stage, in queue order; raise on failure (the writer records it)."""
        ...


@dataclasses.dataclass(eq=False)
class _Save:
    """A snapshot to serialise once and commit under every name of its save point."""

    targets: list[Path]
    snapshot: Snapshot
    pool: BufferPool | None  # holds the snapshot, freed once serialised (None: the caller waits)
    position: dict[str, int]
    writes = True
    error: BaseException | None = None
    temporary: Path | None = None
    written: tuple[int, dict[str, Any]] = (0, {})  # bytes and digest of the temporary file

    @property
    def target(self) -> Path:
        return self.targets[0]

    def prepare(self, writer: Writer | None) -> None:
        """Serialise the snapshot into a temporary file beside the target, then free its buffers."""
        self.temporary = temporary_path(self.target)
        try:
            self.snapshot.ready()
            self.written = _write_temporary(self.snapshot.state, self.temporary)
        except BaseException:
            discard(self.temporary)
            raise
        finally:
            if self.pool is not None and writer is not None:
                writer.release_pool(self.pool)

    def run(self, writer: Writer | None) -> None:
        assert self.temporary is not None
        _commit(self, self.temporary)


@dataclasses.dataclass(eq=False)
class _Removal:
    """A checkpoint to delete once every commit queued before it has landed."""

    target: Path
    failures_before: int  # commit failures counted when it was queued: one more cancels the deletion
    writes = False
    error: BaseException | None = None

    @property
    def targets(self) -> list[Path]:
        return [self.target]

    def prepare(self, writer: Writer) -> None:
        return None

    def run(self, writer: Writer) -> None:
        if writer.failed_commits > self.failures_before:
            log.warning("Kept %s: a checkpoint saved before its deletion failed to commit", self.target)
            return
        _delete(self.target)


def _position(state: Mapping[str, Any]) -> dict[str, int]:
    """Where in training the checkpoint was written, so "newest" never depends on modification times."""
    loops = state.get("loops")
    total = loops.get("total_batches") if isinstance(loops, Mapping) else None
    position = {"global_step": state.get("global_step"), "epoch": state.get("epoch"), "total_batches": total}
    return {name: value for name, value in position.items() if isinstance(value, int)}


# -- the commit ----------------------------------------------------------------------------------------------
def _serialize(state: Mapping[str, Any], file: DigestingFile) -> None:
    """The one place that turns the state into bytes (tests replace it to simulate a failing write)."""
    torch.save(resolved(dict(state)), cast("IO[bytes]", file))


def _commit(job: _Save, temporary: Path) -> None:
    """Make the serialised temporary file durable and check it, link it to every other name, rename it over
    the target; then the manifests."""
    made: list[Path] = [temporary]
    try:
        _make_durable(temporary)
        size, digest = job.written
        _check_size(job.target, temporary, size)
        record = {"size": size, **digest, **job.position}
        for extra in job.targets[1:]:
            made.append(_second_name(temporary, extra))
            _replace(made[-1], extra)
            _write_manifest(extra, record)
        _replace(temporary, job.target)
    except BaseException:
        for path in made:
            discard(path)
        raise
    _write_manifest(job.target, record)
    for target in job.targets:
        remove_stale_temporaries(target)


def _write_temporary(state: Mapping[str, Any], temporary: Path) -> tuple[int, dict[str, Any]]:
    """Serialise `state` into `temporary` (no fsync yet): the bytes written and the manifest's digest."""
    try:
        file = open(temporary, "xb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:  # the first save to a directory
        temporary.parent.mkdir(parents=True, exist_ok=True)
        file = open(temporary, "xb")  # noqa: SIM115
    started = time.perf_counter()
    with file:
        digesting = DigestingFile(file)
        _serialize(state, digesting)
    entries = digesting.manifest_entries(temporary)
    _writer.stats.serialise_s += time.perf_counter() - started
    return digesting.size, entries


def _make_durable(path: Path) -> None:
    """fsync the file: its bytes are on disk before a name points at them."""
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _check_size(target: Path, temporary: Path, written: int) -> None:
    on_disk = temporary.stat().st_size
    if on_disk != written:
        raise CheckpointWriteError(
            f"Could not commit checkpoint {str(target)!r}: wrote {written} bytes but the file holds "
            f"{on_disk}. The previous file at that path, if any, is unchanged. The disk may be full or the "
            "file system failing; free space or choose another dirpath."
        )


def _second_name(temporary: Path, target: Path) -> Path:
    """Another temporary beside `target` holding the same bytes: a hard link, else a copy (fsynced)."""
    second = temporary_path(target)
    try:
        os.link(temporary, second)
        return second
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
    with open(temporary, "rb") as source, open(second, "xb") as copy:
        shutil.copyfileobj(source, copy, 16 << 20)
        copy.flush()
        os.fsync(copy.fileno())
    return second


def _replace(temporary: Path, target: Path) -> None:
    """Rename `temporary` over `target`; the old manifest goes first, and comes back if the rename fails."""
    manifest = manifest_path(target)
    try:
        previous = manifest.read_bytes()
    except FileNotFoundError:
        previous = None
    _remove_quietly(manifest)  # it describes the old file: gone before the new file takes the name
    try:
        os.replace(temporary, target)
    except BaseException:
        if previous is not None:
            with contextlib.suppress(OSError):
                manifest.write_bytes(previous)
        raise


def _write_manifest(target: Path, record: dict[str, Any]) -> None:
    manifest = {"file": target.name, "format": FORMAT, **record, "committed_ns": time.time_ns()}
    final = manifest_path(target)
    try:
        # Written in place, not via a temporary: a torn manifest only makes `verify` refuse this file, and
        # resume then falls back to the previous one; a second rename would lengthen every commit.
        final.write_text(json.dumps(manifest, indent=1) + "\n")
    except OSError as error:
        # The checkpoint itself is committed; without a manifest `verify` falls back to the zip records.
        _remove_quietly(final)
        log.warning("Could not write the manifest %s: %s", final, error)


def _delete(target: Path) -> None:
    _remove_quietly(target)
    _remove_quietly(manifest_path(target))


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- failures ------------------------------------------------------------------------------------------------
def _check_free_space(target: Path, needed: int) -> None:
    """Refuse a save point at once when the file system cannot hold the checkpoint (one `statvfs`)."""
    free = _free_bytes(target.parent)
    if free is not None and free < needed:
        raise CheckpointWriteError(_write_failed_message(target, OSError(errno.ENOSPC, "")), needed, free)


def _free_bytes(directory: Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system of `directory` (or its nearest parent)."""
    for candidate in (directory, *directory.parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def commit_error(job: Job, error: BaseException) -> CheckpointError:
    """What the user is told about a failed job: the file, the reason, what is left, the fix."""
    if isinstance(error, CheckpointError):
        return error
    if not job.writes:
        reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
        return CheckpointError(
            f"Could not delete the old checkpoint {str(job.target)!r} ({reason}); the newer ones are "
            "committed. Check the directory's permissions, or delete the file yourself."
        )
    if isinstance(error, OSError):
        needed = job.snapshot.tensor_bytes + _ARCHIVE_OVERHEAD if isinstance(job, _Save) else None
        free = _free_bytes(job.target.parent) if error.errno in (errno.ENOSPC, errno.EDQUOT) else None
        return CheckpointWriteError(_write_failed_message(job.target, error), needed, free)
    return CheckpointWriteError(
        f"Could not commit checkpoint {str(job.target)!r}: unexpected error ({type(error).__name__}: "
        f"{error}). The previous file at that path, if any, is unchanged. Check the file system (failing "
        "storage) or choose another dirpath."
    )


def _write_failed_message(target: Path, error: OSError) -> str:
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "Free space on that file system, or save checkpoints elsewhere (ModelCheckpoint(dirpath=...))"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "Make the directory writable, or save checkpoints elsewhere (ModelCheckpoint(dirpath=...))"
    else:
        fix = "Check that the directory exists and the file system is healthy"
    return (
        f"Could not write checkpoint {str(target)!r} ({reason}{{space}}). The previous file at that path, if "
        f"any, is unchanged and no temporary file is left. {fix}."
    )


# -- the writer thread ---------------------------------------------------------------------------------------
class Writer:
    """Two background threads that commit saved checkpoints, and delete retired ones, in queue order: one
    serialises (`Job.prepare`), the other makes durable and renames (`Job.run`), so that one checkpoint is
    fsynced while the next is serialised. At most `_COMMIT_BACKLOG` jobs wait between the two."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()  # to serialise
        self._commits: queue.SimpleQueue[Job] = queue.SimpleQueue()  # serialised, to make durable and name
        self._committing = 0  # jobs past their first stage and not done
        self._changed = threading.Condition()
        self._pending: Counter[Path] = Counter()  # names with commits or removals queued or running
        self._last: dict[Path, Job] = {}  # per pending name, the job queued last
        self._unfinished: set[int] = set()  # ids of jobs queued or running
        self.errors: list[CheckpointError] = []  # failures not yet raised to a caller
        self.failed_commits = 0  # so far: a removal skips when one failed after it was queued
        self._threads: list[threading.Thread] = []
        self._free_pools: list[BufferPool] = []
        self._pools_out = 0
        self.pool_limit = 1
        self._told_about_waiting = False
        self.stats = WriterStats()

    # -- snapshot buffers --
    def prepare(self, tensors: list[torch.Tensor]) -> None:
        with self._changed:
            if self._free_pools or self._pools_out:
                return  # buffers exist already (kept from an earlier save)
            pool = BufferPool()
            pool.reserve(tensors)
            self._free_pools.append(pool)

    def reserve_pool(self) -> BufferPool:
        """Buffers for the next snapshot; waits while `pool_limit` snapshots are still being serialised."""
        with self._changed:
            self._raise_recorded()
            if self._pools_out >= self.pool_limit:
                started = time.perf_counter()
                self._changed.wait_for(lambda: self._pools_out < self.pool_limit)
                self._note_wait(time.perf_counter() - started)
                self.stats.waits += 1
                self.stats.waited_s += time.perf_counter() - started
                self._raise_recorded()
            self._pools_out += 1
            return self._free_pools.pop() if self._free_pools else BufferPool()

    def release_pool(self, pool: BufferPool) -> None:
        with self._changed:
            self._pools_out -= 1
            self._free_pools.append(pool)
            self._changed.notify_all()

    def _note_wait(self, seconds: float) -> None:
        if not self._told_about_waiting:
            self._told_about_waiting = True
            log.info(
                "A save point waited %.2f s for the previous checkpoint to be written (one snapshot is in "
                "flight at a time); saving less often, or to faster storage, avoids the wait",
                seconds,
            )

    # -- queue --
    def submit(self, job: Job) -> None:
        """Queue `job`; it runs after every job queued before it."""
        with self._changed:
            for target in job.targets:
                self._pending[target] += 1
                self._last[target] = job
            self._unfinished.add(id(job))
            if not self._threads:
                # Daemons, so that an idle writer never holds up exit; the exit handler waits instead.
                for stage, name in ((self._serialise, "serialise"), (self._commit, "commit")):
                    self._threads.append(
                        threading.Thread(target=stage, name=f"checkpoint-{name}", daemon=True)
                    )
                    self._threads[-1].start()
        self._jobs.put(job)

    def submit_removal(self, target: Path) -> None:
        """Queue the deletion of `target`; a failure already recorded is raised instead (the file stays)."""
        with self._changed:
            self._raise_recorded()
            self.submit(_Removal(target, self.failed_commits))  # the condition's lock is reentrant

    def last_queued(self, target: Path) -> Job | None:
        """The job queued last for `target` while any is pending, else None."""
        with self._changed:
            return self._last.get(target)

    def wait(self, target: Path | None = None, below: int | None = 1, job: Any = None) -> None:
        """Until `job` is done, or fewer than `below` jobs for `target` (None: any file) are pending (None:
        no wait); then raise the recorded failures."""
        if not self._pending and not self.errors:  # without the lock: a failure is recorded before its
            return  # job stops being pending, so an empty `_pending` read first means none is missed
        with self._changed:
            if job is not None:
                self._changed.wait_for(lambda: id(job) not in self._unfinished)
            elif below is not None:
                limit = below
                self._changed.wait_for(lambda: self._pending_for(target) < limit)
            self._raise_recorded()

    def _pending_for(self, target: Path | None) -> int:
        return sum(self._pending.values()) if target is None else self._pending[target]

    def _raise_recorded(self) -> None:
        errors, self.errors = self.errors, []
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise type(errors[0])(f"{len(errors)} checkpoint commits failed: " + " | ".join(map(str, errors)))

    def _serialise(self) -> None:
        """The first stage of every job, in queue order; then the job goes to the committing thread."""
        while True:
            job = self._jobs.get()
            with self._changed:  # bounds the temporary files that wait for their commit
                self._changed.wait_for(lambda: self._committing < _COMMIT_BACKLOG)
                self._committing += 1
            try:
                job.prepare(self)
            except BaseException as error:  # recorded in queue order by the committing thread
                job.error = error
            self._commits.put(job)

    def _commit(self) -> None:
        """The second stage of every job, in queue order, and the bookkeeping that waits read."""
        while True:
            job = self._commits.get()
            failure = self._run_job(job)
            with self._changed:
                self._committing -= 1
                if failure is not None:
                    log.error("%s", failure)
                    self.errors.append(failure)
                for target in job.targets:
                    self._pending[target] -= 1
                    if self._pending[target] <= 0:
                        del self._pending[target]
                        del self._last[target]
                self._unfinished.discard(id(job))
                self._changed.notify_all()

    def _run_job(self, job: Job) -> CheckpointError | None:
        started = time.perf_counter()
        try:
            if job.error is not None:
                raise job.error
            job.run(self)
        except BaseException as error:  # recorded, and the jobs queued after it still run
            if job.writes:
                with self._changed:
                    self.failed_commits += 1
            return commit_error(job, error)
        if job.writes:
            self.stats.saves += 1
            self.stats.commit_s += time.perf_counter() - started
        return None


# -- temporary files -----------------------------------------------------------------------------------------
def temporary_path(target: Path) -> Path:
    """A fresh temporary name beside `target`, naming this process (see `remove_stale_temporaries`)."""
    return target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}-{os.urandom(4).hex()}")


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


_writer = Writer()


def _forget_parent_commits() -> None:
    """In a forked child (a DataLoader worker): the parent's commits are the parent's; start a fresh queue."""
    global _writer
    _writer = Writer()


def _commit_before_exit() -> None:
    try:
        wait_for_pending()
    except CheckpointError as error:
        log.error("At exit: %s", error)


os.register_at_fork(after_in_child=_forget_parent_commits)
atexit.register(_commit_before_exit)
