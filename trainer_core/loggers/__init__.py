"""Experiment loggers: the `Logger` base class, `TensorBoardLogger` and `CSVLogger`."""

from __future__ import annotations

from trainer_core.loggers.base import Logger
from trainer_core.loggers.csv_logs import CSVLogger
from trainer_core.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
