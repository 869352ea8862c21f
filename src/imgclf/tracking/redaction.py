"""Secrets out of everything logged: secret-looking keys and user:password in URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgclf.credentials import SECRET_KEY, USERINFO

MAX_PARAM_LENGTH = 6000


URL_USERINFO = USERINFO


def redact(key: str, value: Any) -> Any:
    """Hide secrets: values of secret-looking keys, and user:password@ parts of URLs."""
    if value is None:
        return value
    if SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return URL_USERINFO.sub(r"\g<scheme>***@", value)
    return value


def redact_overrides(overrides: list[str]) -> str:
    """Hydra overrides as one string, with secret values hidden."""
    parts = (o.split("=", 1) for o in overrides)
    return " ".join(f"{p[0]}={redact(p[0], p[1])}" if len(p) == 2 else p[0] for p in parts)


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
