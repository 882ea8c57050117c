"""Run directories: their ids and layout, and the `run.json` manifest kept current in each of them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "run.json"
LAST_CKPT = Path("checkpoints") / "last.ckpt"

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A fresh run id: the local time (sortable, readable) and a random suffix, so two launches in one second
    never share a directory."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(2)}"


def list_runs(experiment_dir: Path) -> list[str]:
    """The ids of the runs (directories holding a config.yaml) under an experiment directory, sorted."""
    if not experiment_dir.is_dir():
        return []
    found = [p.parent.relative_to(experiment_dir).as_posix() for p in experiment_dir.glob(f"*/{CONFIG_FILE}")]
    found += [
        p.parent.relative_to(experiment_dir).as_posix() for p in experiment_dir.glob(f"*/*/{CONFIG_FILE}")
    ]
    return sorted(found)


def existing_run_dir(root: Path, experiment: str, run_id: str) -> Path:
    """The directory of an existing run, or a ConfigError that lists the runs there."""
    experiment_dir = root / experiment
    run_dir = experiment_dir / run_id
    if (run_dir / CONFIG_FILE).is_file():
        return run_dir
    runs = list_runs(experiment_dir)
    listing = ", ".join(runs[-20:]) if runs else "none"
    raise ConfigError(
        f"run.id={run_id}: no run with that id under {experiment_dir} (runs there: {listing}). "
        "Pass the id of one of these runs to resume it, or leave run.id out to start a new run."
    )


def config_hash(resolved: dict[str, Any]) -> str:
    """A short, stable hash of a resolved config, ignoring the run's own id."""
    content = {key: value for key, value in resolved.items() if key != "run"}
    content["run"] = {k: v for k, v in resolved.get("run", {}).items() if k != "id"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Trainer settings that change what training computes; the others (devices, epochs, logging, callbacks)
# may change when a run is resumed.
_TRAINING_MATH = ("precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


def training_identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that a checkpoint must match to be resumed: seed, model, data and the
    trainer settings that change the arithmetic."""
    trainer = resolved.get("trainer", {})
    return {
        "seed": resolved.get("seed"),
        "model": resolved.get("model"),
        "data": resolved.get("data"),
        "trainer": {key: trainer.get(key) for key in _TRAINING_MATH},
    }


def code_version() -> str:
    """`git describe` of the source tree when it is a git checkout, else the installed package version."""
    source = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            return f"git:{result.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return metadata.version("hpc-launch")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_manifest(resolved: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The manifest of a run that starts now."""
    return {
        "run_id": run_id,
        "config_hash": config_hash(resolved),
        "code_version": code_version(),
        "hostname": socket.gethostname(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "created": datetime.now().isoformat(timespec="seconds"),
        "updated": datetime.now().isoformat(timespec="seconds"),
        "status": "running",
        "slurm_job_ids": [],
        "requeue_count": 0,
        "timeout_count": 0,
        "preemption_count": 0,
        "launch_count": 1,
        "last_committed_step": None,
    }


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest, or an empty dict when it has none yet."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (temp file, fsync, rename): a reader never sees half a file."""
    manifest = {**manifest, "updated": datetime.now().isoformat(timespec="seconds")}
    write_atomic(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def set_aside_checkpoints(run_dir: Path) -> Path | None:
    """Move the run's checkpoints and metric logs to `set-aside-<time>/` (a fresh start keeps every file)."""
    moved = [run_dir / name for name in ("checkpoints", "tb", "csv") if (run_dir / name).exists()]
    if not moved:
        return None
    aside = run_dir / f"set-aside-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
    aside.mkdir()
    for path in moved:
        path.rename(aside / path.name)
    log.warning("run.resume=never: checkpoints and logs set aside in %s; training starts at step 0", aside)
    return aside


def update_manifest(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Read, change and atomically rewrite the manifest; returns the new content."""
    manifest = {**read_manifest(run_dir), **changes}
    write_manifest(run_dir, manifest)
    return manifest


def write_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
