"""Errors every Stillhouse layer raises for bad input.

The CLI turns any `StillhouseError` into one line on stderr and a non-zero exit;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StillhouseError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class SchemaError(StillhouseError):
    """A frame or file does not match the record schema (names column and row)."""


class ConfigError(StillhouseError):
    """A config file is malformed or has unknown/invalid keys (names file and line)."""
