"""`configure_optimizers` return forms normalised to optimizers + `SchedulerConfig`s, and scheduler stepping.

Accepted forms (Lightning's): an optimizer; a list/tuple of optimizers; two lists `([optimizers],
[schedulers])` whose schedulers may be scheduler dicts; a dict `{"optimizer": ..., "lr_scheduler": scheduler
or dict, "monitor": ...}`; a list/tuple of such dicts; None (no optimizer, for manual optimization).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from trainer_core.errors import MisconfigurationError
from trainer_core.rank_zero import rank_zero_warn

ACCEPTED_FORMS = (
    "configure_optimizers() must return one of:\n"
    "  * an optimizer\n"
    "  * a list or tuple of optimizers\n"
    "  * two lists: ([optimizers], [schedulers or scheduler dicts])\n"
    '  * a dict: {"optimizer": optimizer, "lr_scheduler": scheduler or scheduler dict, "monitor": "metric"}\n'
    "  * a list or tuple of such dicts\n"
    "  * None (no optimizer; for manual optimization)"
)
_OPTIMIZER_DICT_KEYS = {"optimizer", "lr_scheduler", "monitor"}
_INTERVALS = ("step", "epoch")
_PLATEAU_EXAMPLE = (
    '{"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}} '
    'or {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "val_loss"}'
)


@dataclasses.dataclass
class SchedulerConfig:
    """One learning-rate scheduler and when the trainer steps it (Lightning's `LRSchedulerConfig`)."""

    scheduler: Any
    # Logged under this name by LearningRateMonitor; None gives "lr-<OptimizerClass>".
    name: str | None = None
    # "epoch": stepped after every `frequency` epochs; "step": after every `frequency` optimizer steps.
    interval: str = "epoch"
    frequency: int = 1
    # ReduceLROnPlateau is stepped with the value of this metric (from callback_metrics).
    reduce_on_plateau: bool = False
    monitor: str | None = None
    # A missing monitored metric is an error (True) or a warning and a skipped step (False).
    strict: bool = True
    _warned_missing: bool = dataclasses.field(default=False, repr=False, compare=False)


def configure(result: Any, module: Any = None) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """Normalise what `configure_optimizers()` returned; `module.automatic_optimization` picks the rules."""
    optimizers, schedulers = _split(result)
    automatic = bool(getattr(module, "automatic_optimization", True))
    if automatic:
        configs = [_automatic_config(item) for item in schedulers]
    else:
        configs = [_manual_config(item) for item in schedulers]
    _check_attached(optimizers, configs)
    return optimizers, configs


def _is_optimizer(obj: Any) -> bool:
    return isinstance(obj, Optimizer) or (
        callable(getattr(obj, "step", None)) and hasattr(obj, "param_groups")
    )


def _split(result: Any) -> tuple[list[Optimizer], list[Any]]:
    """(optimizers, schedulers or scheduler dicts) for each accepted form."""
    if result is None:
        rank_zero_warn("configure_optimizers() returned None: this fit runs with no optimizer.")
        return [], []
    if _is_optimizer(result):
        return [result], []
    if isinstance(result, Mapping):
        return _split_dicts([result])
    if isinstance(result, list | tuple) and result:
        if _is_two_lists(result):
            optimizers, schedulers = result
            schedulers = list(schedulers) if isinstance(schedulers, list | tuple) else [schedulers]
            return list(optimizers), schedulers
        if all(isinstance(item, Mapping) for item in result):
            return _split_dicts(result)
        if all(_is_optimizer(item) for item in result):
            return list(result), []
    raise MisconfigurationError(f"configure_optimizers() returned {_describe(result)}. {ACCEPTED_FORMS}")


def _is_two_lists(result: Sequence[Any]) -> bool:
    first = result[0]
    return (
        len(result) == 2
        and isinstance(first, list | tuple)
        and len(first) > 0
        and all(_is_optimizer(item) for item in first)
    )


def _split_dicts(dicts: Sequence[Mapping[str, Any]]) -> tuple[list[Optimizer], list[Any]]:
    optimizers: list[Optimizer] = []
    schedulers: list[Any] = []
    for entry in dicts:
        if "optimizer" not in entry or not _is_optimizer(entry["optimizer"]):
            raise MisconfigurationError(
                f'configure_optimizers() returned a dict without an optimizer under "optimizer" '
                f"(keys: {sorted(entry)}). {ACCEPTED_FORMS}"
            )
        unknown = set(entry) - _OPTIMIZER_DICT_KEYS
        if unknown:
            rank_zero_warn(
                f"configure_optimizers(): ignoring unknown keys {sorted(unknown)} of the optimizer dict; "
                f"the known keys are {sorted(_OPTIMIZER_DICT_KEYS)}."
            )
        optimizers.append(entry["optimizer"])
        if entry.get("lr_scheduler") is not None:
            scheduler = entry["lr_scheduler"]
            scheduler = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
            # A dict's own "monitor" applies to its scheduler unless the scheduler dict names one.
            if entry.get("monitor") is not None:
                scheduler.setdefault("monitor", entry["monitor"])
            schedulers.append(scheduler)
    return optimizers, schedulers


def _describe(result: Any) -> str:
    if isinstance(result, list | tuple):
        inner = ", ".join(type(item).__name__ for item in result)
        return f"a {type(result).__name__} of ({inner})"
    return f"a {type(result).__name__}"


def _automatic_config(item: Any) -> SchedulerConfig:
    fields = _scheduler_fields(item)
    if "reduce_on_plateau" not in fields:
        fields["reduce_on_plateau"] = isinstance(fields["scheduler"], ReduceLROnPlateau)
    config = SchedulerConfig(**fields)
    _check_config(config)
    return config


def _manual_config(item: Any) -> SchedulerConfig:
    fields = _scheduler_fields(item)
    # In manual optimization the user steps schedulers; the trainer only needs `interval` for LR logging.
    ignored = sorted(key for key in ("reduce_on_plateau", "monitor", "strict") if key in fields)
    if ignored and isinstance(item, Mapping):
        rank_zero_warn(
            f"The lr scheduler dict sets {ignored}, which manual optimization ignores: call "
            "scheduler.step() yourself in training_step."
        )
    config = SchedulerConfig(**{key: value for key, value in fields.items() if key not in ignored})
    _check_config(config, automatic=False)
    return config


def _scheduler_fields(item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        return {"scheduler": item}
    known = {field.name for field in dataclasses.fields(SchedulerConfig) if not field.name.startswith("_")}
    unknown = set(item) - known
    if unknown:
        rank_zero_warn(
            f"Ignoring unknown keys {sorted(unknown)} of the lr scheduler dict; the known keys are "
            f"{sorted(known)}."
        )
    if "scheduler" not in item:
        raise MisconfigurationError(
            f'The lr scheduler dict {dict(item)!r} has no "scheduler" key. Put the scheduler under '
            '"scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 10), "interval": "epoch"}.'
        )
    return {key: value for key, value in item.items() if key in known}


def _check_config(config: SchedulerConfig, automatic: bool = True) -> None:
    scheduler = config.scheduler
    if not (callable(getattr(scheduler, "step", None)) and hasattr(scheduler, "state_dict")):
        raise MisconfigurationError(
            f"The lr scheduler {scheduler!r} has no step() and state_dict(). Return a "
            "torch.optim.lr_scheduler scheduler (or an object with step, state_dict and load_state_dict)."
        )
    if config.interval not in _INTERVALS:
        raise MisconfigurationError(
            f'The lr scheduler dict has "interval": {config.interval!r}; use "step" or "epoch".'
        )
    if isinstance(config.frequency, bool) or not isinstance(config.frequency, int) or config.frequency < 1:
        raise MisconfigurationError(
            f'The lr scheduler dict has "frequency": {config.frequency!r}; use a positive integer (1 steps '
            "the scheduler at every interval)."
        )
    if automatic and config.reduce_on_plateau and config.monitor is None:
        raise MisconfigurationError(
            f"{type(scheduler).__name__} needs a monitored metric, and none is set. Return, for example, "
            f"{_PLATEAU_EXAMPLE}."
        )
    if automatic and isinstance(scheduler, OneCycleLR) and config.interval == "epoch":
        rank_zero_warn('A OneCycleLR scheduler with "interval": "epoch": did you mean "interval": "step"?')


def _check_attached(optimizers: list[Optimizer], configs: list[SchedulerConfig]) -> None:
    known = {id(optimizer) for optimizer in optimizers}
    for config in configs:
        attached = getattr(config.scheduler, "optimizer", None)
        if attached is not None and id(attached) not in known:
            raise MisconfigurationError(
                f"The lr scheduler {type(config.scheduler).__name__} is attached to an optimizer that "
                "configure_optimizers() did not return. Return that optimizer too, or build the scheduler "
                "on one of the returned optimizers."
            )


StepFunction = Callable[[Any, Any], None]


def step_schedulers(
    configs: Sequence[SchedulerConfig],
    interval: str,
    counter: int,
    metrics: Mapping[str, torch.Tensor | float],
    step_fn: StepFunction | None = None,
) -> None:
    """Step every scheduler whose `interval` matches and whose `frequency` divides `counter`.

    `counter` is 1-based: the number of optimizer steps (interval "step") or epochs (interval "epoch") done.
    A ReduceLROnPlateau is stepped with its monitored metric from `metrics`. `step_fn(scheduler, metric)`
    replaces the plain `scheduler.step(...)` call (the module's `lr_scheduler_step` hook). The trainer calls
    this in automatic optimization only; in manual optimization the user steps the schedulers.
    """
    for config in configs:
        if config.interval != interval or counter % config.frequency != 0:
            continue
        metric: Any = None
        if config.reduce_on_plateau:
            metric = _monitored_value(config, metrics)
            if metric is None:
                continue
        if step_fn is not None:
            step_fn(config.scheduler, metric)
        elif metric is None:
            config.scheduler.step()
        else:
            config.scheduler.step(metric)


def _monitored_value(config: SchedulerConfig, metrics: Mapping[str, torch.Tensor | float]) -> float | None:
    name = config.monitor or ""
    if name in metrics:
        value = metrics[name]
        return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
    available = sorted(metrics)
    if config.strict:
        raise MisconfigurationError(
            f"{type(config.scheduler).__name__} monitors {name!r}, which was not logged. Logged metrics: "
            f'{available}. Log {name!r} with self.log, set "monitor" to one of those, or set "strict": False '
            "to skip the step when it is missing."
        )
    if not config._warned_missing:
        config._warned_missing = True
        rank_zero_warn(
            f"{type(config.scheduler).__name__} monitors {name!r}, which was not logged (logged metrics: "
            f'{available}); skipping its step because "strict" is False.'
        )
    return None


def scheduler_states(configs: Sequence[SchedulerConfig]) -> list[dict[str, Any]]:
    """Every scheduler's `state_dict()`, in order, for the checkpoint's `lr_schedulers` entry."""
    return [config.scheduler.state_dict() for config in configs]


def load_scheduler_states(configs: Sequence[SchedulerConfig], states: Sequence[Mapping[str, Any]]) -> None:
    """Restore what `scheduler_states` saved; the number of schedulers must match."""
    if len(states) != len(configs):
        raise MisconfigurationError(
            f"The checkpoint holds {len(states)} lr scheduler states but configure_optimizers() returned "
            f"{len(configs)} schedulers. Resume with the same configure_optimizers() as the saved run."
        )
    for config, state in zip(configs, states):
        config.scheduler.load_state_dict(dict(state))
