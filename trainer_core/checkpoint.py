"""Checkpoint files: atomic write and verification, `weights_only` loading, and plain-type hyperparameters.

A checkpoint is a `torch.save`d dict in torch's zip format. `save_atomic` writes it under a temporary name in
the target's directory, flushes and fsyncs it, checks it and renames it over the target, so a crash or a
failure at any point leaves either the old file or the new one, never a torn one. The directory is not
fsynced after the rename: that only matters when the machine itself loses power, and then the name still
points at the previous complete file, which `verify` accepts; it would double the cost of a small save.

The check is cheap on purpose (a save must cost about what `torch.save` costs): the file's size and the zip
central directory, which lists every record's size and the CRC-32 that torch computed while writing. A
manifest beside the checkpoint (`<name>.ckpt.json`) records the size and a SHA-256 of that list, so `verify`
later detects a truncated, replaced or edited file without unpickling it; `verify(path, deep=True)` also
re-reads every record against its CRC-32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import hashlib
import json
import logging
import os
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from trainer_core.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".json"
_FIX = "Resume from another checkpoint (an earlier top-k file), or start without ckpt_path."


def save_atomic(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write `state` to `path` atomically: the previous file stays intact unless the new one is complete."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "xb") as file:
            _serialize(state, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            written = file.tell()
        digest = _check_written(temporary, written)
        # The old manifest describes the old file: drop it before the new file takes the name.
        _remove_quietly(manifest_path(target))
        os.replace(temporary, target)
    except OSError as error:
        _remove_quietly(temporary)
        raise CheckpointError(_write_failed_message(target, error)) from error
    except BaseException:
        _remove_quietly(temporary)  # a second Ctrl-C mid-write: the previous file stays as it was
        raise
    _write_manifest(target, written, digest, _position(state))


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


def _serialize(state: Mapping[str, Any], file: IO[bytes]) -> None:
    """The one place that turns the state into bytes (tests replace it to simulate a failing write)."""
    torch.save(dict(state), file)


def _check_written(path: Path, written: int) -> str:
    on_disk = path.stat().st_size
    if on_disk != written:
        raise CheckpointError(
            f"Checkpoint {path}: wrote {written} bytes but the file holds {on_disk}. The disk may be full or "
            "the file system failing; free space or choose another dirpath."
        )
    return _records_digest(path)


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
        # resume then falls back to the previous one; a rename would cost as much as the whole small save.
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


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint and its manifest (retention of top-k files); a missing file is not an error."""
    _remove_quietly(Path(path))
    _remove_quietly(manifest_path(path))


def verify(path: str | os.PathLike[str], deep: bool = False) -> bool:
    """Whether `path` is a complete checkpoint: its size and record list match its manifest.

    Without a manifest, whether its zip structure is complete. `deep=True` also re-reads every record and
    checks its CRC-32 (a full read of the file, but no unpickling).
    """
    target = Path(path)
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
    """Read a checkpoint with `torch.load(weights_only=True)`; a `CheckpointError` names a bad file."""
    target = Path(path)
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


def to_plain(obj: Any) -> Any:
    """`obj` as types that `weights_only` loading accepts, for hyperparameters.

    Mappings and dataclasses become dicts, sequences and sets lists, paths strings, enums their value,
    numpy arrays and scalars lists and numbers; str/int/float/bool/None/bytes and tensors stay as they are;
    anything else becomes its `repr`.
    """
    if obj is None or isinstance(obj, str | int | float | bool | bytes | torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return {_plain_key(key): to_plain(value) for key, value in obj.items()}
    if isinstance(obj, Sequence):  # lists, tuples, and config containers such as omegaconf's ListConfig
        return [to_plain(item) for item in obj]
    if isinstance(obj, set | frozenset):
        return sorted((to_plain(item) for item in obj), key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: to_plain(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return to_plain(obj.tolist())  # a numpy array or scalar
    return repr(obj)


def _plain_key(key: Any) -> Any:
    return key if key is None or isinstance(key, str | int | float | bool) else str(key)
