"""The fit loop: sanity check, epochs, training batches, validation checks, epoch ends and stopping."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from trainer_core import optim, seed
from trainer_core.checkpoint import io as checkpoint_io
from trainer_core.checkpoint import layout
from trainer_core.errors import MisconfigurationError
from trainer_core.loops.data import LookAhead, resumable_loader, start_loader_at
from trainer_core.loops.evaluation import EvaluationLoop

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

# What happens after a training batch: go on, end the epoch (should_stop, max_steps), or stop for a signal.
CONTINUE, END_EPOCH, PREEMPTED = "continue", "end_epoch", "preempted"


class FitLoop:
    """Runs `fit` after setup; every counter lives in `trainer.progress` so a checkpoint captures it."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.settings = trainer.settings
        self.progress = trainer.progress
        self.module = trainer.lightning_module
        self.dispatch = trainer._dispatch
        self.metrics = trainer._metrics
        self.optimization = trainer._optimization
        self.automatic = self.module.automatic_optimization
        self._collect = getattr(type(self.module), "training_epoch_end", None) is not None
        self._step_schedulers = self.automatic and any(
            c.interval == "step" for c in trainer.lr_scheduler_configs
        )
        self._has_val = bool(trainer.val_dataloaders) and any(trainer.num_val_batches)
        self._has_val = self._has_val and _defines(self.module, "validation_step")
        self._writes_steps = True  # whether any rank has a logger: agreed in `run`
        self._buffers_asked_for = False  # checkpoint snapshot buffers, asked for after the first step
        # The module's `lr_scheduler_step(scheduler, metric)` replaces `scheduler.step()` when it defines one.
        self._scheduler_step_fn = (
            getattr(self.module, "lr_scheduler_step", None)
            if _defines(self.module, "lr_scheduler_step")
            else None
        )

    def run(self) -> None:
        trainer, dispatch = self.trainer, self.dispatch
        assert dispatch is not None
        self.votes = trainer.preemption.start_votes(trainer.collectives)
        # Step values are written (and their sync_dist values reduced, on every rank) only when some rank
        # has a logger: without one nothing reads them, and the reduction would cost every rank a round trip.
        self._writes_steps = any(trainer.collectives.all_gather_object(bool(trainer.loggers)))
        start_loggers(trainer, resumed=getattr(trainer, "ckpt_path", None) is not None)
        dispatch.fire("on_fit_start")
        self._sanity_check()
        trainer.train_dataloader = resumable_loader(trainer.train_dataloader, self._shuffle_seed())
        if not self.progress.resumes_mid_epoch:
            # Restored here, after the sanity check, whose dataloader iterators draw from the global RNG
            # (mid-epoch, only once the epoch's iterator exists: see `_resume_point`).
            self._resume_point()
        if self.progress.epoch_batches_done:
            self._step_epoch_schedulers()  # the epoch end the checkpoint was written in did not get there
            self.progress.finish_epoch()
        self.module.train()
        trainer._running = "train"
        dispatch.fire("on_train_start")
        while not self.done:
            # A signal at an epoch end (or before fit) is acted on at once: one blocking vote per epoch.
            if self._preempted(at_once=True) or self._run_epoch():
                return  # saved to last.ckpt; the end hooks are for a fit that finished
        self.votes.drain()
        trainer._running = "train"
        dispatch.fire("on_train_end")
        dispatch.fire("on_fit_end")

    @property
    def done(self) -> bool:
        s, progress = self.settings, self.progress
        if s.max_steps != -1 and progress.global_step >= s.max_steps:
            return True
        if s.max_epochs != -1 and progress.epoch >= s.max_epochs:
            return True
        return self.trainer.should_stop and self._can_stop_early

    @property
    def _min_steps_reached(self) -> bool:
        min_steps = self.settings.min_steps
        return min_steps is None or self.progress.global_step >= min_steps

    @property
    def _can_stop_early(self) -> bool:
        """Lightning's rule: a requested stop (EarlyStopping, should_stop) waits for min_epochs/min_steps."""
        min_epochs = self.settings.min_epochs
        return self._min_steps_reached and (min_epochs is None or self.progress.epoch >= min_epochs)

    def _sanity_check(self) -> None:
        trainer = self.trainer
        if not self._has_val or not any(trainer.num_sanity_val_batches):
            return
        assert self.dispatch is not None
        trainer._running = "sanity_check"
        self.dispatch.callbacks("on_sanity_check_start")
        EvaluationLoop(trainer, "sanity_check").run()
        self.dispatch.callbacks("on_sanity_check_end")
        trainer._running = None
        # Nothing the sanity check logged counts; metrics restored from a checkpoint come back (and the
        # running sums of an epoch resumed in its middle stay).
        self.metrics.reset(keep_stage="train")
        self.metrics.restore(trainer._restored_metrics)

    # -- one epoch --------------------------------------------------------------------------------------
    def _run_epoch(self) -> bool:
        """Train one epoch (or its rest, after a mid-epoch resume); True when a stop signal ended it."""
        trainer, progress, dispatch = self.trainer, self.progress, self.dispatch
        assert dispatch is not None
        start = progress.epoch_batches if progress.resumes_mid_epoch else 0
        if not start:
            progress.start_epoch()
            self.metrics.begin_epoch("train")  # mid-epoch, the restored running sums go on
        _set_epoch(trainer.train_dataloader, progress.epoch)
        skips_by_index = start_loader_at(trainer.train_dataloader, start)
        self.metrics.stage = "train"
        dispatch.fire("on_train_epoch_start")
        outputs: list[Any] = []
        waiting_since = time.perf_counter()  # data wait: from the end of one batch to the next one's arrival
        for batch_idx, batch, is_last in LookAhead(
            trainer.train_dataloader, trainer.num_training_batches, start, skip=not skips_by_index
        ):
            trainer.last_data_wait_s = time.perf_counter() - waiting_since
            self._resume_point()
            outcome = self._pending_validation()
            if outcome == CONTINUE:
                if self._run_batch(batch_idx, batch, is_last, outputs):
                    break
                outcome = self._after_batch(batch_idx, is_last)
            if outcome == PREEMPTED:
                return True
            if outcome == END_EPOCH:
                break
            waiting_since = time.perf_counter()
        else:
            self._resume_point()
            if self._pending_validation() == PREEMPTED:
                return True
        progress.epoch_batches_done = True
        self._end_epoch(outputs)
        return False

    def _after_batch(self, batch_idx: int, is_last: bool, validate: bool = False) -> str:
        """Validation when due, then the stop rules (should_stop, max_steps) and the preemption check."""
        checkpoint_io.raise_failure()  # a checkpoint that failed to commit stops training at once
        if not self._buffers_asked_for and self.progress.global_step > 0:
            self._ask_for_snapshot_buffers()
        validated = validate or self._should_validate(batch_idx, is_last)
        if validated and self._validate():
            return PREEMPTED
        if (self.trainer.should_stop and self._min_steps_reached) or self._max_steps_reached():
            if not validated and not is_last and self._validates_this_epoch():
                # A run stopped by max_steps still validates its last weights.
                return PREEMPTED if self._validate() else END_EPOCH
            return END_EPOCH
        return PREEMPTED if self._preempted() else CONTINUE

    def _ask_for_snapshot_buffers(self) -> None:
        """Once the optimizer state exists: the checkpoint snapshot's buffers are allocated on a helper
        thread before the first save point (pinned memory for GPU state takes about a second per few GB)."""
        self._buffers_asked_for = True
        trainer = self.trainer
        if not trainer.checkpoint_callbacks or not trainer.is_global_zero:
            return
        tensors = list(self.module.state_dict().values())
        for optimizer in trainer.optimizers:
            for state in optimizer.state.values():
                tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
        checkpoint_io.prepare(tensors)

    def _pending_validation(self) -> str:
        """After a resume from inside a validation: run it again from its start, then go on as after it."""
        if not self.progress.validation_pending:
            return CONTINUE
        batches = self.progress.epoch_batches
        return self._after_batch(batches - 1, batches >= self.trainer.num_training_batches, validate=True)

    # -- resume and preemption ----------------------------------------------------------------------------
    def _resume_point(self) -> None:
        """Put back the checkpoint's RNG states, once, right before training continues.

        After a mid-epoch resume this runs once the epoch's iterator exists and its first batch is read:
        creating a DataLoader iterator draws from the global RNG, which the run that never stopped did at
        the start of the epoch, before the checkpoint.
        """
        if self.trainer._restored_rng is not None:
            seed.restore_rng_state(self.trainer._restored_rng)
            self.trainer._restored_rng = None

    def _shuffle_seed(self) -> int:
        """The seed of the per-epoch shuffle order: kept in the loop progress so that resume reuses it."""
        if self.progress.shuffle_seed is None:
            chosen = seed.current_seed()
            if chosen is None:  # no seed_everything: a fresh order per run, drawn once and checkpointed
                chosen = int(torch.randint(0, 2**31 - 1, (1,)).item())
            self.progress.shuffle_seed = chosen
        return self.progress.shuffle_seed

    def _preempted(self, at_once: bool = False) -> bool:
        """At a step boundary: when the ranks agree on a stop signal, save `last.ckpt` together; True then.

        Every rank votes at every boundary (`StopVotes`); an agreed stop waits for the end of a gradient
        accumulation window: its partial gradients are per-rank state that a checkpoint written by rank zero
        cannot hold, and the window is at most a few batches.
        """
        agreed = self.votes.check_now() if at_once else self.votes.check()
        if not agreed or not self._may_stop():
            return False
        self._save_and_stop()
        return True

    def _may_stop(self) -> bool:
        return self.progress.accumulated_batches == 0

    def _save_and_stop(self) -> None:
        trainer = self.trainer
        self.votes.drain()
        path = layout.save_last(trainer)
        trainer.state.status = "preempted"
        log.warning(
            "Stop signal %s: saved %s at epoch %d, step %d%s; fit returns, and resumes from it with "
            'ckpt_path="last"',
            trainer.preemption.describe(),
            path,
            self.progress.epoch,
            self.progress.global_step,
            " (inside a validation, which runs again on resume)" if self.progress.validation_pending else "",
        )

    def _run_batch(self, batch_idx: int, batch: Any, is_last: bool, outputs: list[Any]) -> bool:
        """Train on one batch; True when `on_train_batch_start` returned -1 (end the epoch)."""
        trainer, progress, metrics, dispatch = self.trainer, self.progress, self.metrics, self.dispatch
        assert dispatch is not None
        batch = trainer._to_device(batch, 0)
        metrics.set_batch(batch)
        metrics.in_train_step = True
        if dispatch.fire("on_train_batch_start", batch, batch_idx) == -1:
            metrics.in_train_step = False
            return True
        output = self.optimization.run(batch, batch_idx, is_last)
        progress.epoch_batches += 1
        progress.total_batches += 1
        stepped = self.optimization.stepped
        if stepped:
            progress.stepped_batches += 1
            if self._step_schedulers:
                metrics_now = trainer.callback_metrics if _monitors(trainer, "step") else {}
                optim.step_schedulers(
                    trainer.lr_scheduler_configs,
                    "step",
                    progress.global_step,
                    metrics_now,
                    step_fn=self._scheduler_step_fn,
                )
        step_output = {"loss": output.detach()} if isinstance(output, torch.Tensor) else output
        dispatch.fire("on_train_batch_end", step_output, batch, batch_idx)
        metrics.in_train_step = False
        if self._collect and step_output is not None:
            outputs.append(step_output)
        if stepped and self._writes_steps and progress.stepped_batches % self.settings.log_every_n_steps == 0:
            trainer._log_step_metrics()
        return False

    def _max_steps_reached(self) -> bool:
        return self.settings.max_steps != -1 and self.progress.global_step >= self.settings.max_steps

    def _validates_this_epoch(self) -> bool:
        every = self.settings.check_val_every_n_epoch
        return self._has_val and (every is None or (self.progress.epoch + 1) % every == 0)

    def _should_validate(self, batch_idx: int, is_last: bool) -> bool:
        """Lightning's rule: every `val_check_batch` batches of the epoch (of the run when
        check_val_every_n_epoch is None), in the epochs `check_val_every_n_epoch` selects."""
        if not self._validates_this_epoch():
            return False
        every_batch = self.trainer._val_check_batch
        if every_batch == math.inf:
            return is_last
        counter = (
            batch_idx
            if self.settings.check_val_every_n_epoch is not None
            else self.progress.total_batches - 1
        )
        return (counter + 1) % int(every_batch) == 0

    def _validate(self) -> bool:
        """Run a validation; True when a stop signal interrupted it (`last.ckpt` says to run it again)."""
        progress = self.progress
        progress.rng_at_validation_start = seed.capture_rng_state()
        loop = EvaluationLoop(self.trainer, "validate", stop_check=self._stop_inside_validation)
        loop.run()
        self.trainer._running = "train"
        self.metrics.stage = "train"
        if loop.interrupted:
            progress.validation_pending = True
            self._save_and_stop()
            return True
        progress.validation_pending, progress.rng_at_validation_start = False, None
        return False

    def _stop_inside_validation(self) -> bool:
        return self.votes.check() and self._may_stop()

    # -- the epoch end ----------------------------------------------------------------------------------
    def _end_epoch(self, outputs: list[Any]) -> None:
        trainer, metrics, dispatch = self.trainer, self.metrics, self.dispatch
        assert dispatch is not None
        metrics.stage = "train"
        if self._collect:
            self.module.training_epoch_end(outputs)  # type: ignore[attr-defined,operator]
        values = metrics.end_epoch("train")
        dispatch.epoch_end("on_train_epoch_end", between=lambda: values.update(metrics.end_epoch("train")))
        values.update(metrics.end_epoch("train"))
        self._step_epoch_schedulers()
        trainer._log_epoch_metrics(values)
        self.progress.finish_epoch()

    def _step_epoch_schedulers(self) -> None:
        trainer = self.trainer
        if not self.automatic or not trainer.lr_scheduler_configs:
            return
        metrics_now = trainer.callback_metrics if _monitors(trainer, "epoch") else {}
        optim.step_schedulers(
            trainer.lr_scheduler_configs,
            "epoch",
            self.progress.epoch + 1,
            metrics_now,
            step_fn=self._scheduler_step_fn,
        )


