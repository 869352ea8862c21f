"""Credentials in a tracking URI (`https://user:password@host`) never get written down: they move into MLflow's
own variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, inherited by sweep jobs) before Hydra saves
the overrides, a log line quotes a request's URL, or a run records its config."""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping, Sequence
from urllib.parse import unquote

USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
HTTP_USERINFO = re.compile(r"^(?P<scheme>https?://)(?P<user>[^:/@\s]+)(?::(?P<password>[^/@\s]*))?@", re.IGNORECASE)
URI_OVERRIDE = re.compile(r"^(?P<key>[+~]*tracking\.uri=)(?P<value>.*)$")


def hide(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`, anywhere in `text`."""
    return USERINFO.sub(r"\g<scheme>***@", text)


def take_uri_credentials(uri: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """An http(s) URI without its user:password, which go into MLflow's variables instead."""
    match = HTTP_USERINFO.match(uri)
    if not match:
        return uri
    environ["MLFLOW_TRACKING_USERNAME"] = unquote(match["user"])
    if match["password"] is not None:
        environ["MLFLOW_TRACKING_PASSWORD"] = unquote(match["password"])
    return match["scheme"] + uri[match.end() :]


def strip_overrides(argv: Sequence[str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Command-line overrides with any `tracking.uri=` freed of its credentials."""
    out = []
    for arg in argv:
        match = URI_OVERRIDE.match(arg)
        out.append(match["key"] + take_uri_credentials(match["value"], environ) if match else arg)
    return out
