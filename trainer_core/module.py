"""`TrainingModule`: the LightningModule contract (steps, hooks, logging, optimizers, checkpoints, export)."""

from __future__ import annotations

import builtins
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer_core.errors import MisconfigurationError
from trainer_core.hparams import HyperparametersMixin

if TYPE_CHECKING:
    from trainer_core.loops.optimization import TrainerOptimizer
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

_UNUSED_BY_TORCHSCRIPT = [
    "trainer",
    "device",
    "dtype",
    "global_rank",
    "local_rank",
    "current_epoch",
    "global_step",
    "automatic_optimization",
    "example_input_array",
    "hparams",
    "hparams_initial",
    "logger",
    "loggers",
    "on_gpu",
]


class TrainingModule(HyperparametersMixin, nn.Module):
    """An `nn.Module` that also says how to train it: the LightningModule contract under our name.

    Define `training_step` and `configure_optimizers` (and `validation_step`, `test_step`, `predict_step` as
    needed); override any hook below to run code at that point of the loop. The trainer attaches itself
    (`self.trainer`) while it runs.
    """

    # TorchScript compiles properties unless told not to; these need a trainer and make no sense in a script.
    __jit_unused_properties__ = _UNUSED_BY_TORCHSCRIPT

    #: Run `prepare_data` on local rank 0 of every node (True, default) or on global rank 0 only (False).
    prepare_data_per_node: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._automatic_optimization = True
        self._example_input_array: Any = None
        self._param_requires_grad_state: dict[nn.Parameter, bool] = {}
        self._warned_unattached_log = False

    # -- the steps -----------------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and return the loss of one batch (a tensor, a dict with "loss", or None)."""
        raise MisconfigurationError(
            f"{type(self).__name__} has no training_step: define `def training_step(self, batch, batch_idx)` "
            "returning the loss to train with Trainer.fit"
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one validation batch (log metrics with `self.log`)."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one test batch (log metrics with `self.log`)."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """Return the prediction for one batch; by default `self(batch)`."""
        batch = kwargs.get("batch", args[0] if args else None)
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return an optimizer, a list of them, `([optimizers], [schedulers])`, a dict, or dicts."""
        raise MisconfigurationError(
            f"{type(self).__name__} has no configure_optimizers: define it to return an optimizer, e.g. "
            "`return torch.optim.Adam(self.parameters(), lr=1e-3)`"
        )

    def configure_callbacks(self) -> Sequence[Any] | Any:
        """Callbacks this module needs; they are added to the trainer's (replacing those of the same type)."""
        return []

    def configure_model(self) -> None:
        """Create layers late (after `setup`), e.g. to build them directly on the device."""

    # -- logging -------------------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record a scalar: per step (default inside `training_step`) and/or per epoch (default elsewhere).

        `reduce_fx` reduces the epoch value ("mean" weighted by batch size, "sum", "max", "min");
        `sync_dist=True` reduces it across ranks; `prog_bar` shows it in the progress bar; `logger=False`
        keeps it out of the loggers (it still reaches `trainer.callback_metrics`).
        """
        trainer = self._trainer
        if trainer is None:
            if not self._warned_unattached_log:
                self._warned_unattached_log = True
                warnings.warn(
                    f"self.log({name!r}) called while {type(self).__name__} is not attached to a Trainer; "
                    "the value is dropped",
                    stacklevel=2,
                )
            return
        trainer._metrics.log(
            name,
            value,
            prog_bar,
            True if logger is None else logger,
            on_step,
            on_epoch,
            reduce_fx,
            sync_dist,
            batch_size,
            add_dataloader_idx,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """`self.log` every item of `dictionary` with the same options."""
        for name, value in dictionary.items():
            self.log(
                name,
                value,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                sync_dist=sync_dist,
                add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size,
            )

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print` on global rank zero only."""
        if self._trainer is None or self._trainer.is_global_zero:
            builtins.print(*args, **kwargs)

    # -- properties ----------------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The `Trainer` running this module; an error when none is."""
        if self._trainer is None and not self.__dict__.get("_jit_is_scripting", False):
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer (call trainer.fit first)")
        return self._trainer  # type: ignore[return-value]  # None only while scripting

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        object.__setattr__(self, "_trainer", trainer)

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters (CPU when it has none)."""
        for tensor in self.parameters():
            return tensor.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter (float32 when there is none)."""
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes of the job (0 without a trainer)."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its node (0 without a trainer)."""
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def current_epoch(self) -> int:
        """The epoch being trained (0 without a trainer)."""
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (0 without a trainer)."""
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def automatic_optimization(self) -> bool:
        """True (default): the trainer calls backward and steps; False: `training_step` does it itself."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, automatic: bool) -> None:
        self._automatic_optimization = automatic

    @property
    def example_input_array(self) -> Any:
        """An example input for `forward` (used by `to_torchscript(method="trace")` and summaries)."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    @property
    def logger(self) -> Any:
        """The trainer's first logger (None without one)."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """The trainer's loggers."""
        return self._trainer.loggers if self._trainer is not None else []

    # -- optimizers ----------------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers of `configure_optimizers`: one, or a list when there are several.

        With `use_pl_optimizer=True` (default) they are wrapped so that `step()` goes through the precision
        plugin and the step hooks, and counts in `global_step`.
        """
        trainer = self.trainer
        optimizers: list[Any] = trainer._optimizer_wrappers if use_pl_optimizer else trainer.optimizers
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def lr_schedulers(self) -> Any:
        """The learning-rate schedulers: None, one, or a list when there are several."""
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward in manual optimization: fires the backward hooks and applies precision (scaling)."""
        self.trainer._optimization.backward(loss, *args, **kwargs)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Compute gradients of `loss`; override for a custom backward."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: torch.optim.Optimizer | TrainerOptimizer) -> None:
        """Let only `optimizer`'s parameters require grad (GANs); `untoggle_optimizer` undoes it."""
        target = getattr(optimizer, "optimizer", optimizer)
        own = {id(p) for group in target.param_groups for p in group["params"]}
        for other in self.trainer.optimizers:
            for group in other.param_groups:
                for param in group["params"]:
                    if id(param) in own:
                        continue
                    self._param_requires_grad_state.setdefault(param, param.requires_grad)
                    param.requires_grad = False

    def untoggle_optimizer(self, optimizer: torch.optim.Optimizer | TrainerOptimizer) -> None:
        """Restore the `requires_grad` flags that `toggle_optimizer` changed."""
        for param, requires_grad in self._param_requires_grad_state.items():
            param.requires_grad = requires_grad
        self._param_requires_grad_state = {}

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step `optimizer`; override to change when or how (warm-up by hand, for instance)."""
        optimizer.step(closure=optimizer_closure)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step `scheduler` (with the monitored `metric` for ReduceLROnPlateau); override for custom ones."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Zero the gradients of `optimizer`."""
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip gradients before the step; by default with the Trainer's `gradient_clip_val`/`_algorithm`."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients of `optimizer`'s parameters by norm (default) or by value."""
        if not gradient_clip_val:
            return
        target = getattr(optimizer, "optimizer", optimizer)
        params = [p for group in target.param_groups for p in group["params"] if p.grad is not None]
        algorithm = gradient_clip_algorithm or "norm"
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        elif algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            raise MisconfigurationError(
                f"gradient_clip_algorithm={algorithm!r} is not supported; use 'norm' or 'value'"
            )

    # -- hooks (each does nothing unless overridden) -------------------------------------------------
    def prepare_data(self) -> None:
        """Download or write data once (per node with `prepare_data_per_node`, else per job)."""

    def setup(self, stage: str) -> None:
        """Build what needs the data or the rank layout; `stage` is "fit", "validate", "test" or "predict"."""

    def teardown(self, stage: str) -> None:
        """Release what `setup` built."""

    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Runs before each training batch; return -1 to skip the rest of the epoch."""
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Any) -> None: ...
    def on_before_zero_grad(self, optimizer: Any) -> None: ...

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch before it moves to the device."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a batch (tensors inside lists, tuples and dicts) to `device`."""
        from trainer_core.loops.data import move_to_device

        return move_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch after it moved to the device."""
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to (or change) the checkpoint dict before it is written."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what `on_save_checkpoint` added, before the weights are loaded."""

    # -- freezing and export -------------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop every parameter's gradient and switch to eval mode."""
        for param in self.parameters():
            param.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        """Let every parameter have gradients again and switch to train mode."""
        for param in self.parameters():
            param.requires_grad = True
        self.train()

    def to_torchscript(
        self,
        file_path: str | os.PathLike[str] | None = None,
        method: str = "script",
        example_inputs: Any = None,
        **kwargs: Any,
    ) -> torch.jit.ScriptModule:
        """Export with TorchScript ("script" or "trace", in eval mode); saved to `file_path` if given."""
        from trainer_core.export import to_torchscript

        return to_torchscript(self, file_path, method, example_inputs, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike[str],
        map_location: Any = None,
        hparams_file: str | os.PathLike[str] | None = None,
        strict: bool = True,
        **overrides: Any,
    ) -> Any:
        """A new module built from the checkpoint's hyperparameters (plus `overrides`) with its weights."""
        from trainer_core.export import build_from_checkpoint

        return build_from_checkpoint(cls, checkpoint_path, map_location, strict, overrides)
