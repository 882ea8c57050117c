"""DDP wrapping: what `Trainer(strategy=...)` means, and the wrapper whose forward is the training step.

No collective is called here; `trainer_core.distributed` owns the process group. Wrapping a module is the
one step that talks to the other ranks (DDP broadcasts rank zero's weights): every rank wraps at one point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer_core.errors import MisconfigurationError

# As torch's own default for a process group.
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass
class DDPStrategy:
    """How the model is wrapped in `DistributedDataParallel` and how long collectives may take."""

    # Let DDP tolerate parameters that get no gradient in a step (costs a graph traversal every step).
    find_unused_parameters: bool = False
    # The graph is the same every step: DDP can skip re-checking it and overlap more.
    static_graph: bool = False
    # Gradients are views into DDP's communication buckets: saves a copy and memory.
    gradient_as_bucket_view: bool = True
    # How long a collective may wait for the other ranks before the job fails.
    timeout: timedelta = DEFAULT_TIMEOUT
    # "nccl" or "gloo"; None picks NCCL on GPUs and Gloo on CPUs.
    process_group_backend: str | None = None


_STRATEGIES: dict[str, Callable[[], DDPStrategy | None]] = {
    "auto": DDPStrategy,
    "ddp": DDPStrategy,
    "ddp_find_unused_parameters_true": lambda: DDPStrategy(find_unused_parameters=True),
    "ddp_find_unused_parameters_false": DDPStrategy,
    "single_device": lambda: None,
}


def resolve_strategy(setting: str | DDPStrategy) -> DDPStrategy | None:
    """The DDP settings a `Trainer(strategy=...)` value means; None for "single_device" (no wrapping).

    "auto" means DDP when the job has several ranks; the trainer wraps only then.
    """
    if isinstance(setting, DDPStrategy):
        return setting
    if setting not in _STRATEGIES:
        raise MisconfigurationError(
            f"strategy={setting!r} is not supported. HINT: use one of {sorted(_STRATEGIES)} or a "
            "DDPStrategy(...) instance; launch several ranks with `launch trainer.devices=N` or torchrun "
            "instead of a spawning strategy."
        )
    return _STRATEGIES[setting]()


class _TrainingStepForward(nn.Module):
    """Routes DDP's `forward` to the user's `training_step`.

    DDP arms its gradient all-reduce in `forward`; calling `training_step` directly would skip that and leave
    every rank with its own gradients.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.after_step: Callable[[], None] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        training_step: Callable[..., Any] = self.module.training_step  # type: ignore[assignment]
        output = training_step(*args, **kwargs)
        if self.after_step is not None:
            self.after_step()
        return output


class _TrainingStepDDP(DistributedDataParallel):
    """DDP whose forward is the training step; with manual optimization the step's backward has already run.

    `prepare_for_manual_backward` armed the gradient sync for that backward, so DDP must not arm it again
    after the step (it would wait for a second backward), as Lightning does for manual optimization.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        router: _TrainingStepForward = self.module
        if getattr(router.module, "automatic_optimization", True):
            return super().forward(*args, **kwargs)
        sync = self.require_backward_grad_sync
        router.after_step = self._skip_arming
        try:
            return super().forward(*args, **kwargs)
        finally:
            router.after_step = None
            self.require_backward_grad_sync = sync

    def _skip_arming(self) -> None:
        self.require_backward_grad_sync = False


def wrap_model(
    module: nn.Module, device: torch.device, strategy: DDPStrategy, sync_batchnorm: bool = False
) -> DistributedDataParallel:
    """Wrap a module already on `device` for DDP; calling the result runs `module.training_step`.

    With `sync_batchnorm`, BatchNorm layers become `SyncBatchNorm` in place (statistics over all ranks).
    Validation, test and predict steps call the unwrapped module directly: they need no gradient sync.
    With `automatic_optimization = False`, the step's `manual_backward` must call
    `prepare_for_manual_backward(wrapped, loss)` before `loss.backward()`.
    """
    if sync_batchnorm and device.type != "cuda":
        raise MisconfigurationError(
            f"sync_batchnorm=True on device {device}: torch's SyncBatchNorm runs on GPUs only. "
            "HINT: set sync_batchnorm=False on CPU, or use accelerator='gpu'."
        )
    if sync_batchnorm:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _TrainingStepDDP(
        _TrainingStepForward(module),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=strategy.find_unused_parameters,
        static_graph=strategy.static_graph,
        gradient_as_bucket_view=strategy.gradient_as_bucket_view,
    )


def prepare_for_manual_backward(model: DistributedDataParallel, loss: torch.Tensor) -> None:
    """Arm DDP's gradient sync for a backward that runs inside `training_step` (manual optimization).

    DDP arms it after `forward` returns, too late for `self.manual_backward(loss)` inside the step; this does
    it for `loss`, as Lightning does. Inside `model.no_sync()` it does nothing.
    """
    if not (torch.is_grad_enabled() and model.require_backward_grad_sync):
        return
    model.require_forward_param_sync = True
    unused_search = model.find_unused_parameters and not model.static_graph
    outputs = list(torch.nn.parallel.distributed._find_tensors(loss)) if unused_search else []
    reducer: Any = model.reducer
    reducer._rebuild_buckets()
    reducer.prepare_for_backward(outputs)
