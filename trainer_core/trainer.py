"""`Trainer`: validated settings in `__init__` (no work), the entry points, public properties.

A run reads top to bottom in `_run`: attach → rank layout and process group (`_setup_distributed`) →
prepare_data → setup(stage) → dataloaders → optimizers → resume → loop → teardown. The loops themselves are in
`trainer_core.loops`; the hook order is documented in `trainer_core.callbacks.dispatch`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from trainer_core import optim
from trainer_core.callbacks.base import Callback
from trainer_core.callbacks.dispatch import HookDispatcher
from trainer_core.checkpoint import io as checkpoint_io
from trainer_core.checkpoint import layout
from trainer_core.collectives import Collectives, SingleProcess
from trainer_core.components import AttachedComponents
from trainer_core.datamodule import DataModule
from trainer_core.errors import MisconfigurationError
from trainer_core.loops.data import move_to_device
from trainer_core.loops.settings import TrainerSettings
from trainer_core.metrics import MetricStore, to_floats
from trainer_core.module import TrainingModule
from trainer_core.precision import Precision
from trainer_core.preemption import Preemption
from trainer_core.state import LoopProgress, TrainerState

log = logging.getLogger(__name__)


class Trainer(AttachedComponents):
    """Runs a `TrainingModule`: the Lightning `Trainer` arguments and entry points (see `TrainerSettings`)."""

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: Any = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        precision: str | int | None = None,
        logger: Any = None,
        callbacks: Callback | Sequence[Callback] | None = None,
        fast_dev_run: bool | int = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        default_root_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings = TrainerSettings.validated(
            **{k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )
        s = self.settings
        self.state = TrainerState()
        self.should_stop = False
        self.collectives: Collectives = SingleProcess()
        self._global_rank, self._local_rank, self._world_size, self._node_rank = 0, 0, 1, 0
        self._device = s.root_device()
        self._strategy: Any = None  # the DDPStrategy of a run with several ranks (set by _setup_distributed)
        self._ddp: Any = None  # the DDP-wrapped module while fitting with several ranks
        self.progress = LoopProgress()
        self._metrics = MetricStore(self.collectives)
        self.callbacks: list[Callback] = s.build_callbacks()
        self.loggers: list[Any] = s.build_loggers()
        self.profiler: Any = s.build_profiler()
        self._running: str | None = None  # "train" | "sanity_check" | "validate" | "test" | "predict"
        self._model: TrainingModule | None = None
        self.datamodule: DataModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[optim.SchedulerConfig] = []
        self._optimizer_wrappers: list[Any] = []
        self._optimization: Any = None
        self._dispatch: HookDispatcher | None = None
        self.precision_plugin: Precision | None = None
        self.train_dataloader: Any = None
        self.val_dataloaders: list[Any] = []
        self.test_dataloaders: list[Any] = []
        self.predict_dataloaders: list[Any] = []
        self.num_training_batches: int | float = 0
        self.num_val_batches: list[int | float] = []
        self.num_sanity_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self._val_check_batch: int | float = math.inf
        self._restored_rng: dict[str, Any] | None = None
        self._restored_metrics: dict[str, torch.Tensor] = {}
        # Stop signals during fit (trainer_core.preemption), configured by plugins=[PreemptionSignals()].
        self.preemption = Preemption.from_plugins(s.plugins)
        # Seconds the latest training batch waited on the dataloader (set by the fit loop, read by callbacks).
        self.last_data_wait_s = 0.0

    # -- settings users read back ---------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Every validated setting (max_epochs, precision, log_every_n_steps, ...) reads as an attribute.
        settings = self.__dict__.get("settings")
        if settings is not None and hasattr(settings, name):
            return getattr(settings, name)
        raise AttributeError(f"'Trainer' object has no attribute {name!r}")

    # -- entry points ------------------------------------------------------------------------------------
    def fit(
        self,
        model: TrainingModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train `model` on the loaders (or the data module's, or the module's own), then return."""
        if isinstance(train_dataloaders, DataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        self._run("fit", model, datamodule, ckpt_path, train=train_dataloaders, val=val_dataloaders)

    def validate(
        self,
        model: TrainingModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: DataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run the validation loop once; a list with one metric dict per dataloader."""
        if isinstance(dataloaders, DataModule):
            datamodule, dataloaders = dataloaders, None
        return self._run("validate", model, datamodule, ckpt_path, val=dataloaders)  # type: ignore[no-any-return]

    def test(
        self,
        model: TrainingModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: DataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run the test loop once; a list with one metric dict per dataloader."""
        if isinstance(dataloaders, DataModule):
            datamodule, dataloaders = dataloaders, None
        return self._run("test", model, datamodule, ckpt_path, test=dataloaders)  # type: ignore[no-any-return]

    def predict(
        self,
        model: TrainingModule | None = None,
        dataloaders: Any = None,
        datamodule: DataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Run `predict_step` on every batch; the outputs in order (a list per dataloader when several)."""
        if isinstance(dataloaders, DataModule):
            datamodule, dataloaders = dataloaders, None
        self._return_predictions = return_predictions is not False
        return self._run("predict", model, datamodule, ckpt_path, predict=dataloaders)

    # -- the run --------------------------------------------------------------------------------------------
    def _run(
        self,
        stage: str,
        model: TrainingModule | None,
        datamodule: DataModule | None,
        ckpt_path: Any,
        **loaders: Any,
    ) -> Any:
        from trainer_core.loops import runner

        model = self._resolve_model(model, stage)
        self._attach(model, datamodule, stage)
        self.state.stage, self.state.status = stage, "running"
        with self._failure_stops_every_rank():
            try:
                with self._run_context():
                    self._setup_distributed()
                    runner.prepare_and_setup(self, stage)
                    runner.resolve_dataloaders(self, stage, loaders)
                    result = runner.run_stage(self, stage, ckpt_path)
                if self.state.status == "running":  # "preempted" stays as the fit loop set it
                    self.state.status = "finished"
                return result
            except BaseException as err:
                self.state.status = "interrupted"
                if self._dispatch is not None:
                    self._dispatch.all_callbacks("on_exception", err)
                raise
            finally:
                runner.teardown(self, stage)

    def _resolve_model(self, model: TrainingModule | None, stage: str) -> TrainingModule:
        if model is None:
            if self._model is None:
                raise MisconfigurationError(
                    f"Trainer.{stage}() got no model and none was fitted before; pass model=your_module"
                )
            return self._model
        if not isinstance(model, TrainingModule):
            raise MisconfigurationError(
                f"Trainer.{stage}(model=...) got a {type(model).__name__}; pass a TrainingModule "
                "subclass instance"
            )
        return model

    def _attach(self, model: TrainingModule, datamodule: DataModule | None, stage: str) -> None:
        self._model = model
        model.trainer = self
        if datamodule is not None:
            self.datamodule = datamodule
            datamodule.trainer = self
        self.callbacks = self.settings.merge_module_callbacks(self.callbacks, model.configure_callbacks())
        self.should_stop = False
        self._metrics.reset()
        self._dispatch = HookDispatcher(self, model, self.callbacks, self.profiler)

    @contextlib.contextmanager
    def _run_context(self) -> Iterator[None]:
        s = self.settings
        if s.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if s.benchmark is not None and torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = s.benchmark
        with (
            torch.autograd.set_detect_anomaly(s.detect_anomaly),
            self.preemption.installed(self.state.stage == "fit"),
        ):
            yield

    def _setup_distributed(self) -> None:
        """The rank layout and, with several ranks, the process group (kept across fit/validate/test).

        The layout is checked against `devices`/`num_nodes`/`accelerator` before any process group exists, so
        a wrong launch fails in seconds. The model is wrapped later, on its device (`_wrap_model`).
        """
        from trainer_core import ddp, distributed
        from trainer_core.environment import RankEnvironment, validate
        from trainer_core.rank_zero import rank_zero_only

        s = self.settings
        env = RankEnvironment.detect()
        auto = s.devices in ("auto", -1, "-1")
        devices = env.local_world_size if auto and env.is_distributed else s.device_count()
        validate(env, devices, s.num_nodes, s.accelerator, torch.cuda.device_count())
        self._strategy = ddp.resolve_strategy(s.strategy)
        self._global_rank, self._local_rank, self._world_size = env.rank, env.local_rank, env.world_size
        self._node_rank = env.node_rank
        rank_zero_only.rank = env.rank  # type: ignore[attr-defined]
        if env.is_distributed and not isinstance(self.collectives, distributed.TorchCollectives):
            self.collectives = distributed.join_job(env, self._strategy, s.accelerator)
            self._device = self.collectives.device
        self._metrics.collectives = self.collectives

    def _wrap_model(self, stage: str) -> None:
        """With several ranks, wrap the module (on its device) in DDP to train; evaluation needs no sync.

        With `deterministic=True` and more than 2 ranks, gradients are added in rank order
        (`ddp_hooks.ordered_mean_hook`), so a resumed run stays bit-equal to one that never stopped.
        """
        from trainer_core import ddp, ddp_hooks

        self._ddp = None
        if stage == "fit" and self._world_size > 1 and self._strategy is not None:
            self._ddp = ddp.wrap_model(
                self.lightning_module, self._device, self._strategy, self.settings.sync_batchnorm
            )
            if self.settings.deterministic and self._world_size > 2:
                self._ddp.register_comm_hook(None, ddp_hooks.ordered_mean_hook)

    def _distribute_loader(self, loader: Any, training: bool) -> Any:
        """The loader this rank reads: with several ranks, a DataLoader's sampler is sharded per rank."""
        from torch.utils.data import DataLoader

        from trainer_core import samplers

        if self._world_size == 1 or not self.settings.use_distributed_sampler:
            return loader
        if not isinstance(loader, DataLoader):
            return loader  # any other iterable is the user's to shard
        if training:
            return samplers.train_loader_with_sampler(loader, self._world_size, self._global_rank)
        return samplers.eval_loader_with_sampler(loader, self._world_size, self._global_rank)

    @contextlib.contextmanager
    def _failure_stops_every_rank(self) -> Iterator[None]:
        """With several ranks, an exception (after `on_exception` and teardown) ends this rank and the others.

        The rank logs its traceback and exits non-zero; the others stop within seconds (see
        `distributed.abort_on_exception`) instead of waiting in a collective for a rank that is gone.
        """
        from trainer_core import distributed

        try:
            yield
        except Exception:
            with distributed.abort_on_exception(self.collectives):
                raise

    # -- used by the loops ----------------------------------------------------------------------------------
    def _to_device(self, batch: Any, dataloader_idx: int) -> Any:
        model = self.lightning_module
        if self._custom_transfer:
            batch = model.on_before_batch_transfer(batch, dataloader_idx)
            batch = model.transfer_batch_to_device(batch, self._device, dataloader_idx)
            return model.on_after_batch_transfer(batch, dataloader_idx)
        if self._device.type == "cpu":
            return batch
        return move_to_device(batch, self._device)

    def _log_step_metrics(self) -> None:
        """Write this step's logged values to the loggers (every rank reduces `sync_dist` values first)."""
        self._metrics.sync_step_values()
        values = self._metrics.step_values_for_loggers()
        self._write_to_loggers(values, self.progress.stepped_batches - 1)

    def _log_epoch_metrics(self, values: dict[str, Any]) -> None:
        logged = {name: value for name, (spec, value) in values.items() if spec.logger}
        self._write_to_loggers(logged, max(self.progress.stepped_batches - 1, 0))

    def _write_to_loggers(self, values: dict[str, torch.Tensor], step: int) -> None:
        if not values or not self.loggers or not self.is_global_zero or self.sanity_checking:
            return
        metrics = dict(zip(values, to_floats(list(values.values()))))
        metrics["epoch"] = float(self.current_epoch)
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        filepath: str | os.PathLike[str],
        weights_only: bool = False,
        background: bool = False,
        also_as: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        """Write the full training state (or only the weights) atomically; rank zero writes the file.

        Every rank must call it. The file is committed when this returns. With `background=True` (what
        `ModelCheckpoint` uses) this returns once the state is copied (a snapshot in host memory); the
        writer thread serialises, fsyncs, verifies and renames it: `checkpoint.wait_for_pending()` waits
        for that, and so do loading, deleting and the end of the stage. `also_as`: more names for the same
        bytes (hard links, or copies), written once.
        """
        state = layout.dump(self, weights_only)
        if self.is_global_zero:
            checkpoint_io.save(state, [filepath, *also_as], sync=not background)

    # -- rank helpers ---------------------------------------------------------------------------------------
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank."""
        return self.collectives.broadcast_object(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """Combine each rank's `decision`: True when all ranks (or, with `all=False`, any rank) say True."""
        if self.world_size == 1:
            return bool(decision)
        votes = torch.tensor([float(decision)], dtype=torch.float64, device=self._device)
        votes = self.collectives.all_reduce(votes, "sum")
        return bool(votes.item() == self.world_size) if all else bool(votes.item() > 0)

    # -- properties -----------------------------------------------------------------------------------------
    @property
    def lightning_module(self) -> TrainingModule:
        """The user's module (never a DDP wrapper)."""
        if self._model is None:
            raise MisconfigurationError("the trainer has no model yet: call fit/validate/test/predict first")
        return self._model

    model = lightning_module

    @property
    def _custom_transfer(self) -> bool:
        return bool(self.__dict__.get("_transfer_hooks", False))

    @property
    def current_epoch(self) -> int:
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def global_rank(self) -> int:
        return self._global_rank

    @property
    def local_rank(self) -> int:
        return self._local_rank

    @property
    def node_rank(self) -> int:
        return self._node_rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def received_signal(self) -> int | None:
        """The stop signal (SIGUSR2, SIGTERM, SIGINT...) that made the last fit save and return, or None."""
        return self.preemption.received

    @property
    def interrupted(self) -> bool:
        """True when the last run stopped early: preempted by a signal, or ended by an exception."""
        return self.state.status in ("preempted", "interrupted")

    @property
    def is_global_zero(self) -> bool:
        return self._global_rank == 0

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def root_device(self) -> torch.device:
        return self._device

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._metrics.progress_bar_metrics

    @property
    def sanity_checking(self) -> bool:
        return self._running == "sanity_check"

    @property
    def training(self) -> bool:
        return self._running == "train"

    @property
    def validating(self) -> bool:
        return self._running == "validate"

    @property
    def testing(self) -> bool:
        return self._running == "test"

    @property
    def predicting(self) -> bool:
        return self._running == "predict"

    @property
    def estimated_stepping_batches(self) -> int | float:
        """How many optimizer steps `fit` will take (inf when unbounded)."""
        from trainer_core.loops import runner

        return runner.estimated_stepping_batches(self)

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def lr_schedulers(self) -> list[Any]:
        return [config.scheduler for config in self.lr_scheduler_configs]
