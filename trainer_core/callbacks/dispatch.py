"""The one dispatcher that fires callback and module hooks, and the order in which the loop fires them.

The loop, with each hook where it fires (`cb` = callbacks in the trainer's order, ModelCheckpoint last;
`module` = the TrainingModule; `dm` = the DataModule; "monitoring" = ModelCheckpoint and EarlyStopping):

    fit(model):
        dm.prepare_data / module.prepare_data            (rank zero of each node, or of the job)
        setup("fit"):          dm, cb, module;   module.configure_model
        configure_optimizers
        restore from ckpt_path: module.on_load_checkpoint, weights, cb.on_load_checkpoint, cb.load_state_dict,
                                 optimizers, schedulers, loop progress
        on_fit_start:          cb, module
        on_sanity_check_start: cb;   validation loop (below, metrics discarded);   on_sanity_check_end: cb
        on_train_start:        cb, module
        for each epoch:
            on_train_epoch_start: cb, module
            for each batch:
                on_train_batch_start: cb, module          (module returning -1 ends the epoch)
                training_step (inside the optimizer closure)
                    on_before_zero_grad: cb, module;  optimizer_zero_grad      (first batch of a window)
                    on_before_backward: cb, module;  backward;  on_after_backward: cb, module
                on_before_optimizer_step: cb, module; gradient clipping; optimizer step (window's end)
                step-interval schedulers
                on_train_batch_end:   cb, module
                loggers every log_every_n_steps
                validation loop when val_check_interval says so:
                    on_validation_start: cb, module;  on_validation_epoch_start: cb, module
                    for each dataloader, batch:
                        on_validation_batch_start: cb, module;  validation_step;
                        on_validation_batch_end: cb, module
                    validation_epoch_end(outputs) (old style, when defined)
                    on_validation_epoch_end: cb (not monitoring), module, cb (monitoring)
                    loggers (epoch metrics);  on_validation_end: cb, module
            training_epoch_end(outputs) (old style, when defined)
            on_train_epoch_end: cb (not monitoring), module, cb (monitoring)
            epoch-interval schedulers;  loggers (epoch metrics)
        on_train_end:          cb, module
        on_fit_end:            cb, module
        teardown("fit"):       dm, cb, module
    on an exception anywhere: on_exception: cb; then teardown

`test`, `validate` and `predict` run setup(stage), on_{stage}_start, the evaluation loop above with their
own hook names, on_{stage}_end and teardown(stage). Saving a checkpoint fires cb.on_save_checkpoint then
module.on_save_checkpoint. Only hooks that a callback's class (or the module's) overrides are called: the
set is computed once per run, so an unused hook costs nothing per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from trainer_core.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer

_NOT_HOOKS = {"state_dict", "load_state_dict", "state_key"}
CALLBACK_HOOKS = tuple(
    name
    for name, value in vars(Callback).items()
    if callable(value) and not name.startswith("_") and name not in _NOT_HOOKS
)
# Lightning 2 runs these monitoring callbacks' epoch-end hooks after the module's, so that what the module
# logs in its own epoch-end hook can be monitored.
_EPOCH_END_HOOKS = ("on_train_epoch_end", "on_validation_epoch_end")


def is_monitoring(callback: Callback) -> bool:
    """ModelCheckpoint and EarlyStopping (and their subclasses): they act on metrics of the epoch end."""
    from trainer_core.callbacks.early_stopping import EarlyStopping
    from trainer_core.callbacks.model_checkpoint import ModelCheckpoint

    return isinstance(callback, (ModelCheckpoint, EarlyStopping))


def overrides(obj: object, base: type, name: str) -> bool:
    """True when `obj`'s class defines `name` differently from `base`."""
    return getattr(type(obj), name, None) is not getattr(base, name, None)


class HookDispatcher:
    """Fires each hook on the callbacks that override it, then on the module (see the module docstring)."""

    def __init__(
        self, trainer: Trainer, module: TrainingModule, callbacks: Sequence[Callback], profiler: Any = None
    ) -> None:
        from trainer_core.module import TrainingModule

        self._trainer = trainer
        self._module = module
        self._profiler = profiler if _is_profiling(profiler) else None
        self._callbacks: dict[str, list[Callback]] = {
            hook: [cb for cb in callbacks if overrides(cb, Callback, hook)] for hook in CALLBACK_HOOKS
        }
        self._monitoring: dict[str, list[Callback]] = {}
        for hook in _EPOCH_END_HOOKS:
            self._monitoring[hook] = [cb for cb in self._callbacks[hook] if is_monitoring(cb)]
            self._callbacks[hook] = [cb for cb in self._callbacks[hook] if not is_monitoring(cb)]
        self._module_hooks: dict[str, Callable[..., Any]] = {
            name: getattr(module, name)
            for name in dir(TrainingModule)
            if name.startswith("on_") and overrides(module, TrainingModule, name)
        }

    def has(self, hook: str) -> bool:
        """True when some callback or the module overrides `hook`."""
        return bool(self._callbacks.get(hook) or self._monitoring.get(hook) or hook in self._module_hooks)

    def callbacks(self, hook: str, *args: Any) -> None:
        """Fire `hook` on the callbacks that override it, in order (`trainer, module, *args`)."""
        for callback in self._callbacks[hook]:
            self._run(
                f"[Callback]{callback.state_key}.{hook}",
                getattr(callback, hook),
                self._trainer,
                self._module,
                *args,
            )

    def module(self, hook: str, *args: Any) -> Any:
        """Fire the module's `hook` when it overrides it; return what it returned."""
        method = self._module_hooks.get(hook)
        if method is None:
            return None
        return self._run(f"[TrainingModule]{type(self._module).__name__}.{hook}", method, *args)

    def fire(self, hook: str, *args: Any) -> Any:
        """Callbacks, then the module; returns the module's return value."""
        if self._callbacks[hook]:
            self.callbacks(hook, *args)
        if hook in self._module_hooks:
            return self.module(hook, *args)
        return None

    def epoch_end(self, hook: str, between: Callable[[], None] | None = None) -> None:
        """An epoch-end hook: other callbacks, the module, `between()`, then ModelCheckpoint/EarlyStopping."""
        self.fire(hook)
        if between is not None:
            between()
        for callback in self._monitoring.get(hook, []):
            self._run(
                f"[Callback]{callback.state_key}.{hook}", getattr(callback, hook), self._trainer, self._module
            )

    def all_callbacks(self, hook: str, *args: Any) -> None:
        """Fire `hook` on every callback that overrides it, monitoring ones included (no module hook)."""
        self.callbacks(hook, *args)
        for callback in self._monitoring.get(hook, []):
            self._run(
                f"[Callback]{callback.state_key}.{hook}",
                getattr(callback, hook),
                self._trainer,
                self._module,
                *args,
            )

    def _run(self, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self._profiler is None:
            return fn(*args)
        with self._profiler.profile(action):
            return fn(*args)


def _is_profiling(profiler: Any) -> bool:
    """A real profiler (not None, not the pass-through one whose context costs time for nothing)."""
    return profiler is not None and type(profiler).__name__ != "PassThroughProfiler"
