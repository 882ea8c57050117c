"""`ModelSummary`: the table of layers, types, parameter counts and modes shown at the start of `fit`."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from torch import nn

from trainer_core.callbacks.base import Callback
from trainer_core.errors import MisconfigurationError

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

_UNITS = [" ", "K", "M", "B", "T"]


class ModelSummary(Callback):
    """Log the model summary on global rank zero when `fit` starts.

    `max_depth=1` lists the module's direct children, `-1` every submodule, `0` nothing.
    """

    def __init__(self, max_depth: int = 1) -> None:
        if max_depth < -1:
            raise MisconfigurationError(
                f"ModelSummary(max_depth={max_depth}) is not valid: use -1 (all layers), 0 (none) or n >= 1."
            )
        self._max_depth = max_depth

    def on_fit_start(self, trainer: Trainer, pl_module: TrainingModule) -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        log.info("\n%s", summarize(pl_module, self._max_depth))


def get_human_readable_count(number: int) -> str:
    """`123` -> `"123  "`, `50_400` -> `"50.4 K"`, `1_234_567` -> `"1.2 M"` (Lightning's format)."""
    if number < 0:
        raise ValueError(f"a parameter count cannot be negative, got {number}")
    num_digits = int(math.floor(math.log10(number)) + 1) if number > 0 else 1
    num_groups = min(math.ceil(num_digits / 3), len(_UNITS))
    scaled = number * 10 ** (-3 * (num_groups - 1))
    index = num_groups - 1
    if index < 1 or scaled >= 100:
        return f"{int(scaled):,d} {_UNITS[index]}"
    return f"{scaled:,.1f} {_UNITS[index]}"


def _num_params(module: nn.Module, trainable_only: bool = False) -> int:
    total = 0
    for parameter in module.parameters():
        if isinstance(parameter, nn.parameter.UninitializedParameter):
            continue  # a lazy layer has no size until its first forward
        if trainable_only and not parameter.requires_grad:
            continue
        total += parameter.numel()
    return total


def _layers(module: nn.Module, max_depth: int) -> list[tuple[str, nn.Module]]:
    layers = [(name, child) for name, child in module.named_modules() if name]
    if max_depth >= 0:
        layers = [(name, child) for name, child in layers if name.count(".") < max_depth]
    return layers


def summarize(module: nn.Module, max_depth: int = 1) -> str:
    """The summary table of `module` as text: layers down to `max_depth` (-1: all), then the totals."""
    layers = _layers(module, max_depth)
    columns = [
        (" ", [str(index) for index in range(len(layers))]),
        ("Name", [name for name, _ in layers]),
        ("Type", [type(layer).__name__ for _, layer in layers]),
        ("Params", [get_human_readable_count(_num_params(layer)).rstrip() for _, layer in layers]),
        ("Mode", ["train" if layer.training else "eval" for _, layer in layers]),
    ]
    widths = [max([len(header), *(len(cell) for cell in cells)]) for header, cells in columns]
    rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
    lines = [" | ".join(header.ljust(width) for (header, _), width in zip(columns, widths)), rule]
    for row in range(len(layers)):
        lines.append(" | ".join(cells[row].ljust(width) for (_, cells), width in zip(columns, widths)))
    lines.append(rule)
    lines.extend(_totals(module))
    return "\n".join(lines)


def _totals(module: nn.Module) -> list[str]:
    total = _num_params(module)
    trainable = _num_params(module, trainable_only=True)
    submodules = list(module.modules())[1:]
    in_train = sum(1 for layer in submodules if layer.training)
    size_mb = (
        sum(
            p.numel() * p.element_size()
            for p in module.parameters()
            if not isinstance(p, nn.parameter.UninitializedParameter)
        )
        / 1e6
    )
    return [
        f"{get_human_readable_count(trainable):<10}Trainable params",
        f"{get_human_readable_count(total - trainable):<10}Non-trainable params",
        f"{get_human_readable_count(total):<10}Total params",
        f"{size_mb:<10,.3f}Total estimated model params size (MB)",
        f"{in_train:<10}Modules in train mode",
        f"{len(submodules) - in_train:<10}Modules in eval mode",
    ]
