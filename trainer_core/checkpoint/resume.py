"""Which checkpoint a resume reads: the newest intact one, never a damaged one, and say which.

Asked for `last.ckpt` (a requeued job, `ckpt_path="last"`, the launcher's resume), every checkpoint in its
directory is a candidate: `last.ckpt` first (the newest committed state by construction), then the others
newest first by the training position their manifests record (global step, then batches, then commit time;
files without a manifest last). A candidate that
is missing, fails its digest, does not unpickle, or (to resume training) holds weights only is skipped with
one warning naming it and the reason; the first good one is used and named. Only when none is good does the
resume fail, with `NoCheckpointToResume` naming every file tried. A file named explicitly (any other name)
is read as it is or refused: no other file silently stands in for it.

With several ranks, global rank zero picks (it alone reads the digests) and every rank loads its choice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from trainer_core.checkpoint import integrity, io
from trainer_core.collectives import Collectives
from trainer_core.errors import CheckpointError, NoCheckpointToResume

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"
SUFFIX = ".ckpt"


def has_checkpoints(directory: str | os.PathLike[str]) -> bool:
    """Whether `directory` holds any checkpoint (or a manifest left by one), so a resume has work to do."""
    try:
        with os.scandir(directory) as entries:
            return any(
                not entry.name.startswith(".") and entry.name.endswith((SUFFIX, SUFFIX + io.MANIFEST_SUFFIX))
                for entry in entries
            )
    except OSError:
        return False


def candidates(directory: Path) -> list[Path]:
    """The checkpoints in `directory`: `last.ckpt` (listed even when missing), then the rest newest first."""
    io.wait_for_pending()  # a commit in flight may be the newest file of the directory
    files = {p for p in directory.glob(f"*{SUFFIX}") if not p.name.startswith(".")}
    # A checkpoint whose manifest is left but whose file is gone: tried, and reported missing.
    manifests = directory.glob(f"*{SUFFIX}{io.MANIFEST_SUFFIX}")
    files |= {m.with_name(m.name[: -len(io.MANIFEST_SUFFIX)]) for m in manifests}
    files.discard(directory / LAST_NAME)
    # last.ckpt first: it is the newest committed state unless it is damaged or missing.
    return [directory / LAST_NAME, *sorted(files, key=integrity.position, reverse=True)]


def pick(
    requested: str | os.PathLike[str],
    full: bool,
    collectives: Collectives | None = None,
    is_global_zero: bool = True,
) -> tuple[str, dict[str, Any]]:
    """The file to resume from and its state (on the CPU); `requested` is `last.ckpt` or an explicit file."""
    if collectives is None:
        return _pick_here(Path(requested), full)
    choice: tuple[str | None, str | None, list[tuple[str, str]]] = (None, None, [])
    picked: dict[str, Any] | None = None
    if is_global_zero:
        try:
            path, picked = _pick_here(Path(requested), full)
            choice = (path, None, [])
        except CheckpointError as error:
            choice = (None, str(error), getattr(error, "tried", []))
    path, message, tried = collectives.broadcast_object(choice, 0)
    if path is None:
        assert message is not None
        raise NoCheckpointToResume(message, tried) if tried else CheckpointError(message)
    return path, picked if picked is not None else integrity.load(path, map_location="cpu")


def _pick_here(requested: Path, full: bool) -> tuple[str, dict[str, Any]]:
    if requested.name != LAST_NAME:
        return str(requested), _read_explicit(requested, full)
    tried: list[tuple[str, str]] = []
    for candidate in candidates(requested.parent):
        problem, state = _read(candidate, full)
        if state is not None:
            if tried:
                log.warning("Resuming from %s, the newest intact checkpoint", candidate)
            return str(candidate), state
        assert problem is not None
        tried.append((str(candidate), problem))
        if problem != "missing" or candidate == requested:
            log.warning("Skipping checkpoint %s for resume: %s", candidate, problem)
    listing = "; ".join(f"{Path(name).name} ({why})" for name, why in tried)
    raise NoCheckpointToResume(
        f"No intact checkpoint to resume from in {str(requested.parent)!r}: tried {listing}", tried
    )


def _read(path: Path, full: bool) -> tuple[str | None, dict[str, Any] | None]:
    """(why `path` cannot be resumed from, None) or (None, its state)."""
    problem = integrity.check(path)
    if problem is not None:
        return problem, None
    try:
        state = integrity.load(path, map_location="cpu")
    except CheckpointError as error:
        cause = error.__cause__
        return f"does not load ({type(cause).__name__ if cause else 'error'})", None
    if full and "optimizer_states" not in state:
        return "holds weights only (saved with save_weights_only=True)", None
    return None, state


def _read_explicit(path: Path, full: bool) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={str(path)!r} does not exist (or is not a file); pass the path of a .ckpt file, "
            '"last" or "best"'
        )
    problem = integrity.check(path)
    if problem is not None:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} fails verification ({problem}). Pass ckpt_path= an intact checkpoint, "
            "or start without ckpt_path (training starts from scratch)."
        )
    state = integrity.load(path, map_location="cpu")
    if full and "optimizer_states" not in state:
        raise CheckpointError(
            f"{path} holds weights only (saved with weights_only=True); resume needs a full one, or load "
            "the weights with Module.load_from_checkpoint and start a new fit"
        )
    return state
