"""The `launch` command: compose the Hydra config once, validate it, run the job; exit 2 on config errors."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from launcher.errors import ConfigError, LaunchError

log = logging.getLogger("launcher")

EXIT_CONFIG_ERROR = 2


def conf_dir() -> Path:
    """The config tree: launcher/conf (installed, or a link to conf/ in a checkout), else ../conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise LaunchError(
        f"launch: no config tree found at {here / 'conf'} or {here.parent / 'conf'}; reinstall hpc-launch."
    )


@functools.cache
def sweep_id() -> str:
    """One id for all jobs of the sweep this process runs (the resolver is called once per job config)."""
    from launcher.rundir import new_run_id

    return new_run_id()


def _register() -> None:
    from omegaconf import OmegaConf

    from launcher.config import register_schemas

    register_schemas()
    OmegaConf.register_new_resolver("launch_sweep_id", sweep_id, replace=True)


def _task(cfg: object) -> None:
    """What Hydra calls once per job (once, or once per sweep point with -m)."""
    from hydra.core.hydra_config import HydraConfig

    from launcher.compose import prepare_run
    from launcher.local import run_local

    if getattr(cfg, "cluster", None) is not None:
        # The Slurm backend (submission through submitit) plugs in here; until then, never run a cluster job
        # locally by mistake.
        raise ConfigError(
            "+cluster=slurm: this version of launch cannot submit to Slurm yet; drop +cluster=slurm."
        )
    prepared = prepare_run(cfg, HydraConfig.get())  # type: ignore[arg-type]
    action = "resuming" if prepared.resumed else "run directory"
    log.info("%s: %s", action, prepared.run_dir)
    run_local(prepared.run_dir, prepared.job)
    log.info("done: %s", prepared.run_dir)


def main() -> None:
    """Console entry point of `launch`."""
    logging.basicConfig(level=logging.INFO, format="[launch] %(message)s")
    # Hydra's own error printer exits with code 1; full errors let this function report them with code 2.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    # `_target_` classes of a project in the current directory import as they would under `python -m`
    # (which is how every rank starts, so the launcher and its ranks see the same modules).
    sys.path.insert(0, os.getcwd())
    try:
        _register()
        import hydra

        app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)(_task)
        app()
    except ConfigError as error:
        _fail(str(error), EXIT_CONFIG_ERROR)
    except LaunchError as error:
        _fail(str(error), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:
        message = _describe_hydra_error(error)
        if message is None:
            raise
        _fail(message, EXIT_CONFIG_ERROR)


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
