"""`save_hyperparameters`: a constructor's arguments (frame inspection, `ignore=`) as an `AttributeDict`."""

from __future__ import annotations

import copy
import inspect
from argparse import Namespace
from collections.abc import Iterable, Mapping, Sequence
from types import FrameType
from typing import Any

from trainer_core.errors import MisconfigurationError


class AttributeDict(dict[str, Any]):
    """A dict whose keys are also attributes: `hparams.lr` reads `hparams["lr"]`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"hyperparameter {key!r} is not set; saved ones: {sorted(self)}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]


def init_arguments(frame: FrameType) -> dict[str, Any]:
    """The named arguments (and `**kwargs` contents) of the function running in `frame`, without `self`."""
    info = inspect.getargvalues(frame)
    values: dict[str, Any] = {name: info.locals[name] for name in info.args if name in info.locals}
    values.pop("self", None)
    values.pop("__class__", None)
    if info.keywords and isinstance(info.locals.get(info.keywords), Mapping):
        values.update(info.locals[info.keywords])
    return values


def _collect_from_hierarchy(frame: FrameType, obj: Any) -> dict[str, Any]:
    """Arguments of every `__init__` of `obj` on the stack, outermost (most derived) last so it wins."""
    collected: list[dict[str, Any]] = []
    current: FrameType | None = frame
    while (
        current is not None and current.f_code.co_name == "__init__" and current.f_locals.get("self") is obj
    ):
        collected.append(init_arguments(current))
        current = current.f_back
    merged: dict[str, Any] = {}
    for arguments in reversed(collected):
        merged.update(arguments)
    return merged


def _normalise_ignore(ignore: str | Iterable[str] | None) -> set[str]:
    if ignore is None:
        return set()
    if isinstance(ignore, str):
        return {ignore}
    return set(ignore)


def collect_hyperparameters(
    obj: Any, args: Sequence[Any], ignore: str | Iterable[str] | None, frame: FrameType | None
) -> AttributeDict:
    """What `save_hyperparameters(*args, ignore=...)` called from `obj.__init__` (at `frame`) saves.

    No positional argument: every constructor argument. One dict, `Namespace` or `AttributeDict`: that object.
    Strings: only the constructor arguments of those names.
    """
    if len(args) == 1 and isinstance(args[0], (Mapping, Namespace)):
        given = args[0]
        values = dict(vars(given) if isinstance(given, Namespace) else given)
    else:
        init_values = _collect_from_hierarchy(frame, obj) if frame is not None else {}
        names = [a for a in args if isinstance(a, str)]
        if len(names) != len(args):
            raise MisconfigurationError(
                f"save_hyperparameters got {args!r}; pass argument names as strings, one dict, or nothing "
                "(to save every constructor argument)"
            )
        missing = [name for name in names if name not in init_values]
        if missing:
            raise MisconfigurationError(
                f"save_hyperparameters: {missing} are not arguments of {type(obj).__name__}.__init__; "
                f"the arguments are {sorted(init_values)}"
            )
        values = {name: init_values[name] for name in names} if names else init_values
    for name in _normalise_ignore(ignore):
        values.pop(name, None)
    return AttributeDict(values)


class HyperparametersMixin:
    """`save_hyperparameters`, `hparams` and `hparams_initial`, shared by the module and the data module."""

    _hparams: AttributeDict
    _hparams_initial: AttributeDict

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: str | Sequence[str] | None = None,
        frame: FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Save constructor arguments into `self.hparams` (and the checkpoint's `hyper_parameters`).

        Call it from `__init__`. `ignore` names arguments to leave out (for example a network passed in).
        `logger=False` keeps them out of the loggers' hyperparameters.
        """
        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        hparams = collect_hyperparameters(self, args, ignore, frame)
        object.__setattr__(self, "_hparams", hparams)
        object.__setattr__(self, "_hparams_initial", copy.deepcopy(hparams))
        object.__setattr__(self, "_log_hyperparams", logger)

    @property
    def hparams(self) -> AttributeDict:
        """The saved hyperparameters (an empty `AttributeDict` until `save_hyperparameters` runs)."""
        if "_hparams" not in self.__dict__:
            object.__setattr__(self, "_hparams", AttributeDict())
        return self.__dict__["_hparams"]  # type: ignore[no-any-return]

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as first saved, unaffected by later edits of `hparams`."""
        return copy.deepcopy(self.__dict__.get("_hparams_initial", AttributeDict()))
