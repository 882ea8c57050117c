"""Checkpoints: committed atomically off the training thread, verified by content digest, resumed safely.

- `snapshot.py`: the training thread's part of a save, a copy of the state into reused (pinned) buffers;
- `io.py`: the commit protocol on the writer thread (serialise, digest, fsync, link, rename, manifest),
  and retention's deletions;
- `digest.py`: the digest of every byte, taken as the file is written and checked on resume;
- `integrity.py`: whether a file is intact (size and SHA-256 against its manifest), `weights_only` loading;
- `layout.py`: what goes into a checkpoint (`dump`) and how a state goes back into the trainer (`restore`);
- `resume.py`: which file a resume reads, the newest intact one, skipping damaged ones with a warning.

A checkpoint is a `torch.save`d dict in torch's zip format, readable with `torch.load(weights_only=True)`,
with a manifest `<name>.ckpt.json` beside it. `layout` and `resume` are imported from their modules (they
depend on the trainer's parts); the names below are the file-level API.
"""

from trainer_core.checkpoint.integrity import check, load, verify
from trainer_core.checkpoint.io import (
    MANIFEST_SUFFIX,
    exists,
    manifest_path,
    raise_failure,
    remove,
    save,
    save_atomic,
    set_snapshots_in_flight,
    wait_for_pending,
)
from trainer_core.plain_types import to_plain

__all__ = [
    "MANIFEST_SUFFIX",
    "check",
    "exists",
    "load",
    "manifest_path",
    "raise_failure",
    "remove",
    "save",
    "save_atomic",
    "set_snapshots_in_flight",
    "to_plain",
    "verify",
    "wait_for_pending",
]
