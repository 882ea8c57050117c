"""The `launch` command: compose the Hydra config once, validate it, run the job; exit 2 on config errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import warm
from launcher.errors import CONFIG_ERROR_EXIT_CODE, LaunchError, NotFileOnly, exit_code_for

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("launcher")

EXIT_CONFIG_ERROR = CONFIG_ERROR_EXIT_CODE


def conf_dir() -> Path:
    """The config tree: launcher/conf (installed, or a link to conf/ in a checkout), else ../conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise LaunchError(
        f"launch: no config tree found at {here / 'conf'} or {here.parent / 'conf'}; reinstall hpc-launch."
    )


_stopped: list[LaunchError] = []  # a local run that a stop signal ended cleanly (launcher.local.Stopped)
_warm: list[warm.WarmJob] = []  # the job process started before composing (launcher.warm), until taken
_job_exit: list[int] = []  # the exit code of the job that the job process ran
_sweep_id: list[str] = []  # the id of the sweep this process runs, fixed by the first call


def sweep_id(*, _root_: Any = None) -> str:
    """One id for all jobs of the sweep this process runs (the resolver is called once per job config).

    A local sweep gets a new time-stamped id. A Slurm sweep's id is derived from its command-line overrides,
    so that running the same sweep command again finds the same sweep directory and submits only the jobs
    that did not complete (and are not still queued or running).
    """
    if not _sweep_id:
        overrides = _sweep_overrides(_root_) if _has_cluster(_root_) else None
        _sweep_id.append(_derived_sweep_id(overrides) if overrides is not None else _new_run_id())
    return _sweep_id[0]


def _new_run_id() -> str:
    from launcher.rundir import new_run_id

    return new_run_id()


def _has_cluster(root: Any) -> bool:
    return root is not None and root.get("cluster") is not None


def _sweep_overrides(root: Any) -> list[str] | None:
    try:
        task = list(root.hydra.overrides.task)
    except Exception:  # no Hydra node (a config composed without Hydra's runtime): no derived id
        return None
    return [str(item) for item in task if not str(item).startswith("hydra.")]


def _derived_sweep_id(overrides: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:10]
    return f"sweep-{digest}"


def _register() -> None:
    from omegaconf import OmegaConf

    from launcher.config import register_schemas

    register_schemas()
    OmegaConf.register_new_resolver("launch_sweep_id", sweep_id, replace=True)


def _task(cfg: DictConfig) -> None:
    """What Hydra calls once per job (once, or once per sweep point with -m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from launcher.compose import prepare_run
    from launcher.local import Stopped, run_local

    hydra_cfg: DictConfig = HydraConfig.get()  # type: ignore[assignment]
    job_process = _take_warm_job(local_run=cfg.get("cluster") is None and hydra_cfg.mode == RunMode.RUN)
    if cfg.get("cluster") is not None:
        _to_slurm(cfg, hydra_cfg)
        return
    if job_process is not None:
        prepared = prepare_run(cfg, hydra_cfg, check_targets=job_process.check_targets)
        log.info("%s: %s", "resuming" if prepared.resumed else "run directory", prepared.run_dir)
        _job_exit.append(job_process.run(prepared.run_dir))
        return
    prepared = prepare_run(cfg, hydra_cfg)
    log.info("%s: %s", "resuming" if prepared.resumed else "run directory", prepared.run_dir)
    try:
        run_local(prepared.run_dir, prepared.job)
    except Stopped as stopped:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # a stopped sweep job stops the sweep: the next job must not start
        _stopped.append(stopped)  # reported by `main` once Hydra returns, without Hydra's error banner
        return
    log.info("done: %s", prepared.run_dir)


def _take_warm_job(local_run: bool) -> warm.WarmJob | None:
    """The job process started before composing, for a local run; cancelled (and None) for anything else."""
    job_process = _warm.pop() if _warm else None
    if job_process is not None and not local_run:
        job_process.cancel()
        return None
    return job_process


def _to_slurm(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Submit one run at once; in a sweep, queue the job for the array that `main` submits at the end."""
    from hydra.types import RunMode

    from launcher import slurm_submit
    from launcher.compose import prepare_run

    if hydra_cfg.mode == RunMode.MULTIRUN:
        run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
        reason = slurm_submit.reason_not_to_resubmit(run_dir)
        if reason is not None:
            log.info("%s: %s; not submitted again", run_dir, reason)
            # Hydra's basic sweeper records its own multirun.yaml; each job's config.yaml says everything.
            (run_dir.parent / "multirun.yaml").unlink(missing_ok=True)
            return
        prepared = prepare_run(cfg, hydra_cfg)
        slurm_submit.queue_run(prepared.run_dir, prepared.job)
        return
    prepared = prepare_run(cfg, hydra_cfg)
    _report([slurm_submit.submit_run(prepared.run_dir, prepared.job)])


def _submit_queued_sweep() -> None:
    """After Hydra walked a Slurm sweep: submit its queued jobs together, without waiting for them."""
    from launcher import slurm_submit

    _report(slurm_submit.submit_queued())


def _report(submitted: list[Any]) -> None:
    # The CLI's own output (stdout): one line per job that scripts can read.
    for item in submitted:
        print(f"submitted Slurm job {item.job_id}: {item.run_dir}", flush=True)


def main() -> None:
    """Console entry point of `launch`."""
    logging.basicConfig(level=logging.INFO, format="[launch] %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(NotFileOnly())
    # A user's HYDRA_FULL_ERROR=1 asks for tracebacks, as LAUNCH_DEBUG=1 does (ranks read LAUNCH_DEBUG).
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ.setdefault("LAUNCH_DEBUG", "1")
    # Hydra's own error printer exits with code 1; full errors let this function report them with code 2.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    # `_target_` classes of a project in the current directory import as they would under `python -m`
    # (which is how every rank starts, so the launcher and its ranks see the same modules).
    sys.path.insert(0, os.getcwd())
    if warm.applies(sys.argv[1:]):
        _warm.append(warm.WarmJob.start())  # imports torch while Hydra composes (on another core)
    try:
        _register()
        import hydra

        app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)(_task)
        app()
        if _job_exit:
            sys.exit(_job_exit[0])
        if _stopped:
            raise _stopped[0]
        _submit_queued_sweep()
    except (LaunchError, KeyboardInterrupt) as error:
        sys.exit(exit_code_for(error))
    except Exception as error:
        message = _describe_hydra_error(error)
        if message is None:
            raise
        _fail(message, EXIT_CONFIG_ERROR)
    finally:
        for job_process in _warm:  # not taken: the config was refused, or Hydra ran no job
            job_process.cancel()


def _fail(message: str, code: int) -> None:
    print(f"launch: error: {message}", file=sys.stderr)
    sys.exit(code)


def _describe_hydra_error(error: Exception) -> str | None:
    """A user-facing message for a Hydra or OmegaConf config error, or None for any other exception."""
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from launcher.validate import closest_keys

    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent = getattr(cause, "parent_node", None)
            known = [str(k) for k in parent] if parent is not None else []
            short = key.rsplit(".", 1)[-1]
            return (
                f"{key}: no such key.{closest_keys(short, known)} Known keys there: {', '.join(known)}. "
                f"To add a new key on purpose, write +{key}=..."
            )
        value = getattr(cause, "value", None)
        detail = str(cause).splitlines()[0]
        return f"{key}={value!r}: {detail}. Fix the value of {key} on the command line or in its config file."
    return str(error).strip()
