"""One training batch's optimization: the closure, backward, accumulation, clipping and the optimizer step."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from trainer_core import ddp
from trainer_core.errors import MisconfigurationError
from trainer_core.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from trainer_core.callbacks.dispatch import HookDispatcher
    from trainer_core.module import TrainingModule
    from trainer_core.state import LoopProgress

log = logging.getLogger(__name__)


class TrainerOptimizer:
    """What `self.optimizers()` returns: the user's optimizer, whose `step` runs the trainer's step path.

    `step(closure)` runs the closure, unscales (mixed precision), fires `on_before_optimizer_step`, clips (in
    automatic optimization), then steps through the precision plugin; in manual optimization each call counts
    one `global_step`. Every other attribute is the wrapped optimizer's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, optimization: Optimization) -> None:
        self.optimizer = optimizer
        self._optimization = optimization

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Run `closure` (if any), then the hooks, clipping and the precision-aware optimizer step."""
        return self._optimization.optimizer_step(self, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["optimizer"], name)

    def __repr__(self) -> str:
        return f"TrainerOptimizer({self.optimizer!r})"


class _Closure:
    """training_step + (zero_grad at a window's start) + backward; keeps the step's output and loss."""

    __slots__ = ("batch", "batch_idx", "loss", "optimization", "output", "zero_grad")

    def __init__(self, optimization: Optimization, batch: Any, batch_idx: int, zero_grad: bool) -> None:
        self.optimization = optimization
        self.batch = batch
        self.batch_idx = batch_idx
        self.zero_grad = zero_grad
        self.output: Any = None
        self.loss: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor | None:
        opt = self.optimization
        self.output = opt.training_step(self.batch, self.batch_idx)
        loss = opt.extract_loss(self.output)
        if self.zero_grad:
            opt.zero_grad(self.batch_idx)
        if loss is None:
            return None
        self.loss = loss
        if opt.accumulate_grad_batches > 1:
            loss = loss / opt.accumulate_grad_batches
        opt.backward(loss)
        return self.loss


class Optimization:
    """The optimization of training batches for one fit: automatic (the trainer steps) or manual."""

    def __init__(
        self,
        module: TrainingModule,
        dispatch: HookDispatcher,
        precision: Any,
        optimizers: Sequence[torch.optim.Optimizer],
        progress: LoopProgress,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        ddp: DistributedDataParallel | None = None,
    ) -> None:
        self.module = module
        # With several ranks, the DDP wrapper: calling it runs `training_step` and arms the gradient sync.
        self.ddp = ddp
        self.dispatch = dispatch
        self.precision = precision
        self.progress = progress
        self.automatic = module.automatic_optimization
        self.accumulate_grad_batches = accumulate_grad_batches if self.automatic else 1
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.wrappers = [TrainerOptimizer(optimizer, self) for optimizer in optimizers]
        self._step_end = getattr(module, "training_step_end", None)  # the Lightning 1.x hook, when defined
        self._custom_backward = type(module).backward is not _module_base().backward  # type: ignore[attr-defined]
        self._clips = bool(gradient_clip_val) or _overrides_clipping(module)
        self._warned_none = False
        self.stepped = False  # an optimizer stepped during the current batch

    # -- the pieces ----------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        with self.precision.autocast():
            if self.ddp is not None:
                output = self.ddp(batch, batch_idx)
            else:
                output = self.module.training_step(batch, batch_idx)
        if self._step_end is not None:
            output = self._step_end(output)
        return output

    def extract_loss(self, output: Any) -> torch.Tensor | None:
        """The loss in a `training_step` output (a tensor, or a dict's "loss"); None skips the step."""
        if isinstance(output, torch.Tensor):
            return output
        if output is None:
            if not self._warned_none:
                self._warned_none = True
                rank_zero_warn(
                    "training_step returned None: the optimizer step of that batch is skipped (this warning "
                    "is shown once). Return the loss tensor to train on every batch."
                )
            return None
        if isinstance(output, dict):
            if "loss" not in output:
                raise MisconfigurationError(
                    f"training_step returned a dict without a 'loss' key (keys: {sorted(output)}); add "
                    "'loss': <the loss tensor> or return the tensor itself"
                )
            return output["loss"]  # type: ignore[no-any-return]
        raise MisconfigurationError(
            f"training_step returned a {type(output).__name__}; return the loss tensor, a dict with a 'loss' "
            "key, or None to skip the batch"
        )

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """The backward path of both modes: hooks around the (precision-aware) backward."""
        self.dispatch.fire("on_before_backward", loss)
        if self.ddp is not None and not self.automatic:
            # DDP armed nothing for a backward inside training_step (manual_backward): arm it now.
            ddp.prepare_for_manual_backward(self.ddp, loss)
        if self._custom_backward:
            # A user's `backward` override gets the loss as the precision plugin would scale it.
            self.module.backward(self.precision.scale(loss) if hasattr(self.precision, "scale") else loss)
        elif args or kwargs:
            self.precision.backward(loss, *args, **kwargs)
        else:
            self.precision.backward(loss)
        self.dispatch.fire("on_after_backward")

    def zero_grad(self, batch_idx: int) -> None:
        for wrapper in self.wrappers:
            self.dispatch.fire("on_before_zero_grad", wrapper.optimizer)
            self.module.optimizer_zero_grad(self.progress.epoch, batch_idx, wrapper)

    def optimizer_step(self, wrapper: TrainerOptimizer, closure: Callable[[], Any] | None) -> Any:
        """What `TrainerOptimizer.step` does (see its docstring)."""
        result = closure() if closure is not None else None
        if self.automatic and result is None:
            return None  # training_step returned None: no backward happened, so no step
        optimizer = wrapper.optimizer
        self.precision.unscale(optimizer)
        self.dispatch.fire("on_before_optimizer_step", optimizer)
        if self.automatic and self._clips:
            self.module.configure_gradient_clipping(
                wrapper, self.gradient_clip_val, self.gradient_clip_algorithm
            )
        self.precision.step(optimizer)
        self.precision.update()
        self.stepped = True
        if not self.automatic:
            self.progress.global_step += 1
        return result

    # -- one batch -----------------------------------------------------------------------------------
    def run(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        """Train on one batch; return `training_step`'s output."""
        self.stepped = False
        if not self.automatic:
            output = self.training_step(batch, batch_idx)
            self.stepped = True  # Lightning counts every manual batch as a stepped batch
            return output
        progress = self.progress
        closure = _Closure(self, batch, batch_idx, zero_grad=progress.accumulated_batches == 0)
        if (progress.accumulated_batches + 1) % self.accumulate_grad_batches == 0 or is_last:
            self.module.optimizer_step(progress.epoch, batch_idx, self.wrappers[0], closure)
            progress.accumulated_batches = 0
            if self.stepped:
                progress.global_step += 1
        else:
            # Gradients of a micro-batch that does not end the window stay local: one all-reduce per step.
            with self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext():
                closure()
            progress.accumulated_batches += 1
        return closure.output


def _module_base() -> type:
    from trainer_core.module import TrainingModule

    return TrainingModule


def _overrides_clipping(module: TrainingModule) -> bool:
    base = _module_base()
    return type(module).configure_gradient_clipping is not base.configure_gradient_clipping  # type: ignore[attr-defined]
