"""A user's own curation stage, generation task or teacher backend, named in the config.

A config names a built-in (`stage: heuristics`), an import path (`stage:
mypkg.filters:MyFilter`) or an entry point a package registers in one of `GROUPS`
(`[project.entry-points."stillhouse.stages"] my_filter = "mypkg.filters:MyFilter"`).
Configs holding such a name accept any further keys: they are the plugin's keyword
arguments, checked against its signature when the config is loaded, so a typo is a
config error naming its line, not a failure an hour into a run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any

GROUPS = {"stage": "stillhouse.stages", "task": "stillhouse.tasks", "teacher": "stillhouse.teachers"}


def load_plugin(reference: str, kind: str, base: type, builtins: tuple[str, ...] = ()) -> type:
    """The class `reference` names (`module.path:Name` or an entry point of `kind`'s group).

    Raises ValueError (a config error at the key's line) when it cannot be found or is
    not a subclass of `base`.
    """
    group = GROUPS[kind]
    if ":" in reference:
        module_name, _, attribute = reference.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import {module_name} for {kind} '{reference}' ({exc})") from None
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise ValueError(f"{module_name} has no '{attribute}' (from {kind} '{reference}')")
            target = getattr(target, part)
    else:
        entry_points = importlib.metadata.entry_points(group=group, name=reference)
        if not entry_points:
            raise ValueError(
                f"unknown {kind} '{reference}' (built-ins: {', '.join(builtins) or 'none'}; "
                f"or an import path module:Class, or an entry point in the '{group}' group)"
            )
        entry_point = next(iter(entry_points))
        try:
            target = entry_point.load()
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"entry point '{reference}' = {entry_point.value} cannot be loaded ({exc})") from None
    if not (inspect.isclass(target) and issubclass(target, base)):
        raise ValueError(f"{kind} '{reference}' is not a subclass of {base.__module__}.{base.__qualname__}")
    return target


def check_options(cls: type, options: dict[str, Any]) -> None:
    """Raise ValueError when `cls(**options)` would not bind to its constructor."""
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}{signature}: {exc}") from None


def plugin_discriminator(field: str, builtins: tuple[str, ...]) -> Callable[[Any], str]:
    """A pydantic discriminator: the built-in's tag for a built-in name, else 'plugin'."""

    def tag(value: Any) -> str:
        name = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return name if name in builtins else "plugin"

    return tag
