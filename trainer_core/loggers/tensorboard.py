"""`TensorBoardLogger`: scalars, hparams and `hparams.yaml` in versioned folders, resumable in place."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from trainer_core.loggers.base import (
    DummyExperiment,
    FolderLogger,
    convert_params,
    flatten_dict,
    rank_zero_experiment,
    save_hparams_to_yaml,
    to_plain,
)
from trainer_core.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


class TensorBoardLogger(FolderLogger):
    """Log to TensorBoard event files in `save_dir/name/version_<n>` (Lightning's layout and arguments).

    `version=None` takes the next free `version_<n>`; an int names `version_<int>`; a string is used as the
    folder name itself (so a run directory chosen up front can be resumed in place, see
    `resume_from_step`). Hyperparameters go to TensorBoard's HPARAMS tab and to `hparams.yaml` beside the
    event files.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **writer_kwargs: Any,
    ) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = os.fspath(sub_dir) if sub_dir is not None else None
        self._writer_kwargs = writer_kwargs
        self._purge_step: int | None = writer_kwargs.pop("purge_step", None)
        self._experiment: Any = None
        self.hparams: dict[str, Any] = {}
        self._hparams_dirty = False

    # -- where -----------------------------------------------------------------------------------------
    @property
    def log_dir(self) -> str:
        log_dir = self.version_dir
        if self._sub_dir is not None:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expandvars(os.path.expanduser(log_dir))

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    # -- the writer ------------------------------------------------------------------------------------
    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The `torch.utils.tensorboard.SummaryWriter` (rank zero); created on first use."""
        if self._experiment is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            _wait_until_new_files_sort_last(self.log_dir)
            self._experiment = SummaryWriter(
                log_dir=self.log_dir, purge_step=self._purge_step, **self._writer_kwargs
            )
            if self._purge_step is not None:
                self._write_restart_marker(self._experiment, self._purge_step)
        return self._experiment

    @staticmethod
    def _write_restart_marker(writer: Any, step: int) -> None:
        # TensorBoard's loader takes a run's first SessionLog.START as its beginning and purges only on a
        # later one. SummaryWriter(purge_step=...) writes one START; a second at the same step makes the
        # purge of the earlier run's steps >= `step` happen whichever file the loader reads first.
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    def resume_from_step(self, step: int) -> None:
        """Continue this folder's events; TensorBoard drops what an earlier run logged at `step` or later.

        SummaryWriter's `purge_step` writes a restart marker that TensorBoard's reader honours.
        """
        self._purge_step = step
        if self._experiment is not None:
            # The marker is written when a writer opens: reopen so it lands before anything new.
            self._experiment.close()
            self._experiment = None

    # -- writing ---------------------------------------------------------------------------------------
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        writer = self.experiment
        for key, value in metrics.items():
            tag = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            if isinstance(value, dict):
                writer.add_scalars(tag, value, step)
                continue
            if isinstance(value, torch.Tensor):
                value = value.item()
            try:
                writer.add_scalar(tag, value, step)
            except Exception as error:
                raise ValueError(
                    f"TensorBoardLogger cannot log metric {key!r} = {value!r}: "
                    "log a number or a scalar tensor."
                ) from error

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, float] | None = None) -> None:
        """Record `params` for the HPARAMS tab and `hparams.yaml`; `metrics` (or `hp_metric=-1`) tie them to
        a scalar TensorBoard can plot against them."""
        params = convert_params(params)
        self.hparams.update(params)
        self._hparams_dirty = True
        flat = {key: _hparam_value(value) for key, value in flatten_dict(params).items()}
        if metrics is None and self._default_hp_metric:
            metrics = {"hp_metric": -1}
        if not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        self.log_metrics(metrics, 0)
        experiment, session_start, session_end = hparams(flat, metrics)
        file_writer: Any = self.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)

    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:
        if not self._log_graph:
            return
        input_array = getattr(model, "example_input_array", None) if input_array is None else input_array
        if input_array is None:
            log.warning("TensorBoardLogger(log_graph=True): set model.example_input_array to log the graph.")
            return
        self.experiment.add_graph(model, input_array)

    @rank_zero_only
    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.flush()
        hparams_file = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        stale = self._hparams_dirty or not os.path.isfile(hparams_file)
        if stale and os.path.isdir(self.log_dir):
            save_hparams_to_yaml(hparams_file, self.hparams)
            self._hparams_dirty = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
        if self._experiment is not None and not isinstance(self._experiment, DummyExperiment):
            self._experiment.close()
            self._experiment = None

    def __getstate__(self) -> dict[str, Any]:
        # The writer owns a thread and a file: a pickled logger (sent to a rank) opens its own.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def _hparam_value(value: Any) -> Any:
    """What TensorBoard's hparams plugin accepts: bool, int, float, str (and a tensor's number)."""
    plain = to_plain(value)
    return plain if isinstance(plain, bool | int | float | str) else str(plain)


def _wait_until_new_files_sort_last(log_dir: str) -> None:
    """Make sure an event file opened now sorts after every file already in `log_dir`.

    TensorBoard reads a folder's event files in name order, and a name starts with its creation second
    (`events.out.tfevents.<seconds>.<host>.<pid>.<counter>`). A run resumed within the same second as the
    previous writer opened could otherwise be read first, and its restart marker would purge nothing.
    """
    newest = 0
    for name in os.listdir(log_dir):
        parts = name.split(".")
        if name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
            newest = max(newest, int(parts[3]))
    while int(time.time()) <= newest:
        time.sleep(0.05)
