"""From a composed config to `JobConfig` dataclasses: unknown keys, wrong types, impossible combinations.

Everything here is cheap and imports neither torch nor submitit, so a bad override fails in well under a
second. The checks that need torch (GPU count) or the user's code (`_target_`) live in `launcher.preflight`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar, Union

from launcher.config import JobConfig, SlurmConfig, TrainerConfig
from launcher.errors import ConfigError

T = TypeVar("T")

ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")
STRATEGIES = ("auto", "ddp", "single_device")
LOGGER_KINDS = ("tensorboard", "csv", "none")
RESUME_MODES = ("auto", "never")
LIMIT_KEYS = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "val_check_interval",
    "overfit_batches",
)


def closest_keys(key: str, candidates: typing.Iterable[str]) -> str:
    """' Did you mean: a, b?' for the candidates closest to key, or '' when none is close."""
    matches = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def job_from_dict(data: dict[str, Any]) -> JobConfig:
    """Convert a resolved plain config (from Hydra or a run's config.yaml) to JobConfig and validate it."""
    job = build(JobConfig, data, "")
    check_job(job)
    return job


def build(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass cls from a mapping, naming the full key of anything unknown or mistyped."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}={data!r}: expected a mapping of {cls.__name__} fields.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{_join(path, key)}: no such key in {path or 'the config'}.{closest_keys(key, fields)} "
                f"Known keys: {', '.join(fields)}."
            )
    values = {key: _convert(hints[key], value, _join(path, key)) for key, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Check value against a type hint; build nested dataclasses."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(option for option in options if option is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)  # type: ignore[arg-type]
    expected = origin or hint
    if _matches(expected, value):
        return float(value) if expected is float else value
    raise ConfigError(
        f"{key}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}. "
        f"Set {key} to a value of type {_type_name(hint)}."
    )


def _matches(expected: Any, value: Any) -> bool:
    """Whether value has the expected plain type (bool is not an int; an int is a float)."""
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_job(job: JobConfig) -> None:
    """The checks that span several fields; none of them imports torch."""
    check_trainer(job.trainer, has_cluster=job.cluster is not None)
    _one_of("logger.kind", job.logger.kind, LOGGER_KINDS)
    _one_of("run.resume", job.run.resume, RESUME_MODES)
    _one_of("callbacks.checkpoint.mode", job.callbacks.checkpoint.mode, ("min", "max"))
    _one_of("callbacks.early_stopping.mode", job.callbacks.early_stopping.mode, ("min", "max"))
    for group in ("model", "data"):
        target = getattr(job, group).get("_target_")
        if not isinstance(target, str) or "." not in target:
            raise ConfigError(
                f"{group}._target_={target!r}: expected the dotted path of a class, such as "
                f"'my_package.models.MyModel'. Set {group}._target_ in your {group} config."
            )
    if job.cluster is not None:
        check_cluster(job.cluster, job.trainer)


def check_trainer(trainer: TrainerConfig, has_cluster: bool) -> None:
    """Values and combinations of the trainer settings that can never work."""
    _one_of("trainer.accelerator", trainer.accelerator, ACCELERATORS)
    _one_of("trainer.precision", str(trainer.precision), PRECISIONS)
    _one_of("trainer.strategy", trainer.strategy, STRATEGIES)
    _one_of("trainer.gradient_clip_algorithm", trainer.gradient_clip_algorithm, ("norm", "value"))
    for key in ("devices", "num_nodes", "accumulate_grad_batches"):
        if getattr(trainer, key) < 1:
            raise ConfigError(
                f"trainer.{key}={getattr(trainer, key)}: must be at least 1. Set trainer.{key}=1 or more."
            )
    if trainer.num_nodes > 1 and not has_cluster:
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes}: more than one node needs a cluster, and none is "
            "configured. "
            "Add +cluster=slurm to submit to Slurm, or set trainer.num_nodes=1 to run on this machine."
        )
    if trainer.precision == "16-mixed" and trainer.accelerator == "cpu":
        raise ConfigError(
            "trainer.precision=16-mixed: float16 mixed precision needs a GPU, and trainer.accelerator=cpu. "
            "Use trainer.precision=bf16-mixed on CPU, or trainer.accelerator=gpu."
        )
    world_size = trainer.devices * trainer.num_nodes
    if trainer.strategy == "single_device" and world_size > 1:
        raise ConfigError(
            f"trainer.strategy=single_device: the job has {world_size} ranks (devices x num_nodes). "
            "Use trainer.strategy=ddp (or auto), or trainer.devices=1."
        )
    for key in LIMIT_KEYS:
        _check_limit(f"trainer.{key}", getattr(trainer, key))
    fast_dev_run = trainer.fast_dev_run
    if not isinstance(fast_dev_run, (bool, int)) or (not isinstance(fast_dev_run, bool) and fast_dev_run < 0):
        raise ConfigError(
            f"trainer.fast_dev_run={fast_dev_run!r}: expected true, false or a number of batches >= 0."
        )


def _check_limit(key: str, value: Any) -> None:
    """An int (a count of batches, >= 0) or a float fraction in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{key}={value!r}: expected a fraction in [0, 1] (float) or a number of batches (int)."
        )
    if (isinstance(value, int) and value < 0) or (isinstance(value, float) and not 0.0 <= value <= 1.0):
        raise ConfigError(
            f"{key}={value!r}: out of range. Use a float in [0.0, 1.0] for a fraction "
            "or an int >= 0 for batches."
        )


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r}: not one of {', '.join(allowed)}.{closest_keys(str(value), allowed)}"
        )


def check_cluster(cluster: SlurmConfig, trainer: TrainerConfig) -> None:
    """The `cluster.*` settings that can never work, found without asking the cluster."""
    from slurm.errors import SlurmConfigError
    from slurm.params import executor_parameters

    try:
        executor_parameters(cluster, trainer.devices, trainer.num_nodes, trainer.accelerator)
    except SlurmConfigError as error:
        raise ConfigError(str(error)) from None
