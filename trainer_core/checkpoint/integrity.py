"""Whether a checkpoint file is intact, and reading it with `torch.load(weights_only=True)`.

A file committed here has a manifest (`<name>.ckpt.json`) with its size and a digest of every byte, taken
while it was written (`digest.py`: the CRC-32 torch's zip writer computed for each tensor's data and a
SHA-256 of every other byte). `check` compares both in one read before anything is unpickled, so a flipped
bit anywhere in the file is a named rejection. Older manifests of this project recorded a digest of the zip
record list (names, sizes and CRC-32s); for those, and for files without a manifest (written by Lightning or
by hand), every zip record is read back against the CRC-32 torch stored, which also finds a flipped bit in
tensor data.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainer_core.checkpoint import digest, io
from trainer_core.errors import CheckpointError

_FIX = "Resume from another checkpoint (an earlier top-k file), or start without ckpt_path."


def check(path: str | os.PathLike[str]) -> str | None:
    """None when `path` is intact, else why not, in a few words ("missing", "content digest mismatch"...).

    Waits for a pending commit to `path` first, and raises a failed commit as `CheckpointError`.
    """
    target = Path(path)
    io.wait_for(target)
    if not target.is_file():
        return "a directory" if target.is_dir() else "missing"
    manifest = read_manifest(target)
    try:
        size = target.stat().st_size
        if manifest is None:
            return _zip_problem(target)
        if not manifest:
            return "its manifest is unreadable"
        if manifest.get("size") != size:
            return f"size {size} bytes, its manifest says {manifest.get('size')}"
        if "sha256" in manifest:
            return None if digest.matches(target, manifest) else "content digest mismatch"
        if manifest.get("records_sha256") != _records_digest(target):
            return "zip records differ from its manifest"
        return _zip_problem(target)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        return f"unreadable ({type(error).__name__}: {error})"


def verify(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a complete, unchanged checkpoint (`check` found nothing wrong)."""
    return check(path) is None


def _records_digest(path: Path) -> str:
    """SHA-256 over every zip record's name, size and CRC-32 (the manifests of earlier versions)."""
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
    listing = "\n".join(f"{r.filename}:{r.file_size}:{r.CRC:08x}" for r in records)
    return hashlib.sha256(listing.encode()).hexdigest()


def _zip_problem(path: Path) -> str | None:
    """What is wrong with a file's zip structure or any record's CRC-32 (a full read), or None."""
    with zipfile.ZipFile(path) as archive:
        if not any(record.filename.endswith("data.pkl") for record in archive.infolist()):
            return "not a torch.save archive (no data.pkl record)"
        bad = archive.testzip()
    return f"record {bad} fails its CRC-32" if bad is not None else None


def read_manifest(target: Path) -> dict[str, Any] | None:
    """The manifest of `target`: None when there is none, {} when it cannot be read."""
    try:
        manifest = json.loads(io.manifest_path(target).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def load(path: str | os.PathLike[str], map_location: Any = None) -> dict[str, Any]:
    """Read a checkpoint with `torch.load(weights_only=True)`; a `CheckpointError` names a bad file.

    Waits for a pending commit to `path` first, so a load right after a save sees the new file. The digest is
    not checked here (`check` does that for resume): this reads files of any origin.
    """
    target = Path(path)
    io.wait_for(target)
    if not target.is_file():
        what = "is a directory" if target.is_dir() else "does not exist"
        raise CheckpointError(f"Checkpoint {str(target)!r} {what}. Check the path. {_FIX}")
    try:
        state = torch.load(target, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(unreadable_message(target, error)) from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"Checkpoint {str(target)!r} holds a {type(state).__name__}, not the dict of a trainer "
            f"checkpoint. Was it a torch.save of a bare model or tensor? {_FIX}"
        )
    return state


def unreadable_message(target: Path, error: Exception) -> str:
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


def position(target: Path) -> tuple[int, int, int]:
    """Where in training `target` was written, from its manifest (global step, batches, commit time);
    (-1, -1, -1) without one, so such files count as oldest."""
    manifest = read_manifest(target) or {}
    return tuple(_as_int(manifest.get(k)) for k in ("global_step", "total_batches", "committed_ns"))  # type: ignore[return-value]


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
