"""Secrets out of everything logged: secret-looking keys and user:password in URLs. `redact` and `redact_overrides`
live in credentials.py, where the stages' workspace line takes them without importing this package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgclf.credentials import redact, redact_overrides

__all__ = ["MAX_PARAM_LENGTH", "flatten", "redact", "redact_overrides", "redacted"]
MAX_PARAM_LENGTH = 6000


def redacted(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a nested config with secrets hidden (for artifacts, checkpoints and logs)."""
    return {k: redacted(v) if isinstance(v, Mapping) else redact(k, v) for k, v in cfg.items()}


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
