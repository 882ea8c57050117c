"""The `Callback` base class: every hook the trainer fires, with Lightning's names and arguments.

The firing order, and the dispatcher that fires the hooks, are documented in
`trainer_core.callbacks.dispatch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trainer_core.module import TrainingModule
    from trainer_core.trainer import Trainer


class Callback:
    """Base class of callbacks: override the hooks you need; every hook does nothing by default.

    A callback that keeps state across a restart returns it from `state_dict` and takes it back in
    `load_state_dict`; it is stored in the checkpoint under `state_key`.
    """

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint; unique among the trainer's callbacks."""
        return self.__class__.__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """A state key that includes the arguments that make two instances of one class differ."""
        return f"{self.__class__.__qualname__}{kwargs!r}"

    # -- lifecycle -------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None: ...
    def teardown(self, trainer: Trainer, pl_module: TrainingModule, stage: str) -> None: ...
    def on_fit_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_fit_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_sanity_check_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_sanity_check_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_exception(self, trainer: Trainer, pl_module: TrainingModule, exception: BaseException) -> None: ...

    # -- training --------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_train_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: TrainingModule, batch: Any, batch_idx: int
    ) -> None: ...
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None: ...
    def on_before_backward(self, trainer: Trainer, pl_module: TrainingModule, loss: torch.Tensor) -> None: ...
    def on_after_backward(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: TrainingModule, optimizer: torch.optim.Optimizer
    ) -> None: ...
    def on_before_zero_grad(
        self, trainer: Trainer, pl_module: TrainingModule, optimizer: torch.optim.Optimizer
    ) -> None: ...

    # -- validation, test, predict --------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_validation_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: TrainingModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: TrainingModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...
    def on_test_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_test_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_test_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_test_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_test_batch_start(
        self, trainer: Trainer, pl_module: TrainingModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: TrainingModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...
    def on_predict_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_predict_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: TrainingModule) -> None: ...
    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: TrainingModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: TrainingModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State to store in the checkpoint (plain types and tensors only)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back what `state_dict` returned."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: TrainingModule, checkpoint: dict[str, Any]
    ) -> None: ...
    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: TrainingModule, checkpoint: dict[str, Any]
    ) -> None: ...
