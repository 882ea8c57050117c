"""`ModelCheckpoint`: when to save, what to name the file, and which top-k files to keep.

Every rank reaches the same save points; global rank zero decides the file names and the top-k bookkeeping
(it alone looks at the file system) and broadcasts that plan, so every rank saves and records the same thing.
Files are written by `trainer.save_checkpoint` (a snapshot on the training thread; serialised once per save
point and committed by the writer thread, which links the save point's other names to the same bytes); an old
top-k file is deleted only after its replacement is committed, by the same writer, so a save point costs the
training thread one memory copy of the state, never a wait for a commit's fsync.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from trainer_core.callbacks.base import Callback
from trainer_core.checkpoint import io as checkpoint_io
from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

_MODES = ("min", "max")


@dataclass
class _SavePlan:
    """What every rank does at one save point: rank zero's decision, broadcast to all."""

    saves: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class ModelCheckpoint(Callback):
    """Save the model periodically, keep the best `save_top_k` by `monitor`, and optionally `last.ckpt`.

    Arguments and behaviour follow Lightning's `ModelCheckpoint`: `filename` is a template such as
    `"{epoch:02d}-{val_loss:.2f}"`, which becomes `epoch=03-val_loss=0.12.ckpt` when
    `auto_insert_metric_name` is true. Without `every_n_train_steps`, `every_n_epochs` or
    `train_time_interval`, a checkpoint is considered once per epoch.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        _validate_arguments(mode, save_top_k, monitor, every_n_train_steps, every_n_epochs)
        self.dirpath: str | None = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self._every_n_train_steps, self._every_n_epochs = _triggers(
            every_n_train_steps, every_n_epochs, train_time_interval
        )
        self._train_time_interval = train_time_interval
        self._last_time_checked: float | None = None
        self._last_global_step_saved = 0  # nothing to save before the first optimizer step
        self._last_global_step_saved_last = -1
        self._defer_until_validation = False
        self.current_score: torch.Tensor | None = None
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        """Epochs between checkpoints (0: not epoch-based)."""
        return self._every_n_epochs

    # -- hooks -----------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None:
        dirpath = self.dirpath
        if dirpath is None:
            dirpath = os.path.join(_trainer_log_dir(trainer), "checkpoints")
        # Ranks may resolve different defaults (a version counter on a shared file system): rank zero wins.
        self.dirpath = trainer.broadcast(dirpath)

    def on_train_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        self._last_time_checked = time.monotonic()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Fast exit: this runs every step and most configurations never save here.
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return
        if self._should_skip(trainer):
            return
        due_by_step = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        due_by_time = self._time_is_due(trainer)
        if not (due_by_step or due_by_time):
            return
        if self.monitor is not None and self.monitor not in trainer.callback_metrics:
            # A validation-only metric is not there yet: save once validation has produced it.
            self._defer_until_validation = True
            return
        self._checkpoint(trainer, due=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self._should_skip(trainer) or not self._saves_on_train_epoch_end(trainer):
            return
        self._checkpoint(trainer, due=self._epoch_is_due(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self._should_skip(trainer) or self._saves_on_train_epoch_end(trainer):
            return
        due = self._epoch_is_due(trainer) or self._defer_until_validation
        self._defer_until_validation = False
        self._checkpoint(trainer, due=due)

    def on_train_end(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        # `last.ckpt` must hold the final state even when the last epoch was not a save point.
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved_last != trainer.global_step:
            self._execute(trainer, self._plan_or_error(trainer, topk=False, last=True))

    def adopt_last(self, trainer: Trainer, path: str) -> None:
        """Record `path` (a `last.ckpt` the trainer writes on preemption) as this callback's last file.

        From then on the callback keeps `last.ckpt` current at its save points even without `save_last`,
        so that `last.ckpt` is always the newest committed checkpoint.
        """
        if self.save_last is None or self.save_last is False:
            self.save_last = True
        self.last_model_path = path
        self._last_global_step_saved_last = trainer.global_step

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        dirpath_from_ckpt = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or self.dirpath == dirpath_from_ckpt:
            self.dirpath = dirpath_from_ckpt
            self.best_model_score = state_dict.get("best_model_score")
            self.current_score = state_dict.get("current_score")
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.last_model_path = state_dict.get("last_model_path", "")
        else:
            log.warning(
                "ModelCheckpoint dirpath changed from %r to %r: only best_model_path is restored; the top-k "
                "bookkeeping starts afresh in the new directory.",
                dirpath_from_ckpt,
                self.dirpath,
            )
        self.best_model_path = state_dict.get("best_model_path", "")

    # -- file names ------------------------------------------------------------------------------------
    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None
    ) -> str:
        """The path a checkpoint with these metrics gets, from the `filename` template (Lightning's rule)."""
        name = format_template(
            filename or self.filename or "{epoch}-{step}",
            metrics,
            auto_insert_metric_name=self.auto_insert_metric_name,
        )
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _free_name(self, metrics: dict[str, Any], filename: str | None, reusable: str | None) -> str:
        """The template's name, with `-v1`, `-v2`... appended while another file already has it."""
        path = self.format_checkpoint_name(metrics, filename)
        version = self.STARTING_VERSION
        # `exists` counts a file whose deletion is queued as gone: the names do not depend on commit timing.
        while self._enable_version_counter and checkpoint_io.exists(path) and path != reusable:
            path = self.format_checkpoint_name(metrics, filename, ver=version)
            version += 1
        return path

    # -- when ------------------------------------------------------------------------------------------
    def _should_skip(self, trainer: Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.stage != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _time_is_due(self, trainer: Trainer) -> bool:
        if self._train_time_interval is None:
            return False
        now = time.monotonic()
        last = self._last_time_checked
        due = last is not None and now - last >= self._train_time_interval.total_seconds()
        # Clocks differ between ranks: rank zero's answer is everyone's, or the ranks would diverge.
        due = bool(trainer.broadcast(due))
        if due:
            self._last_time_checked = now
        return due

    def _epoch_is_due(self, trainer: Trainer) -> bool:
        return self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0

    def _saves_on_train_epoch_end(self, trainer: Trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # Validating every other epoch: the validation end is the save point (Lightning's rule).
        if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
            return False
        num_val_batches = trainer.num_val_batches
        total = sum(num_val_batches) if isinstance(num_val_batches, list) else num_val_batches
        if not total:
            return True
        return getattr(trainer, "val_check_interval", 1.0) in (None, 1.0)

    # -- what ------------------------------------------------------------------------------------------
    def _checkpoint(self, trainer: Trainer, due: bool) -> None:
        """One save point: the top-k file if the score qualifies, and `last.ckpt` (when asked for) always."""
        if due:
            self._execute(trainer, self._plan_or_error(trainer, topk=True, last=True))

    def _plan_or_error(self, trainer: Trainer, topk: bool, last: bool) -> _SavePlan:
        plan: _SavePlan | None = None
        if trainer.is_global_zero:
            plan = self._plan(trainer, topk, last)
        plan = trainer.broadcast(plan)
        assert plan is not None  # rank zero always plans; this narrows the type
        if plan.error is not None:
            raise MisconfigurationError(plan.error)
        return plan

    def _plan(self, trainer: Trainer, topk: bool, last: bool) -> _SavePlan:
        """Rank zero's decision: which files to write and delete, and the bookkeeping after that."""
        metrics = self._monitor_candidates(trainer)
        plan = _SavePlan()
        if topk and self.save_top_k != 0:
            if self.monitor is not None and self.monitor not in metrics:
                plan.error = self._missing_metric_message(metrics)
                return plan
            self._plan_topk(metrics, plan)
        if last and self.save_last:
            self._plan_last(metrics, plan)
        plan.state = self.state_dict()
        return plan

    def _plan_topk(self, metrics: dict[str, Any], plan: _SavePlan) -> None:
        if self.monitor is None:
            path = self._free_name(metrics, None, reusable=self.best_model_path)
            previous, self.best_model_path = self.best_model_path, path
            plan.saves.append(path)
            if self.save_top_k == 1 and previous and previous != path:
                plan.deletes.append(previous)
            return
        current = torch.as_tensor(metrics[self.monitor], dtype=torch.float64).detach().cpu().squeeze()
        if torch.isnan(current):  # a NaN score must never count as the best
            current = torch.tensor(float("inf") if self.mode == "min" else float("-inf"), dtype=torch.float64)
        if not self._is_top_k(current):
            if self.verbose:
                log.info("%r = %.5f is not in the top %d", self.monitor, float(current), self.save_top_k)
            return
        self._plan_update_best(current, metrics, plan)

    def _is_top_k(self, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        kth = self.best_k_models[self.kth_best_model_path]
        return bool(current < kth) if self.mode == "min" else bool(current > kth)

    def _plan_update_best(self, current: torch.Tensor, metrics: dict[str, Any], plan: _SavePlan) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        evicted: str | None = None
        if len(self.best_k_models) == k:
            evicted = self.kth_best_model_path
            self.best_k_models.pop(evicted)
        path = self._free_name(metrics, None, reusable=evicted)
        self.current_score = current
        self.best_k_models[path] = current
        worst, best = (max, min) if self.mode == "min" else (min, max)
        if len(self.best_k_models) == k:
            self.kth_best_model_path = worst(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            log.info(
                "%r reached %.5f (best %.5f), saving %s as top %d",
                self.monitor,
                float(current),
                float(self.best_model_score),
                path,
                k,
            )
        plan.saves.append(path)
        if evicted and evicted != path:
            plan.deletes.append(evicted)

    def _plan_last(self, metrics: dict[str, Any], plan: _SavePlan) -> None:
        path = self._free_name(metrics, self.CHECKPOINT_NAME_LAST, reusable=self.last_model_path)
        previous, self.last_model_path = self.last_model_path, path
        plan.saves.append(path)
        if previous and previous != path and previous not in self.best_k_models:
            plan.deletes.append(previous)

    def _execute(self, trainer: Trainer, plan: _SavePlan) -> None:
        """Every rank: take the bookkeeping, save, and (rank zero) delete what the new files replace."""
        if not trainer.is_global_zero:
            self.load_state_dict(plan.state)
        if plan.saves:
            # One snapshot and one serialisation for every file of this save point (top-k and last.ckpt
            # hold the same bytes); the writer links the other names to it.
            first, *others = plan.saves
            trainer.save_checkpoint(first, self.save_weights_only, background=True, also_as=others)
            self._last_global_step_saved = trainer.global_step
            if self.last_model_path in plan.saves:
                self._last_global_step_saved_last = trainer.global_step
        if trainer.is_global_zero:
            for path in plan.deletes:
                self._remove(trainer, path)

    def _remove(self, trainer: Trainer, path: str) -> None:
        # Never delete the file the run resumed from, nor a file outside our directory.
        resumed_from = getattr(trainer, "ckpt_path", None)
        if resumed_from and os.path.abspath(os.fspath(resumed_from)) == os.path.abspath(path):
            return
        inside = self.dirpath is not None and os.path.abspath(path).startswith(
            os.path.abspath(self.dirpath) + os.sep
        )
        if not inside:
            return
        # The file and its manifest, once the files saved before are committed (the committer deletes it).
        checkpoint_io.remove(path, background=True)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Any]:
        metrics: dict[str, Any] = dict(trainer.callback_metrics)
        metrics["epoch"] = int(metrics["epoch"]) if "epoch" in metrics else trainer.current_epoch
        metrics["step"] = int(metrics["step"]) if "step" in metrics else trainer.global_step
        return metrics

    def _missing_metric_message(self, metrics: dict[str, Any]) -> str:
        available = sorted(k for k in metrics if k not in ("epoch", "step"))
        return (
            f"ModelCheckpoint(monitor={self.monitor!r}) could not find the metric {self.monitor!r} among the "
            f"logged metrics {available}. Log it with self.log({self.monitor!r}, value) in your module, or "
            "set monitor to one of the available names."
        )


def format_template(template: str, metrics: dict[str, Any], auto_insert_metric_name: bool = True) -> str:
    """Fill a `{name:spec}` template from `metrics` (Lightning's rule: missing names become 0).

    With `auto_insert_metric_name`, `{val_loss:.2f}` becomes `val_loss=0.12`.
    """
    groups = re.findall(r"(\{.*?)[:\}]", template)
    # Longest first, so that "{epoch_test" is replaced before "{epoch".
    for group in sorted(set(groups), key=len, reverse=True):
        name = group[1:]
        if auto_insert_metric_name:
            template = template.replace(group, name + ModelCheckpoint.CHECKPOINT_EQUALS_CHAR + "{" + name)
        # Index form so that names with dots ("val.loss") are not read as attribute access.
        template = template.replace("{" + name, "{0[" + name + "]")
    values = {name[1:]: _plain_number(metrics.get(name[1:], 0)) for name in groups}
    return template.format(values)


def _plain_number(value: Any) -> Any:
    # A tensor becomes the Python number of its dtype: "{val_loss:.2f}" needs a float, "{epoch:d}" an int.
    return value.item() if isinstance(value, torch.Tensor) else value


def _trainer_log_dir(trainer: Trainer) -> str:
    log_dir = trainer.log_dir if trainer.loggers else None
    return os.fspath(log_dir) if log_dir else os.fspath(trainer.default_root_dir)


def _triggers(
    every_n_train_steps: int | None, every_n_epochs: int | None, train_time_interval: timedelta | None
) -> tuple[int, int]:
    """(every_n_train_steps, every_n_epochs); with none given, once per epoch."""
    if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
        return 0, 1
    return every_n_train_steps or 0, every_n_epochs or 0


def _validate_arguments(
    mode: str,
    save_top_k: int,
    monitor: str | None,
    every_n_train_steps: int | None,
    every_n_epochs: int | None,
) -> None:
    if mode not in _MODES:
        raise MisconfigurationError(f"ModelCheckpoint(mode={mode!r}) is not valid: use 'min' or 'max'.")
    if save_top_k < -1:
        raise MisconfigurationError(
            f"ModelCheckpoint(save_top_k={save_top_k}) is not valid: use -1 (keep all), 0 (none) or k >= 1."
        )
    if monitor is None and save_top_k not in (-1, 0, 1):
        raise MisconfigurationError(
            f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): keeping the top {save_top_k} needs a "
            "metric to rank by. Set monitor='<logged metric>' or use save_top_k in (-1, 0, 1)."
        )
    for key, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
        if value is not None and value < 0:
            raise MisconfigurationError(
                f"ModelCheckpoint({key}={value}) is not valid: use a number >= 0 (0 turns it off)."
            )
