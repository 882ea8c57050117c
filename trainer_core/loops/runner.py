"""The steps of one `Trainer` run around the loops: setup, dataloaders, optimizers, resume, teardown."""

from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

from trainer_core import distributed, optim
from trainer_core.checkpoint import io as checkpoint_io
from trainer_core.checkpoint import layout
from trainer_core.datamodule import DataModule
from trainer_core.errors import MisconfigurationError
from trainer_core.loops.data import as_loader_list, limited_length, without_shuffle
from trainer_core.loops.optimization import Optimization
from trainer_core.module import TrainingModule
from trainer_core.precision import Precision

if TYPE_CHECKING:
    from trainer_core.trainer import Trainer

log = logging.getLogger(__name__)

# Which module method each stage needs, and the fix when it is missing.
_REQUIRED_STEP = {
    "fit": "training_step",
    "validate": "validation_step",
    "test": "test_step",
}
_LOADER_METHODS = {
    "train": "train_dataloader",
    "val": "val_dataloader",
    "test": "test_dataloader",
    "predict": "predict_dataloader",
}
_STAGE_LOADERS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def prepare_and_setup(trainer: Trainer, stage: str) -> None:
    """`prepare_data` on the ranks that should run it, a barrier, then `setup(stage)` everywhere."""
    model, datamodule = trainer.lightning_module, trainer.datamodule
    _check_module(model, stage)
    for owner in (datamodule, model):
        if owner is not None:
            # Once per job (or node); the others wait without a time limit, since a download may be long.
            per_node = getattr(owner, "prepare_data_per_node", True)
            distributed.barrier_for_prepare_data(trainer.collectives, owner.prepare_data, per_node=per_node)
    trainer.profiler.setup(stage=stage, local_rank=trainer.local_rank, log_dir=trainer.log_dir)
    if datamodule is not None:
        datamodule.setup(stage)
    assert trainer._dispatch is not None  # set by Trainer._attach
    trainer._dispatch.callbacks("setup", stage)
    model.setup(stage)
    model.configure_model()
    trainer._transfer_hooks = any(  # type: ignore[attr-defined]
        type(model).__dict__.get(name) is not None
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    )


def _check_module(model: TrainingModule, stage: str) -> None:
    method = _REQUIRED_STEP.get(stage)
    if method is not None and getattr(type(model), method) is getattr(TrainingModule, method):
        raise MisconfigurationError(
            f"Trainer.{stage} needs {type(model).__name__}.{method}(self, batch, batch_idx); define it "
            f"(it computes {'the loss' if stage == 'fit' else 'and logs the metrics'} of one batch)"
        )
    if stage == "fit" and "optimizer_idx" in inspect.signature(model.training_step).parameters:
        raise MisconfigurationError(
            f"{type(model).__name__}.training_step takes `optimizer_idx`: several optimizers in automatic "
            "optimization are not supported. Set `self.automatic_optimization = False` in __init__ and step "
            "each optimizer in training_step (self.optimizers(), self.manual_backward(loss), opt.step())"
        )


def _loaders(trainer: Trainer, kind: str, given: Any) -> list[Any]:
    if given is not None:
        return as_loader_list(given)
    method = _LOADER_METHODS[kind]
    datamodule = trainer.datamodule
    if isinstance(datamodule, DataModule) and datamodule.defines(method):
        return as_loader_list(getattr(datamodule, method)())
    model = trainer.lightning_module
    if hasattr(type(model), method):
        return as_loader_list(getattr(model, method)())
    return []


def resolve_dataloaders(trainer: Trainer, stage: str, given: dict[str, Any]) -> None:
    """The dataloaders of `stage` and how many batches of each the loops run."""
    s = trainer.settings
    for kind in _STAGE_LOADERS[stage]:
        loaders = [
            trainer._distribute_loader(lo, kind == "train") for lo in _loaders(trainer, kind, given.get(kind))
        ]
        if kind == "train":
            _set_train_loader(trainer, loaders)
        elif kind == "val":
            trainer.val_dataloaders = loaders
            trainer.num_val_batches = [
                limited_length(lo, s.limit_val_batches, "limit_val_batches") for lo in loaders
            ]
            steps = s.num_sanity_val_steps
            trainer.num_sanity_val_batches = [
                n if steps == -1 else min(n, steps) for n in trainer.num_val_batches
            ]
        elif kind == "test":
            trainer.test_dataloaders = loaders
            trainer.num_test_batches = [
                limited_length(lo, s.limit_test_batches, "limit_test_batches") for lo in loaders
            ]
        else:
            trainer.predict_dataloaders = loaders
            trainer.num_predict_batches = [
                limited_length(lo, s.limit_predict_batches, "limit_predict_batches") for lo in loaders
            ]
    if stage != "fit" and not any(getattr(trainer, f"{k}_dataloaders") for k in _STAGE_LOADERS[stage]):
        method = _LOADER_METHODS[_STAGE_LOADERS[stage][0]]
        raise MisconfigurationError(
            f"Trainer.{stage} found no dataloader: pass dataloaders=..., a datamodule with {method}(), or "
            f"define "
            f"{method}() on the module"
        )


