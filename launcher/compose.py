"""Composition once: from Hydra's config to a run directory holding the resolved `config.yaml` and `run.json`.

Runs in the `launch` process only. Ranks read what this writes; they never run Hydra or parse `sys.argv`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from launcher import rundir
from launcher.config import JobConfig
from launcher.errors import ConfigError
from launcher.preflight import check_resources, check_targets
from launcher.validate import job_from_dict

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A run directory ready for its ranks: config.yaml and run.json written."""

    run_dir: Path
    job: JobConfig
    resumed: bool  # an existing run continues from its last.ckpt


def prepare_run(
    cfg: DictConfig, hydra_cfg: DictConfig, check_targets: Callable[[JobConfig], None] = check_targets
) -> PreparedRun:
    """Validate the composed config, fix the run directory and write the resolved config and manifest.

    `check_targets` imports the model and data classes and checks their arguments (by default here; a
    local run asks its job process, `launcher.warm`, so that this process never imports torch).
    """
    cfg.run.root = str(Path(cfg.run.root).expanduser().resolve())
    resolved = _plain(OmegaConf.to_container(cfg, resolve=True))
    job = job_from_dict(resolved)
    root = Path(job.run.root)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        run_dir = _sweep_job_dir(job, hydra_cfg)
        # A sweep submitted again (same sweep directory) continues the jobs it already has.
        resumed = (run_dir / rundir.MANIFEST_FILE).is_file()
    elif job.run.id is not None:
        run_dir, resumed = rundir.existing_run_dir(root, job.run.experiment, job.run.id), True
        resolved = _resume_config(run_dir, resolved, list(hydra_cfg.overrides.task))
        job = job_from_dict(resolved)
    else:
        run_dir, resumed = root / job.run.experiment / rundir.new_run_id(), False
    try:
        check_resources(job)
        check_targets(job)
    except ConfigError:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            _remove_if_empty(run_dir)
        raise
    run_id = run_dir.relative_to(root / job.run.experiment).as_posix()
    resolved["run"]["id"] = job.run.id = run_id
    if resumed and job.run.resume == "never":
        rundir.set_aside_checkpoints(run_dir)
    resolved["run"]["resume"] = job.run.resume = "auto"  # a one-time choice: the next launch resumes
    _write_run_files(run_dir, resolved, resumed)
    return PreparedRun(run_dir=run_dir, job=job, resumed=resumed)


def _plain(container: Any) -> dict[str, Any]:
    if not isinstance(container, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(container).__name__}.")
    return {str(key): value for key, value in container.items()}


def _sweep_job_dir(job: JobConfig, hydra_cfg: DictConfig) -> Path:
    """A sweep job's run directory: the one Hydra made for it, `<sweep dir>/<job number>`."""
    if job.run.id is not None:
        raise ConfigError(
            f"run.id={job.run.id}: a sweep (-m) gives every job its own new run id. "
            "Leave run.id out of a sweep, or resume one of its jobs: `launch run.id=<sweep id>/<job number>`."
        )
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    # Hydra's basic sweeper records its own multirun.yaml; each job's config.yaml already says everything.
    (run_dir.parent / "multirun.yaml").unlink(missing_ok=True)
    return run_dir


def _resume_config(run_dir: Path, composed: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The stored config of the run, with the keys that this command line overrides taken from `composed`."""
    stored: dict[str, Any] = yaml.safe_load((run_dir / rundir.CONFIG_FILE).read_text())
    changed = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or key in ("run.id", "run.root", "run.experiment"):
            continue
        if override.is_delete():
            _pop(stored, key)
        else:
            _put(stored, key, _get(composed, key))
        changed.append(key)
    stored["run"] = {**stored.get("run", {}), "root": composed["run"]["root"]}
    log.info(
        "resuming %s with its stored config%s", run_dir, f"; changed: {', '.join(changed)}" if changed else ""
    )
    return stored


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _pop(tree: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node.get(part, {})
    node.pop(last, None)


def _write_run_files(run_dir: Path, resolved: dict[str, Any], resumed: bool) -> None:
    """config.yaml (resolved) and run.json, both written atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    rundir.write_atomic(run_dir / rundir.CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))
    if resumed and rundir.read_manifest(run_dir):
        previous = rundir.read_manifest(run_dir)
        rundir.update_manifest(
            run_dir,
            status="running",
            config_hash=rundir.config_hash(resolved),
            launch_count=int(previous.get("launch_count", 1)) + 1,
            error=None,
            exit_code=None,
        )
    else:
        rundir.write_manifest(run_dir, rundir.new_manifest(resolved, resolved["run"]["id"]))


def _remove_if_empty(run_dir: Path) -> None:
    """Remove the run directory (and an emptied sweep directory) Hydra made for a refused job."""
    for directory in (run_dir, run_dir.parent):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
