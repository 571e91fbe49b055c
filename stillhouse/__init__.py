"""Stillhouse: grow, curate, version and distill task-specific datasets from a teacher model."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("stillhouse")
except importlib.metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"
