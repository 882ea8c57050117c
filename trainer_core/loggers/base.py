"""The `Logger` base class, rank-zero-only experiments, and turning hyperparameters into plain values."""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from trainer_core.rank_zero import rank_zero_only

_T = TypeVar("_T")


class DummyExperiment:
    """What `experiment` is on ranks other than zero: every attribute is a function that does nothing."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _: str) -> Callable[..., None]:
        return self.nop

    def __getitem__(self, _: int) -> DummyExperiment:
        return self


def rank_zero_experiment(fn: Callable[[Any], _T]) -> Callable[[Any], _T | DummyExperiment]:
    """Decorate a logger's `experiment` getter: rank zero creates the real one, other ranks a dummy.

    Only rank zero writes log files, so other ranks must never open writers (or create directories).
    """

    @functools.wraps(fn)
    def experiment(self: Any) -> _T | DummyExperiment:
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        return fn(self)

    return experiment


class Logger(ABC):
    """Base class of experiment loggers (Lightning's `Logger` contract).

    The trainer calls `log_hyperparams` once at the start of `fit`, `log_metrics` every
    `log_every_n_steps` and at epoch ends, `save` now and then, and `finalize(status)` at the end.
    Writes happen on global rank zero only.
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment name (a folder under `root_dir`)."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment version: an int (folder `version_<n>`) or a string (the folder name itself)."""

    @property
    def root_dir(self) -> str | None:
        """The folder that holds every version of this experiment's logs."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder this run writes to."""
        return None

    @property
    def save_dir(self) -> str | None:
        """The folder given as `save_dir`."""
        return None

    @property
    def group_separator(self) -> str:
        """The separator between a metric's group and name (`train/loss`)."""
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record scalar metrics at `step`."""

    @abstractmethod
    def log_hyperparams(self, params: Any, metrics: dict[str, float] | None = None) -> None:
        """Record the run's hyperparameters (a mapping or an `argparse.Namespace`)."""

    # The hooks below are optional: they do nothing unless a logger overrides them.
    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:  # noqa: B027
        """Record the model's graph; loggers that cannot ignore the call."""

    def resume_from_step(self, step: int) -> None:  # noqa: B027
        """Continue an earlier run's logs in the same folder, dropping anything it logged at `step` or later.

        Call it after restoring a checkpoint and before logging anything: a resumed run then continues one
        series with no step logged twice.
        """

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:  # noqa: B027
        """Called after `ModelCheckpoint` saved a checkpoint; loggers that store artifacts override it."""

    def save(self) -> None:  # noqa: B027
        """Flush what is buffered to disk."""

    def finalize(self, status: str) -> None:
        """Flush and close at the end of the run; `status` is "success", "failed" or "interrupted"."""
        self.save()


def convert_params(params: Any) -> dict[str, Any]:
    """A plain dict from a mapping, an `argparse.Namespace` or None."""
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return vars(params)
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(
        f"log_hyperparams(params={type(params).__name__}) is not supported: "
        "pass a dict or an argparse.Namespace."
    )


def flatten_dict(params: Mapping[str, Any], delimiter: str = "/", parent: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a/b": 1}`, for writers that only take flat keys."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent}{delimiter}{key}" if parent else str(key)
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, delimiter, name))
        else:
            flat[name] = value
    return flat


def to_plain(value: Any) -> Any:
    """Plain YAML-able types: containers recursively, scalar tensors as numbers, anything else as its str."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def save_hparams_to_yaml(path: str, params: Mapping[str, Any]) -> None:
    """Write `params` as YAML (plain types only, so `yaml.safe_load` reads them back)."""
    import yaml

    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as stream:
        yaml.safe_dump(to_plain(params), stream, sort_keys=False)
    os.replace(tmp, path)  # a reader never sees half a file


class FolderLogger(Logger):
    """A logger writing under `<save_dir>/<name>/<version>/`, where an int version is `version_<n>` and no
    version means the next free number (TensorBoard's and CSV's layout)."""

    _name: str
    _save_dir: str
    _version: int | str | None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def version_dir(self) -> str:
        """`<root_dir>/<version>`: a string version as given, an int one as `version_<n>`."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)


def next_version(root: str) -> int:
    """One more than the highest `version_<n>` folder under `root` (0 when there is none)."""
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    versions = [
        int(name.split("_", 1)[1])
        for name in names
        if name.startswith("version_")
        and name.split("_", 1)[1].isdigit()
        and os.path.isdir(os.path.join(root, name))
    ]
    return max(versions) + 1 if versions else 0
