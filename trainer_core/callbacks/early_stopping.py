"""`EarlyStopping`: stop training when a monitored metric stops improving, or crosses a threshold."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from trainer_core.callbacks.base import Callback
from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` checks.

    Arguments follow Lightning's `EarlyStopping`. The check runs at the end of validation, or at the end of
    the training epoch when validation runs once per epoch (or `check_on_train_epoch_end=True`). Any rank
    that decides to stop stops every rank, so the ranks never disagree.
    """

    mode_dict: ClassVar[dict[str, Any]] = {"min": torch.lt, "max": torch.gt}
    order_dict: ClassVar[dict[str, str]] = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        if mode not in self.mode_dict:
            raise MisconfigurationError(f"EarlyStopping(mode={mode!r}) is not valid: use 'min' or 'max'.")
        if patience < 0:
            raise MisconfigurationError(
                f"EarlyStopping(patience={patience}) is not valid: use a number >= 0."
            )
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # Signed so that "improved" always means `current - min_delta` beats the best (Lightning's rule).
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Any:
        """`torch.lt` for mode "min", `torch.gt` for "max"."""
        return self.mode_dict[self.mode]

    def setup(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # Validation more or less often than once per epoch: check where the metric is fresh.
            val_check_interval = getattr(trainer, "val_check_interval", 1.0)
            every_n_epochs = getattr(trainer, "check_val_every_n_epoch", 1)
            self._check_on_train_epoch_end = val_check_interval in (None, 1.0) and every_n_epochs == 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self._check_on_train_epoch_end and not self._should_skip_check(trainer):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if not self._check_on_train_epoch_end and not self._should_skip_check(trainer):
            self._run_early_stopping_check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = torch.as_tensor(state_dict["best_score"])
        self.patience = state_dict["patience"]

    def _should_skip_check(self, trainer: Trainer) -> bool:
        return trainer.state.stage != "fit" or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def _run_early_stopping_check(self, trainer: Trainer) -> None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            self._handle_missing_metric(metrics)
            return
        current = torch.as_tensor(metrics[self.monitor]).detach().cpu().squeeze().double()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        # Any rank that wants to stop stops all of them: a rank that stops alone would hang the others.
        should_stop = trainer.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            log.info(reason)

    def _handle_missing_metric(self, metrics: dict[str, Any]) -> None:
        message = (
            f"EarlyStopping(monitor={self.monitor!r}) could not find the metric {self.monitor!r} among the "
            f"logged metrics {sorted(metrics)}. Log it with self.log({self.monitor!r}, value), monitor one "
            "of the available names, or pass strict=False to skip the check while it is missing."
        )
        if self.strict:
            raise MisconfigurationError(message)
        if self.verbose:
            log.warning(message)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        """(should_stop, reason); updates `best_score` and `wait_count`."""
        op = self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            return True, (
                f"Monitored metric {self.monitor} = {float(current)} is not finite. "
                f"Previous best value was {float(self.best_score):.3f}. Signaling Trainer to stop."
            )
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            return True, (
                f"Stopping threshold reached: {self.monitor} = {float(current)} {op} "
                f"{self.stopping_threshold}. Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            return True, (
                f"Divergence threshold reached: {self.monitor} = {float(current)} {op} "
                f"{self.divergence_threshold}. Signaling Trainer to stop."
            )
        if self.monitor_op(current - self.min_delta, self.best_score.to(current)):
            reason = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                f"Best score: {float(self.best_score):.3f}. Signaling Trainer to stop."
            )
        return False, None

    def _improvement_message(self, current: torch.Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (
                f"Metric {self.monitor} improved by {abs(float(self.best_score) - float(current)):.3f} >= "
                f"min_delta = {abs(self.min_delta)}. New best score: {float(current):.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {float(current):.3f}"
