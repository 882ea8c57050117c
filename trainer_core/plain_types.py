"""Plain types for what a checkpoint holds beside tensors (hyperparameters): `weights_only` loads them."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def to_plain(obj: Any) -> Any:
    """`obj` as types that `weights_only` loading accepts, for hyperparameters.

    Mappings and dataclasses become dicts, sequences and sets lists, paths strings, enums their value,
    numpy arrays and scalars lists and numbers; str/int/float/bool/None/bytes and tensors stay as they are;
    anything else becomes its `repr`.
    """
    if obj is None or isinstance(obj, str | int | float | bool | bytes | torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return {_plain_key(key): to_plain(value) for key, value in obj.items()}
    if isinstance(obj, Sequence):  # lists, tuples, and config containers such as omegaconf's ListConfig
        return [to_plain(item) for item in obj]
    if isinstance(obj, set | frozenset):
        return sorted((to_plain(item) for item in obj), key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: to_plain(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return to_plain(obj.tolist())  # a numpy array or scalar
    return repr(obj)


def _plain_key(key: Any) -> Any:
    return key if key is None or isinstance(key, str | int | float | bool) else str(key)