def start_loggers(trainer: Trainer, resumed: bool) -> None:
    """Before anything is logged (rank zero): continue a resumed run's series, record the hyperparameters.

    The loggers' step is `stepped_batches - 1` at the time of logging, so the first step a resumed run logs
    is `stepped_batches`: everything an earlier run logged from there on is dropped.
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return
    hparams = merged_hparams(trainer)
    for logger in trainer.loggers:
        if resumed:
            logger.resume_from_step(trainer.progress.stepped_batches)
            # The first run wrote the hparams summary (and its step-0 `hp_metric`) to this same series;
            # an empty `metrics` records them (hparams.yaml) without logging step 0 a second time.
            logger.log_hyperparams(hparams, metrics={})
        else:
            logger.log_hyperparams(hparams)
        logger.save()


def merged_hparams(trainer: Trainer) -> dict[str, Any]:
    """The module's hyperparameters and the data module's, which must agree on the keys they share."""
    hparams = dict(trainer.lightning_module.hparams_initial)
    datamodule = trainer.datamodule
    if datamodule is None:
        return hparams
    extra = dict(datamodule.hparams_initial)
    clashing = sorted(k for k in set(hparams) & set(extra) if not _same(hparams[k], extra[k]))
    if clashing:
        raise MisconfigurationError(
            f"The hyperparameters {clashing} are saved by both the module and the data module with different "
            "values; rename one of them or pass the same value to both"
        )
    return {**extra, **hparams}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # tensors of different shapes, objects without a boolean ==
        return a is b


def _monitors(trainer: Trainer, interval: str) -> bool:
    return any(c.reduce_on_plateau and c.interval == interval for c in trainer.lr_scheduler_configs)


def _defines(module: Any, method: str) -> bool:
    from trainer_core.module import TrainingModule

    return getattr(type(module), method, None) is not getattr(TrainingModule, method, None)


def _set_epoch(loader: Any, epoch: int) -> None:
    """Tell an epoch-aware sampler (DistributedSampler) which epoch starts, so its shuffle changes."""
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if sampler is not None and callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)
