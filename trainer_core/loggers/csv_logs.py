"""`CSVLogger`: `metrics.csv` (one row per logged step, columns grow as metrics appear) and `hparams.yaml`."""

from __future__ import annotations

import csv
import os
from typing import Any

import torch

from trainer_core.loggers.base import (
    FolderLogger,
    convert_params,
    rank_zero_experiment,
    save_hparams_to_yaml,
)
from trainer_core.rank_zero import rank_zero_only


class ExperimentWriter:
    """Buffers metric rows in memory and writes `metrics.csv` when saved.

    When a new metric name appears, the file is rewritten with the wider header (old rows get empty cells).
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self._written_keys: list[str] = []
        os.makedirs(log_dir, exist_ok=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None) -> None:
        row = {
            key: value.item() if isinstance(value, torch.Tensor) else value for key, value in metrics.items()
        }
        if step is None:
            step = len(self.metrics)
        row["step"] = step
        self.metrics.append(row)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def drop_from_step(self, step: int) -> None:
        """Keep only the rows of an existing `metrics.csv` logged before `step` (a resumed run)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        rows, keys = self._read_existing()
        kept = [row for row in rows if _row_step(row) < step]
        self._rewrite(kept, keys)

    def save(self) -> None:
        """Append buffered rows; rewrite the whole file when the set of columns grew."""
        if not self.metrics:
            return
        keys = list(self._written_keys)
        for row in self.metrics:
            keys.extend(key for key in row if key not in keys)
        if not self._written_keys and os.path.isfile(self.metrics_file_path):
            _, existing_keys = self._read_existing()
            self._written_keys = existing_keys
            keys = existing_keys + [key for key in keys if key not in existing_keys]
        if keys != self._written_keys:
            rows, _ = self._read_existing()
            self._rewrite(rows + self.metrics, keys)
        else:
            with open(self.metrics_file_path, "a", newline="", encoding="utf-8") as stream:
                csv.DictWriter(stream, fieldnames=keys).writerows(self.metrics)
        self.metrics = []

    def _read_existing(self) -> tuple[list[dict[str, Any]], list[str]]:
        if not os.path.isfile(self.metrics_file_path):
            return [], []
        with open(self.metrics_file_path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            return list(reader), list(reader.fieldnames or [])

    def _rewrite(self, rows: list[dict[str, Any]], keys: list[str]) -> None:
        keys = (["step"] if "step" in keys else []) + [key for key in keys if key != "step"]
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=keys, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)  # a reader never sees half a file
        self._written_keys = keys


def _row_step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step", ""))
    except ValueError:
        return float("-inf")


class CSVLogger(FolderLogger):
    """Log metrics to `save_dir/name/version_<n>/metrics.csv` and hyperparameters to `hparams.yaml`.

    Rows are buffered and written once `flush_logs_every_n_steps` rows have been logged, and at
    `save`/`finalize`, so training steps do no file I/O.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: ExperimentWriter | None = None
        self._drop_from_step: int | None = None
        self._rows_since_flush = 0

    @property
    def log_dir(self) -> str:
        return self.version_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The CSV writer (rank zero); created on first use."""
        if self._experiment is None:
            self._experiment = ExperimentWriter(self.log_dir)
            if self._drop_from_step is not None:
                self._experiment.drop_from_step(self._drop_from_step)
        return self._experiment

    def resume_from_step(self, step: int) -> None:
        """Continue this folder's `metrics.csv`, dropping rows an earlier run logged at `step` or later."""
        self._drop_from_step = step
        if self._experiment is not None:
            self._experiment.save()
            self._experiment.drop_from_step(step)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}": value for key, value in metrics.items()}
        self.experiment.log_metrics(metrics, step)
        self._rows_since_flush += 1
        if self._rows_since_flush >= self._flush_logs_every_n_steps:
            self.save()

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, float] | None = None) -> None:
        self.experiment.log_hparams(convert_params(params))

    @rank_zero_only
    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.save()
        self._rows_since_flush = 0

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
