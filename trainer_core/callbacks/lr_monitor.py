"""`LearningRateMonitor`: log every optimizer's learning rate (and optionally momentum, weight decay)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from trainer_core.callbacks.base import Callback
from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    import torch

    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

_INTERVALS = (None, "step", "epoch")


class LearningRateMonitor(Callback):
    """Log learning rates to the trainer's loggers under Lightning's names.

    Names: `lr-<OptimizerClass>` (`lr-Adam`), `lr-Adam/pg1`, `lr-Adam/pg2` when the optimizer has several
    parameter groups (or `lr-Adam/<group name>` when a group has a "name"), `lr-Adam-1` for a second Adam,
    and the scheduler's `name` when its config gives one. With `logging_interval=None`, each scheduler is
    logged at its own interval ("step" or "epoch"); "step" or "epoch" logs all of them at that interval.
    Steps are logged every `trainer.log_every_n_steps`.
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in _INTERVALS:
            raise MisconfigurationError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}) is not valid: "
                "use None, 'step' or 'epoch'."
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        # (name, optimizer, param group index, interval) for every learning rate that is logged.
        self._entries: list[tuple[str, torch.optim.Optimizer, int, str]] = []

    def on_train_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationError(
                "LearningRateMonitor needs a logger, but the Trainer has logger=False. Pass a logger "
                "(logger=True or a TensorBoardLogger/CSVLogger) or remove LearningRateMonitor from callbacks."
            )
        self._entries = _name_entries(trainer)
        self.lrs = {name: [] for name, *_ in self._entries}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: TrainingModule, batch: Any, batch_idx: int
    ) -> None:
        if self.logging_interval == "epoch" or not trainer.is_global_zero:
            return
        if trainer.global_step % getattr(trainer, "log_every_n_steps", 50) != 0:
            return
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self.logging_interval == "step" or not trainer.is_global_zero:
            return
        self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def _log(self, trainer: Trainer, interval: str) -> None:
        stats = self._extract_stats(interval)
        if stats:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=trainer.global_step)

    def _extract_stats(self, interval: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        for name, optimizer, group_index, entry_interval in self._entries:
            if interval != "any" and entry_interval != interval:
                continue
            group = optimizer.param_groups[group_index]
            stats[name] = float(group["lr"])
            self.lrs[name].append(stats[name])
            if self.log_momentum:
                stats[f"{name}-momentum"] = _momentum(group)
            if self.log_weight_decay:
                stats[f"{name}-weight_decay"] = float(group.get("weight_decay", 0.0))
        return stats


def _momentum(group: dict[str, Any]) -> float:
    """SGD's `momentum`, or the first of Adam's `betas`; 0 when the optimizer has neither."""
    if "betas" in group:
        return float(group["betas"][0])
    return float(group.get("momentum", 0.0))


def _name_entries(trainer: Trainer) -> list[tuple[str, torch.optim.Optimizer, int, str]]:
    """One entry per parameter group of every optimizer, named as Lightning names them."""
    configs = {id(config.scheduler.optimizer): config for config in trainer.lr_scheduler_configs}
    counts: Counter[str] = Counter()
    entries: list[tuple[str, torch.optim.Optimizer, int, str]] = []
    for optimizer in trainer.optimizers:
        config = configs.get(id(optimizer))
        base = getattr(config, "name", None) if config is not None else None
        if not base:
            base = f"lr-{type(optimizer).__name__}"
            # A second optimizer of the same class gets "-1", a third "-2" (Lightning's rule).
            base = f"{base}-{counts[base]}" if counts[base] else base
            counts[f"lr-{type(optimizer).__name__}"] += 1
        interval = config.interval if config is not None else "step"
        groups = optimizer.param_groups
        for index, group in enumerate(groups):
            name = base
            if len(groups) > 1:
                name = f"{base}/{group['name']}" if "name" in group else f"{base}/pg{index + 1}"
            entries.append((name, optimizer, index, interval))
    return entries
