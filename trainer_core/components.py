"""The `Trainer`'s views of its loggers and callbacks: `logger`, `log_dir`, `checkpoint_callback`, ..."""

from __future__ import annotations

from typing import Any


class AttachedComponents:
    """Lightning's lookups of the trainer's loggers and of its callbacks by kind (a mixin of `Trainer`)."""

    callbacks: list[Any]
    loggers: list[Any]
    default_root_dir: str

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @property
    def log_dir(self) -> str:
        """The first logger's directory, else `default_root_dir`."""
        if self.loggers:
            directory = getattr(self.loggers[0], "log_dir", None) or getattr(
                self.loggers[0], "save_dir", None
            )
            if directory is not None:
                return str(directory)
        return self.default_root_dir

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from trainer_core.callbacks.model_checkpoint import ModelCheckpoint

        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        callbacks = self.checkpoint_callbacks
        return callbacks[0] if callbacks else None

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from trainer_core.callbacks.early_stopping import EarlyStopping

        return [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Any:
        callbacks = self.early_stopping_callbacks
        return callbacks[0] if callbacks else None

    @property
    def progress_bar_callback(self) -> Any:
        from trainer_core.callbacks.progress import ProgressBar

        return next((cb for cb in self.callbacks if isinstance(cb, ProgressBar)), None)
