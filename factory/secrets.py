"""Keep secrets (API keys, tokens) out of manifests, logs, caches and reports."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY_PATTERN = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)
REDACTED = "***"


def redact_secrets(value: Any) -> Any:
    """A copy of a config structure with every secret-looking key's value replaced.

    Keys naming an environment variable (`api_key_env: OPENAI_API_KEY`) are kept: they
    say where the secret comes from, not what it is.
    """
    if isinstance(value, dict):
        return {
            key: REDACTED
            if SECRET_KEY_PATTERN.search(str(key)) and not str(key).endswith("_env") and item not in (None, "")
            else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value
