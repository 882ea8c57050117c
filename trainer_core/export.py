"""Leaving the trainer: TorchScript export and modules rebuilt from a checkpoint (`load_from_checkpoint`)."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import torch

from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule


@torch.no_grad()
def to_torchscript(
    module: TrainingModule,
    file_path: str | os.PathLike[str] | None,
    method: str,
    example_inputs: Any,
    **kwargs: Any,
) -> torch.jit.ScriptModule:
    """`module` scripted or traced in eval mode (its mode restored after); saved to `file_path` if given."""
    was_training = module.training
    module.eval()
    # TorchScript reads every attribute while compiling; `trainer` must not raise meanwhile.
    object.__setattr__(module, "_jit_is_scripting", True)
    try:
        if method == "script":
            exported = torch.jit.script(module, **kwargs)
        elif method == "trace":
            exported = torch.jit.trace(module, _trace_inputs(module, example_inputs), **kwargs)
        else:
            raise MisconfigurationError(f"to_torchscript(method={method!r}): use 'script' or 'trace'")
    finally:
        object.__setattr__(module, "_jit_is_scripting", False)
        module.train(was_training)
    if file_path is not None:
        torch.jit.save(exported, os.fspath(file_path))
    return exported


def _trace_inputs(module: TrainingModule, example_inputs: Any) -> Any:
    inputs = example_inputs if example_inputs is not None else module.example_input_array
    if inputs is None:
        raise MisconfigurationError(
            "to_torchscript(method='trace') needs inputs: pass example_inputs=... or set "
            "self.example_input_array in __init__"
        )
    from trainer_core.loops.data import move_to_device

    return move_to_device(inputs, module.device)


def build_from_checkpoint(
    cls: type[TrainingModule],
    checkpoint_path: str | os.PathLike[str],
    map_location: Any,
    strict: bool,
    overrides: dict[str, Any],
) -> Any:
    """A new `cls` built from the checkpoint's hyperparameters (plus `overrides`), holding its weights."""
    from trainer_core import checkpoint as checkpoint_io

    checkpoint = checkpoint_io.load(checkpoint_path, map_location=map_location)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.update(overrides)
    model = cls(**_init_kwargs(cls, hparams))
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=strict)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model


def _init_kwargs(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters `cls.__init__` accepts (all of them when it takes `**kwargs`)."""
    parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return hparams
    return {name: value for name, value in hparams.items() if name in parameters}
