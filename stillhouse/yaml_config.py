"""YAML config files into pydantic models, with errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from factory.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)
PYDANTIC_TAGS = ("plugin",)  # the plugin union tag pydantic puts into locations, not a key of the file


def read_yaml(path: Path | str) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file; return its data and a map from key path to 1-based line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    if not text.strip():
        raise ConfigError(f"{path}: config file is empty")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    lines: dict[tuple, int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: yaml.Node | None, prefix: tuple, lines: dict[tuple, int]) -> None:
    if node is None:
        return
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            lines[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*prefix, index), lines)


def yaml_path(location: tuple, lines: dict[tuple, int]) -> tuple:
    """The YAML key path of a pydantic error location.

    Pydantic inserts union tags and model names into locations; elements that do not
    continue a real YAML path are skipped.
    """
    path: tuple = ()
    for element in location:
        if (*path, element) in lines:
            path = (*path, element)
    return path


def line_of(location: tuple, lines: dict[tuple, int]) -> int | None:
    """Best line for a pydantic error location."""
    return lines.get(yaml_path(location, lines))


def format_validation_error(path: Path | str, error: ValidationError, lines: dict[tuple, int]) -> str:
    messages = []
    for item in error.errors():
        location = tuple(item["loc"])
        line = line_of(location, lines)
        key = ".".join(str(part) for part in location if part not in PYDANTIC_TAGS) or "(top level)"
        where = f"{path}:{line}" if line else str(path)
        if item["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown key '{location[-1]}' (at {key})")
        else:
            messages.append(f"{where}: {key}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(messages)


def load_config(path: Path | str, model: type[Model]) -> Model:
    """Load a YAML file into `model`; any problem raises `ConfigError` naming file, line and key."""
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data, context={"config_dir": Path(path).resolve().parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, lines)) from None
