"""`Precision`: the autocast context, the fp16 grad scaler, and backward/unscale/step for each setting.

| setting                 | forward                 | weights | grad scaler                   |
| ----------------------- | ----------------------- | ------- | ----------------------------- |
| "32-true", 32, "32"     | float32                 | float32 | none                          |
| "16-mixed", 16, "16"    | float16 autocast (CUDA) | float32 | `torch.amp.GradScaler`        |
| "bf16-mixed", "bf16"    | bfloat16 autocast       | float32 | none (bf16 has fp32's range)  |
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from trainer_core.errors import MisconfigurationError

_ALIASES: dict[str, str] = {
    "32-true": "32-true",
    "32": "32-true",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    "bf16-mixed": "bf16-mixed",
    "bf16": "bf16-mixed",
}
VALID_SETTINGS = ('"32-true"', "32", '"16-mixed"', "16", '"bf16-mixed"', '"bf16"')


class Precision:
    """How the forward runs (autocast) and how the backward and the optimizer step treat the loss scale."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self._dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(name)
        self.scaler: torch.amp.GradScaler | None = None
        if name == "16-mixed":
            self.scaler = torch.amp.GradScaler(device.type)

    @classmethod
    def from_setting(cls, precision: str | int, device: torch.device) -> Precision:
        """The `Precision` for a `Trainer(precision=...)` value on `device`; refuses what cannot work."""
        name = _ALIASES.get(str(precision)) if not isinstance(precision, bool) else None
        if name is None:
            raise MisconfigurationError(
                f"Trainer(precision={precision!r}) is not a supported precision. "
                f"Use one of {', '.join(VALID_SETTINGS)}."
            )
        if name == "16-mixed" and device.type != "cuda":
            raise MisconfigurationError(
                f"Trainer(precision={precision!r}) needs a CUDA device, and this run is on {device.type}: "
                'float16 autocast on CPU is slow and many ops lack it. Use precision="bf16-mixed" on CPU '
                'or precision="32-true".'
            )
        return cls(name, device)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for full precision."""
        return self._dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward (training/validation/test/predict step) runs in."""
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` multiplied by the grad scaler's current scale (unchanged without a scaler).

        A module that overrides `backward` receives this scaled loss, as in Lightning, so that its own
        `loss.backward()` produces gradients the scaler can unscale before the step.
        """
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """`loss.backward()`, with the loss scaled first when a grad scaler is on."""
        self.scale(loss).backward(*args, **kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping or inspecting them)."""
        if self.scaler is not None:
            # GradScaler raises if unscale_ runs twice for one step; clipping then stepping must not trip it.
            state = self.scaler._per_optimizer_states[id(optimizer)]
            if state["stage"] is not _unscaled_stage():
                self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        """Step `optimizer`; True when it stepped, False when the scaler skipped it (inf/NaN gradients).

        With a scaler the closure (forward and backward) runs first, because a scaled step cannot take one.
        """
        if self.scaler is None:
            optimizer.step(closure) if closure is not None else optimizer.step()
            return True
        if closure is not None:
            closure()
        self.unscale(optimizer)
        self.scaler.step(optimizer)
        found_inf = self.scaler._found_inf_per_device(optimizer)
        return not any(bool(value.item()) for value in found_inf.values())

    def update(self) -> None:
        """Adjust the loss scale after the step(s) of one iteration."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state for the checkpoint's `precision` entry ({} without a scaler)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; an empty state (a run without a scaler) changes nothing."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, device={self.device})"


def _unscaled_stage() -> Any:
    from torch.amp.grad_scaler import OptState

    return OptState.UNSCALED
