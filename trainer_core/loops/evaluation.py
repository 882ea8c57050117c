"""The evaluation loop (validation, test, and the sanity check): eval mode, no grad, several dataloaders."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from trainer_core.loops.data import LookAhead

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer

# Per run kind: the hook prefix, the metric stage and what `trainer._running` says.
_KINDS = {
    "validate": ("validation", "validate"),
    "sanity_check": ("validation", "sanity_check"),
    "test": ("test", "test"),
}


def eval_context(trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
    """`torch.inference_mode` (Trainer(inference_mode=True), the default) or `torch.no_grad`."""
    return torch.inference_mode() if trainer.settings.inference_mode else torch.no_grad()


class ModesKept:
    """Put a module in eval mode and give every submodule back the mode it had (frozen parts stay frozen)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._modes = [(sub, sub.training) for sub in module.modules()]
        module.eval()

    def restore(self) -> None:
        for sub, training in self._modes:
            sub.training = training


class EvaluationLoop:
    """One pass over the validation (or test) dataloaders; returns one metric dict per dataloader.

    With `stop_check` (fit's validation), the loop asks it between batches whether to stop (a preemption
    signal); when it says so, the pass ends there with `interrupted` set, skipping the epoch end and the end
    hooks. Every rank asks at the same batch indices: only before the last batch that every rank has (the
    ranks' shares of the data can differ by a batch), agreed once when the pass starts.
    """

    def __init__(self, trainer: Trainer, kind: str, stop_check: Callable[[], bool] | None = None) -> None:
        self.trainer = trainer
        self.kind = kind
        self.stop_check = stop_check
        self.interrupted = False
        self.prefix, self.running = _KINDS[kind]
        self.stage = kind  # the metric stage: sanity-check values never mix with validation ones
        self.module = trainer.lightning_module
        loaders = trainer.test_dataloaders if kind == "test" else trainer.val_dataloaders
        limits = {"test": trainer.num_test_batches, "sanity_check": trainer.num_sanity_val_batches}
        self.loaders = list(zip(loaders, limits.get(kind, trainer.num_val_batches)))
        module_type = type(self.module)
        self._step = getattr(self.module, f"{self.prefix}_step")
        self._step_end = getattr(self.module, f"{self.prefix}_step_end", None)
        self._epoch_end = getattr(self.module, f"{self.prefix}_epoch_end", None)
        self._collect = getattr(module_type, f"{self.prefix}_epoch_end", None) is not None

    def run(self) -> list[dict[str, float]]:
        trainer, dispatch, metrics = self.trainer, self.trainer._dispatch, self.trainer._metrics
        assert dispatch is not None
        previous_running, previous_stage = trainer._running, metrics.stage
        trainer._running, metrics.stage, metrics.in_train_step = self.running, self.stage, False
        modes = ModesKept(self.module)
        try:
            with eval_context(trainer):
                dispatch.fire(f"on_{self.prefix}_start")
                metrics.begin_epoch(self.stage)
                dispatch.fire(f"on_{self.prefix}_epoch_start")
                outputs = []
                for idx, ((loader, limit), checks) in enumerate(zip(self.loaders, self._check_counts())):
                    outputs.append(self._run_dataloader(idx, loader, limit, checks))
                    if self.interrupted:
                        return []
                values = self._end_epoch(outputs)
                dispatch.fire(f"on_{self.prefix}_end")
        finally:
            modes.restore()
            trainer._running, metrics.stage = previous_running, previous_stage
            metrics.dataloader_suffix = ""
        return self._results(values)

    def _check_counts(self) -> list[int | float]:
        """Per dataloader: after how many of its first batches to ask `stop_check` (the same on every rank).

        A check is pointless after the last batch (the pass ends anyway), and a rank with a batch more than
        the others must not make a check they do not make: the smallest count of batches of any rank, minus
        one. One blocking all-reduce per validation pass agrees on it.
        """
        if self.stop_check is None:
            return [0] * len(self.loaders)
        counts = torch.tensor([float(limit) for _, limit in self.loaders], dtype=torch.float64)
        if self.trainer.world_size > 1 and len(counts):
            counts = self.trainer.collectives.all_reduce(counts, "min")
        return [count - 1 for count in counts.tolist()]

    def _run_dataloader(
        self, dataloader_idx: int, loader: Any, limit: int | float, checks: int | float
    ) -> list[Any]:
        trainer, dispatch, metrics = self.trainer, self.trainer._dispatch, self.trainer._metrics
        assert dispatch is not None
        several = len(self.loaders) > 1
        metrics.dataloader_suffix = f"/dataloader_idx_{dataloader_idx}" if several else ""
        extra = (dataloader_idx,) if several else ()
        autocast = (
            trainer.precision_plugin.autocast
            if trainer.precision_plugin is not None
            else contextlib.nullcontext
        )
        outputs: list[Any] = []
        for batch_idx, batch, _ in LookAhead(loader, limit):
            batch = trainer._to_device(batch, dataloader_idx)
            metrics.set_batch(batch)
            dispatch.fire(f"on_{self.prefix}_batch_start", batch, batch_idx, *extra)
            with autocast():
                output = self._step(batch, batch_idx, *extra)
            if self._step_end is not None:
                output = self._step_end(output)
            dispatch.fire(f"on_{self.prefix}_batch_end", output, batch, batch_idx, *extra)
            if self._collect:
                outputs.append(output)
            if batch_idx < checks and self.stop_check is not None and self.stop_check():
                self.interrupted = True
                break
        metrics.dataloader_suffix = ""
        return outputs

    def _end_epoch(self, outputs: list[list[Any]]) -> dict[str, Any]:
        trainer, dispatch, metrics = self.trainer, self.trainer._dispatch, self.trainer._metrics
        assert dispatch is not None
        if self._collect and self._epoch_end is not None:
            self._epoch_end(outputs[0] if len(outputs) == 1 else outputs)
        values = metrics.end_epoch(self.stage)
        dispatch.epoch_end(
            f"on_{self.prefix}_epoch_end", between=lambda: values.update(metrics.end_epoch(self.stage))
        )
        values.update(metrics.end_epoch(self.stage))
        if self.kind != "sanity_check":
            trainer._log_epoch_metrics(values)
        return values

    def _results(self, values: dict[str, Any]) -> list[dict[str, float]]:
        """One dict per dataloader: its own `/dataloader_idx_N` metrics and the shared ones."""
        from trainer_core.metrics import to_floats

        floats = dict(zip(values, to_floats([value for _, value in values.values()])))
        results = []
        for idx in range(len(self.loaders)):
            suffix = f"/dataloader_idx_{idx}"
            results.append(
                {
                    name: value
                    for name, value in floats.items()
                    if "/dataloader_idx_" not in name or name.endswith(suffix)
                }
            )
        return results
