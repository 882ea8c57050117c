"""`TrainerSettings`: the `Trainer` arguments, validated once, with Lightning's defaults resolved."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from trainer_core.callbacks.base import Callback
from trainer_core.errors import MisconfigurationError

PRECISIONS = {
    "32-true": "32-true",
    "32": "32-true",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    "bf16-mixed": "bf16-mixed",
    "bf16": "bf16-mixed",
}
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def _fail(key: str, value: Any, fix: str) -> MisconfigurationError:
    return MisconfigurationError(f"Trainer({key}={value!r}): {fix}")


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, value, f"use an int >= {minimum}")


def _check_limit(key: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ok = ok or (isinstance(value, float) and 0.0 <= value <= 1.0)
    if not ok:
        raise _fail(key, value, "use an int >= 0 (a number of batches) or a float in [0.0, 1.0] (a fraction)")


@dataclasses.dataclass
class TrainerSettings:
    """Every `Trainer` argument after validation (the Lightning names, defaults resolved)."""

    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    logger: Any = True
    callbacks: list[Callback] = dataclasses.field(default_factory=list)
    fast_dev_run: int = 0  # 0 off, else the number of batches (True is 1)
    max_epochs: int = 1000  # -1: no limit
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    limit_predict_batches: int | float = 1.0
    overfit_batches: int | float = 0.0
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    enable_checkpointing: bool = True
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: bool = False
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    plugins: Any = None
    sync_batchnorm: bool = False
    default_root_dir: str = ""

    @classmethod
    def validated(cls, **given: Any) -> TrainerSettings:
        """Settings from the `Trainer` arguments; a `MisconfigurationError` names any bad key and its fix."""
        values = {k: v for k, v in given.items() if v is not None}
        values["precision"] = _precision(given.get("precision"))
        values["callbacks"] = _callbacks(given.get("callbacks"))
        values["logger"] = True if given.get("logger") is None else given["logger"]
        values["default_root_dir"] = os.fspath(given.get("default_root_dir") or os.getcwd())
        values["fast_dev_run"] = _fast_dev_run(given.get("fast_dev_run", False))
        for key in ("check_val_every_n_epoch", "gradient_clip_val", "gradient_clip_algorithm", "benchmark"):
            values[key] = given.get(key)
        settings = cls(**values)
        settings._check()
        settings._resolve_defaults(given.get("max_epochs"))
        return settings

    def _check(self) -> None:
        if str(self.accelerator).lower() not in _ACCELERATORS:
            raise _fail("accelerator", self.accelerator, f"use one of {list(_ACCELERATORS)}")
        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise _fail("accelerator", self.accelerator, 'no CUDA GPU is visible here; use accelerator="cpu"')
        _check_int("num_nodes", self.num_nodes, 1)
        _check_int("max_steps", self.max_steps, -1)
        _check_int("accumulate_grad_batches", self.accumulate_grad_batches, 1)
        _check_int("log_every_n_steps", self.log_every_n_steps, 1)
        _check_int("num_sanity_val_steps", self.num_sanity_val_steps, -1)
        if self.check_val_every_n_epoch is not None:
            _check_int("check_val_every_n_epoch", self.check_val_every_n_epoch, 1)
        for key in (
            "limit_train_batches",
            "limit_val_batches",
            "limit_test_batches",
            "limit_predict_batches",
        ):
            _check_limit(key, getattr(self, key))
        _check_limit("overfit_batches", self.overfit_batches)
        self._check_val_interval()
        if self.gradient_clip_algorithm not in (None, "norm", "value"):
            raise _fail("gradient_clip_algorithm", self.gradient_clip_algorithm, "use 'norm' or 'value'")
        if self.gradient_clip_val is not None and (
            not isinstance(self.gradient_clip_val, (int, float)) or self.gradient_clip_val < 0
        ):
            raise _fail(
                "gradient_clip_val", self.gradient_clip_val, "use a number >= 0 (or None for no clipping)"
            )
        self.device_count()

    def _check_val_interval(self) -> None:
        value = self.val_check_interval
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail("val_check_interval", value, "use a float in (0.0, 1.0] or an int number of batches")
        if isinstance(value, float) and not 0.0 < value <= 1.0:
            raise _fail(
                "val_check_interval", value, "a float must be in (0.0, 1.0] (a fraction of the epoch)"
            )
        if isinstance(value, int) and value < 1:
            raise _fail("val_check_interval", value, "an int must be >= 1 (a number of training batches)")

    def _resolve_defaults(self, max_epochs: int | None) -> None:
        if max_epochs is None:
            # Lightning: 1000 epochs unless max_steps bounds the run.
            self.max_epochs = 1000 if self.max_steps == -1 else -1
        else:
            _check_int("max_epochs", max_epochs, -1)
        if self.fast_dev_run:
            n = self.fast_dev_run
            self.max_epochs, self.max_steps, self.num_sanity_val_steps = 1, n, 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            for key in (
                "limit_train_batches",
                "limit_val_batches",
                "limit_test_batches",
                "limit_predict_batches",
            ):
                setattr(self, key, n)
        if self.overfit_batches:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches

    def device_count(self) -> int:
        """How many devices (processes) per node the `devices` setting asks for."""
        devices = self.devices
        if devices in ("auto", -1, "-1"):
            return 1
        if isinstance(devices, (list, tuple)):
            return len(devices)
        try:
            count = int(devices)
        except (TypeError, ValueError):
            raise _fail(
                "devices", devices, 'use "auto", a positive int, or a list of device indices'
            ) from None
        if count < 1:
            raise _fail("devices", devices, 'use "auto", a positive int, or a list of device indices')
        return count

    def root_device(self) -> torch.device:
        """The device of this process (before the rank layout is known: the first one)."""
        if self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available()):
            return torch.device("cuda", 0)
        return torch.device("cpu")

    # -- what the settings build ----------------------------------------------------------------------
    def build_callbacks(self) -> list[Callback]:
        """The user's callbacks plus Lightning's defaults, checkpoint callbacks last."""
        from trainer_core.callbacks import (
            FitSummary,
            ModelCheckpoint,
            ModelSummary,
            ProgressBar,
            ThroughputMonitor,
            TQDMProgressBar,
        )

        callbacks = list(self.callbacks)
        has_checkpoint = any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
        if has_checkpoint and not self.enable_checkpointing:
            raise _fail(
                "enable_checkpointing",
                False,
                "a ModelCheckpoint is in callbacks; remove it or set enable_checkpointing=True",
            )
        if self.enable_checkpointing and not has_checkpoint:
            callbacks.append(ModelCheckpoint())
        if self.enable_progress_bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
            callbacks.append(TQDMProgressBar())
        if self.enable_progress_bar:  # the console view: samples/s and ETA on the bar, a summary at the end
            for kind in (ThroughputMonitor, FitSummary):
                if not any(isinstance(cb, kind) for cb in callbacks):
                    callbacks.append(kind())
        if self.enable_model_summary and not any(isinstance(cb, ModelSummary) for cb in callbacks):
            callbacks.append(ModelSummary(max_depth=1))
        return reorder(callbacks)

    def build_loggers(self) -> list[Any]:
        """`logger=True`: TensorBoard under `default_root_dir`; False: none; else the given logger(s)."""
        if self.fast_dev_run or self.logger is False:
            return []
        if self.logger is True:
            from trainer_core.loggers import TensorBoardLogger

            return [TensorBoardLogger(save_dir=self.default_root_dir)]
        return list(self.logger) if isinstance(self.logger, (list, tuple)) else [self.logger]

    def build_profiler(self) -> Any:
        from trainer_core.profiler import resolve_profiler

        return resolve_profiler(self.profiler)

    def merge_module_callbacks(self, callbacks: list[Callback], extra: Any) -> list[Callback]:
        """Add the module's `configure_callbacks()`; they replace the trainer's callbacks of the same type."""
        extra_list = [extra] if isinstance(extra, Callback) else list(extra or [])
        if not extra_list:
            return callbacks
        types = {type(cb) for cb in extra_list}
        kept = [cb for cb in callbacks if type(cb) not in types]
        return reorder(kept + extra_list)


def reorder(callbacks: list[Callback]) -> list[Callback]:
    """Checkpoint callbacks last, as Lightning: they then see what every other callback did."""
    from trainer_core.callbacks import ModelCheckpoint

    return [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)] + [
        cb for cb in callbacks if isinstance(cb, ModelCheckpoint)
    ]


def _precision(value: Any) -> str:
    if value is None:
        return "32-true"
    name = None if isinstance(value, bool) else PRECISIONS.get(str(value))
    if name is None:
        raise _fail(
            "precision",
            value,
            'use one of "32-true", "16-mixed", "bf16-mixed" '
            '(or Lightning\'s aliases 32, "32", 16, "16", "bf16")',
        )
    return name


def _callbacks(value: Any) -> list[Callback]:
    if value is None:
        return []
    items = [value] if isinstance(value, Callback) else list(value)
    for item in items:
        if not isinstance(item, Callback):
            raise _fail(
                "callbacks", item, "every callback must be a trainer_core.callbacks.Callback instance"
            )
    return items


def _fast_dev_run(value: Any) -> int:
    if value is True:
        return 1
    if value is False or value is None:
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    raise _fail("fast_dev_run", value, "use True, False, or an int number of batches >= 0")
