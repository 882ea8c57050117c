"""`_target_` resolution for the user's classes (model, data): import, argument check, instantiation."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from launcher.errors import ConfigError
from launcher.validate import closest_keys


def import_target(target: str, key: str) -> Any:
    """The object that a dotted path names; a ConfigError that names the module and sys.path otherwise."""
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"{key}={target}: cannot import module '{module_name}' ({error}). Python searched sys.path = "
            f"{sys.path}. Install the package that holds it, or add its directory to PYTHONPATH."
        ) from error
    if not hasattr(module, attribute):
        names = [name for name in dir(module) if not name.startswith("_")]
        raise ConfigError(
            f"{key}={target}: module '{module_name}' ({module.__file__}) has no attribute "
            f"'{attribute}'.{closest_keys(attribute, names)}"
        )
    return getattr(module, attribute)


def check_arguments(spec: dict[str, Any], group: str) -> None:
    """Import `spec['_target_']` and check that the other keys are arguments it accepts."""
    target = import_target(spec["_target_"], f"{group}._target_")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return  # a builtin or C extension without a signature: nothing to check against
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in spec:
        if key != "_target_" and key not in accepted:
            raise ConfigError(
                f"{group}.{key}={spec[key]!r}: {spec['_target_']} takes no argument '{key}'."
                f"{closest_keys(key, accepted)} Its arguments: {', '.join(accepted)}."
            )


def instantiate(spec: Any) -> Any:
    """Build the object a `_target_` mapping describes; nested mappings with `_target_` are built first."""
    if isinstance(spec, list):
        return [instantiate(item) for item in spec]
    if not isinstance(spec, dict):
        return spec
    arguments = {key: instantiate(value) for key, value in spec.items() if key != "_target_"}
    if "_target_" not in spec:
        return arguments
    return import_target(spec["_target_"], "_target_")(**arguments)
