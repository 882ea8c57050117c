"""The predict loop: `predict_step` on every batch in eval mode without grad, outputs kept in order.

With several ranks each rank predicts its own shard (every sample on exactly one rank), and rank zero gets
every rank's outputs back in dataset order; the other ranks return None.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, IterableDataset

from trainer_core import samplers
from trainer_core.loops.data import LookAhead
from trainer_core.loops.evaluation import ModesKept, eval_context

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer


class PredictLoop:
    """Runs `predict_step` over the predict dataloaders."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.module = trainer.lightning_module
        self.loaders = list(zip(trainer.predict_dataloaders, trainer.num_predict_batches))
        self.keep = getattr(trainer, "_return_predictions", True)

    def run(self) -> list[Any] | None:
        """The outputs of every batch in order: one list, or a list per dataloader when there are several.

        With several ranks: all ranks' outputs in dataset order on rank zero, None on the other ranks.
        """
        trainer, dispatch = self.trainer, self.trainer._dispatch
        assert dispatch is not None
        trainer._running, trainer._metrics.stage = "predict", "predict"
        modes = ModesKept(self.module)
        try:
            with eval_context(trainer):
                dispatch.fire("on_predict_start")
                dispatch.fire("on_predict_epoch_start")
                predictions = [
                    self._run_dataloader(i, loader, limit) for i, (loader, limit) in enumerate(self.loaders)
                ]
                dispatch.fire("on_predict_epoch_end")
                dispatch.fire("on_predict_end")
        finally:
            modes.restore()
        if not self.keep:
            return None
        if trainer.world_size > 1:
            loaders = [loader for loader, _ in self.loaders]
            predictions = [self._collect(lo, outputs) for lo, outputs in zip(loaders, predictions)]
            if not trainer.is_global_zero:
                return None
        return predictions[0] if len(predictions) == 1 else predictions

    def _collect(self, loader: Any, outputs: list[Any]) -> list[Any]:
        """Every rank's outputs of one dataloader, in dataset order (on rank zero; [] elsewhere)."""
        collectives = self.trainer.collectives
        if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            # No indices to order by: rank zero's outputs, then rank one's, and so on.
            gathered = collectives.all_gather_object(outputs)
            return [output for rank_outputs in gathered for output in rank_outputs]
        indices = samplers.batch_indices(loader)[: len(outputs)]
        merged = samplers.collect_predictions(collectives, outputs, indices)
        return merged if merged is not None else []

    def _run_dataloader(self, dataloader_idx: int, loader: Any, limit: int | float) -> list[Any]:
        trainer, dispatch = self.trainer, self.trainer._dispatch
        assert dispatch is not None
        extra = (dataloader_idx,) if len(self.loaders) > 1 else ()
        autocast = (
            trainer.precision_plugin.autocast
            if trainer.precision_plugin is not None
            else contextlib.nullcontext
        )
        outputs: list[Any] = []
        for batch_idx, batch, _ in LookAhead(loader, limit):
            batch = trainer._to_device(batch, dataloader_idx)
            dispatch.fire("on_predict_batch_start", batch, batch_idx, *extra)
            with autocast():
                output = self.module.predict_step(batch, batch_idx, *extra)
            dispatch.fire("on_predict_batch_end", output, batch, batch_idx, *extra)
            if self.keep:
                outputs.append(output)
        return outputs
