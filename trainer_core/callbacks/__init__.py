"""Callbacks: the `Callback` base class and the built-in callbacks."""

from __future__ import annotations

from trainer_core.callbacks.base import Callback
from trainer_core.callbacks.device_stats import DeviceStatsMonitor
from trainer_core.callbacks.early_stopping import EarlyStopping
from trainer_core.callbacks.lr_monitor import LearningRateMonitor
from trainer_core.callbacks.model_checkpoint import ModelCheckpoint
from trainer_core.callbacks.model_summary import ModelSummary
from trainer_core.callbacks.progress import ProgressBar, TQDMProgressBar
from trainer_core.callbacks.summary import FitSummary
from trainer_core.callbacks.throughput import ThroughputMonitor

__all__ = [
    "Callback",
    "DeviceStatsMonitor",
    "EarlyStopping",
    "FitSummary",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
    "TQDMProgressBar",
    "ThroughputMonitor",
]
