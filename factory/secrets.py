"""Keep secrets (API keys, passwords, credentials) out of manifests, logs, caches and reports.

Only names that hold a secret are redacted: a config's `max_tokens`, `min_tokens`,
`return_token_ids` or a tokenizer's `pad_token` are settings a reader needs, not secrets.
"""

from __future__ import annotations

import re
from typing import Any

# A key holds a secret when its whole name matches (case-insensitive): API keys and any
# `*_key`, anything with `secret` or `password`, authorization and cookie headers, and
# `token` itself or a credential token (`access_token`, `hf_token`, ...).
SECRET_NAME_PATTERN = re.compile(
    r"""(
        .*api[_-]?key.* | .*[_-]key
      | .*secret.* | .*passw(or)?d.*
      | (proxy[_-])?authorization | cookie | set[_-]cookie
      | token | (access|auth|bearer|id|refresh|session|hf|github)[_-]token
    )""",
    re.IGNORECASE | re.VERBOSE,
)
REDACTED = "***"


def is_secret_name(key: object) -> bool:
    """Whether a field of this name holds a secret.

    Keys naming an environment variable (`api_key_env: OPENAI_API_KEY`) are not: they
    say where the secret comes from, not what it is.
    """
    name = str(key)
    return not name.lower().endswith("_env") and SECRET_NAME_PATTERN.fullmatch(name) is not None


def redact_secrets(value: Any) -> Any:
    """A copy of a config structure with every secret field's value replaced by `***`."""
    if isinstance(value, dict):
        return {
            key: REDACTED if is_secret_name(key) and item not in (None, "") else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value