def _set_train_loader(trainer: Trainer, loaders: list[Any]) -> None:
    s = trainer.settings
    if len(loaders) != 1:
        raise MisconfigurationError(
            f"Trainer.fit needs exactly one training dataloader and got {len(loaders)}: pass "
            "train_dataloaders=loader, a datamodule with train_dataloader(), or define train_dataloader() "
            "on the module"
        )
    loader = without_shuffle(loaders[0]) if s.overfit_batches else loaders[0]
    trainer.train_dataloader = loader
    trainer.num_training_batches = limited_length(loader, s.limit_train_batches, "limit_train_batches")
    trainer._val_check_batch = _val_check_batch(trainer)


def _val_check_batch(trainer: Trainer) -> int | float:
    """After how many training batches validation runs (Lightning's `val_check_batch`)."""
    s, batches = trainer.settings, trainer.num_training_batches
    interval = s.val_check_interval
    if isinstance(interval, int):
        if s.check_val_every_n_epoch is not None and interval > batches:
            raise MisconfigurationError(
                f"Trainer(val_check_interval={interval}) is more than the {batches} training batches of an "
                "epoch; use a smaller int, a float fraction, or check_val_every_n_epoch=None to count "
                "batches "
                "across epochs (limit_val_batches=0 disables validation)"
            )
        return interval
    if batches == math.inf:
        return math.inf
    return max(1, int(batches * interval))


def run_stage(trainer: Trainer, stage: str, ckpt_path: Any) -> Any:
    """Move the model, build optimizers (fit), restore `ckpt_path`, run the stage's loop."""
    from trainer_core.loops.evaluation import EvaluationLoop
    from trainer_core.loops.fit import FitLoop
    from trainer_core.loops.predict import PredictLoop

    model = trainer.lightning_module
    model.to(trainer.device)
    trainer._wrap_model(stage)
    trainer.precision_plugin = Precision.from_setting(trainer.settings.precision, trainer.device)
    if stage == "fit":
        _configure_optimizers(trainer, model)
    trainer.ckpt_path = None  # type: ignore[attr-defined]  # the file this run resumed from (Lightning's name)
    if ckpt_path is not None:
        trainer.ckpt_path = layout.restore(trainer, ckpt_path, full=stage == "fit")  # type: ignore[attr-defined]
    if stage == "fit":
        FitLoop(trainer).run()
        return None
    if stage == "predict":
        return PredictLoop(trainer).run()
    return EvaluationLoop(trainer, stage).run()


def _configure_optimizers(trainer: Trainer, model: TrainingModule) -> None:
    s = trainer.settings
    optimizers, configs = optim.configure(model.configure_optimizers(), model)
    if model.automatic_optimization and len(optimizers) > 1:
        raise MisconfigurationError(
            f"configure_optimizers returned {len(optimizers)} optimizers: several optimizers need manual "
            "optimization. Set `self.automatic_optimization = False` and step them in training_step"
        )
    if not model.automatic_optimization and s.gradient_clip_val:
        raise MisconfigurationError(
            f"Trainer(gradient_clip_val={s.gradient_clip_val}) does not apply to manual optimization; call "
            "self.clip_gradients(opt, gradient_clip_val=...) in training_step instead"
        )
    if model.automatic_optimization and not optimizers:
        raise MisconfigurationError(
            "configure_optimizers returned no optimizer: return one (torch.optim.Adam(self.parameters())) "
            "or set self.automatic_optimization = False"
        )
    trainer.optimizers, trainer.lr_scheduler_configs = optimizers, configs
    assert trainer._dispatch is not None and trainer.precision_plugin is not None
    trainer._optimization = Optimization(
        model,
        trainer._dispatch,
        trainer.precision_plugin,
        optimizers,
        trainer.progress,
        s.accumulate_grad_batches,
        s.gradient_clip_val,
        s.gradient_clip_algorithm,
        ddp=trainer._ddp,
    )
    trainer._optimizer_wrappers = trainer._optimization.wrappers


def teardown(trainer: Trainer, stage: str) -> None:
    """teardown(stage) on the data module, the callbacks and the module; loggers flushed; profile summary."""
    trainer._running = None
    model = trainer._model
    if trainer.datamodule is not None:
        trainer.datamodule.teardown(stage)
    if trainer._dispatch is not None:
        trainer._dispatch.callbacks("teardown", stage)
    if model is not None:
        model.teardown(stage)
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.save()
            logger.finalize("success" if trainer.state.status != "interrupted" else "failed")
    trainer.profiler.describe()
    trainer.profiler.teardown(stage)
    # Checkpoints commit in the background: they are all at their paths when the stage returns (and before
    # the next stage's barrier, after which other ranks may read them); a failed commit is raised here.
    checkpoint_io.wait_for_pending()


def estimated_stepping_batches(trainer: Trainer) -> int | float:
    """Optimizer steps `fit` will take: per-epoch steps times epochs, bounded by max_steps."""
    s = trainer.settings
    batches = trainer.num_training_batches
    if trainer.train_dataloader is None:
        raise MisconfigurationError(
            "estimated_stepping_batches is known once fit has its training dataloader; read it from "
            "configure_optimizers or later"
        )
    per_epoch = math.ceil(batches / s.accumulate_grad_batches) if batches != math.inf else math.inf
    total = per_epoch * max(s.max_epochs, 1) if s.max_epochs != -1 else math.inf
    if s.max_steps != -1:
        total = min(total, s.max_steps)
    return int(total) if total != math.inf else math.inf
