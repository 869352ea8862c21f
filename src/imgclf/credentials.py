"""Credentials in a tracking URI (`https://user:password@host`) never get written down: they move into MLflow's
own variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, inherited by sweep jobs) before Hydra saves
the overrides, a log line quotes a request's URL, or a run records its config."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import unquote

USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s]+@", re.IGNORECASE)  # to the last @: p@ss is hidden
HTTP_USERINFO = re.compile(r"^(?P<scheme>https?://)(?P<user>[^:/@\s]+)(?::(?P<password>[^/@\s]*))?@", re.IGNORECASE)
URI_OVERRIDE = re.compile(r"^(?P<key>[+~]*tracking\.uri=)(?P<value>.*)$")
PASSWORD_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", re.IGNORECASE)  # user:password@
# `key` as a word of its own (kaggle_key, data.key, key_id), not inside another (monkey, keyboard)
# MYSQL_PWD, DB_PASS: a password under its abbreviation, after an underscore (PWD alone is the working folder)
SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|apikey|credential|(?<![a-z])key(?![a-z])|(?<=_)(pwd|pass)(?![a-z]))", re.IGNORECASE
)
ENVIRONMENT = {"hydra.sweeper.storage": "IMGCLF_OPTUNA_STORAGE"}  # where a key's secret goes instead
# `${oc.env:NAME}` and `${oc.env:NAME,default}`, in a config value or an override's
ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.env\s*:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")


def _variable_for(key: str) -> str:
    """Where a secret-looking key's value belongs: the variables of the tool that reads it."""
    if "kaggle" in key.lower():
        return "KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json)"
    if key.split(".")[0] == "tracking" or "mlflow" in key.lower():
        return "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    return "the environment variable the tool that reads it takes"


def secret_variable(name: str) -> bool:
    """True for an environment variable holding a secret: a secret-looking name (MLFLOW_TRACKING_PASSWORD,
    KAGGLE_KEY, PGPASSWORD) or one imgclf sends a secret to (IMGCLF_OPTUNA_STORAGE)."""
    return bool(SECRET_KEY.search(name)) or name in ENVIRONMENT.values()


def secret_interpolation(key: str, value: object) -> str | None:
    """A one-line refusal of a config value that reads a secret's variable (`${oc.env:MLFLOW_TRACKING_PASSWORD}`),
    else None: resolved, it would be the run's name, an MLflow param, a line of params.yaml and outputs/."""
    if not isinstance(value, str) or "oc.env" not in value:
        return None
    name = next((n for n in ENV_INTERPOLATION.findall(value) if secret_variable(n)), None)
    if name is None:
        return None
    return (
        f"{key}=${{oc.env:{name}}} would write a secret into the config (run name, MLflow params, params.yaml, "
        f"outputs/): no config key takes one; leave it in {name}, where the tool that needs it reads it"
    )


def secret_in_config(node: object, prefix: str = "") -> str | None:
    """secret_interpolation's refusal for the first value of an unresolved config (nested mappings and lists)."""
    if isinstance(node, Mapping):
        items = ((f"{prefix}{k}", v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{prefix.rstrip('.')}[{i}]", v) for i, v in enumerate(node))
    else:
        return secret_interpolation(prefix.rstrip("."), node)
    for key, value in items:
        if why := secret_in_config(value, f"{key}."):
            return why
    return None


def secret_override(argv: Sequence[str]) -> str | None:
    """A one-line refusal of an override carrying a secret (a secret-looking key, a URL's password), else None:
    Hydra saves overrides under outputs/ and multirun/, and DVC writes `-S` into params.yaml. A tracking URI's
    user:password is the exception: strip_overrides moves them into MLflow's variables first."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if not value.strip("'\"") or value == "null" or arg.startswith("-"):
            continue
        if why := secret_interpolation(key, value):
            return why
        if key == "tracking.uri":  # an http(s) user:password moves into MLflow's variables; a database's cannot
            if PASSWORD_URL.search(value) and not HTTP_USERINFO.match(value.strip("'\"")):
                return ("tracking.uri: a database password is not taken in the URI (Hydra and DVC write overrides "
                        "down); give it to the database's driver: PGPASSWORD or ~/.pgpass for PostgreSQL")  # fmt: skip
            continue
        inner = [k for k in MAPPING_KEY.findall(value) if SECRET_KEY.search(k)] if "{" in value else []
        if SECRET_KEY.search(key) or url_secret(value) or inner:
            where = ENVIRONMENT.get(key) or _variable_for(key)
            named = f"{key}.{inner[0]}" if inner and not SECRET_KEY.search(key) else key
            return (
                f"{named}: a secret is not taken as an override (Hydra and DVC write overrides down); put it in {where}"
            )
    return None


# a key of a mapping written in an override's value: `+data.creds={api_token: ...}`, `[{token: ...}]`
MAPPING_KEY = re.compile(r"[{,]\s*['\"]?([A-Za-z_][\w.-]*)['\"]?\s*:")


# a URL's query parameter named like a secret: `?token=...`, `&api_key=...`, `X-Amz-Signature=...`
QUERY_SECRET = re.compile(
    r"(?P<name>[?&][^=&#\s]*(?:password|passwd|secret|token|key|signature|sig)[^=&#\s]*=)[^&#\s]+", re.IGNORECASE
)


def url_secret(value: str) -> bool:
    """Whether `value` holds a URL's password (`user:pw@`) or a secret-named query value (`?password=...`)."""
    return bool(PASSWORD_URL.search(value) or QUERY_SECRET.search(value))


def hide(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`, and a secret-named query value (`?token=...`) -> `***`,
    anywhere in `text`."""
    return QUERY_SECRET.sub(r"\g<name>***", USERINFO.sub(r"\g<scheme>***@", text))


def redact(key: str, value: Any) -> Any:
    """Hide secrets: values of secret-looking keys, and user:password@ parts of URLs."""
    if value is None:
        return value
    if SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return hide(value)
    return value


def redact_overrides(overrides: Sequence[str]) -> str:
    """Hydra overrides as one string, with secret values hidden: the workspace line, the run's imgclf.overrides."""
    parts = (o.split("=", 1) for o in overrides)
    return " ".join(f"{p[0]}={redact(p[0], p[1])}" if len(p) == 2 else p[0] for p in parts)


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
        if not match:
            out.append(arg)
            continue
        value = match["value"]
        quote = value[0] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else ""  # Hydra's quoting
        out.append(
            match["key"] + quote + take_uri_credentials(value[len(quote) : len(value) - len(quote)], environ) + quote
        )
    return out


# the stores imgclf reads and writes through MLflow: SQLite, a tracking server, a database (any driver)
STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")


def store_scheme(uri: str) -> str:
    """`postgresql` for postgresql+psycopg://..., `sqlite` for sqlite:///...; "" for a path."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""


SQLITE_URI = re.compile(r"^sqlite(\+\w+)?:///", re.IGNORECASE)  # sqlite+pysqlite:/// is SQLite's too


def sqlite_path(uri: str) -> str | None:
    """The database file of a `sqlite:///` URI (or `sqlite+DRIVER:///`; query string dropped); None for other
    stores."""
    found = SQLITE_URI.match(uri)
    return uri[found.end() :].split("?", 1)[0] if found else None


def unknown_store(uri: str) -> str | None:
    """Why `uri` is no tracking store imgclf can use (one line naming what is valid), or None. MLflow's file store
    (`mlruns`, `file:///...`) is in maintenance mode and takes no model registry: a folder given here is refused."""
    netloc = re.match(r"[^:]+://[^/]", uri)  # sqlite://user:pw@/m.db: SQLAlchemy's traceback
    if store_scheme(uri) == "sqlite" and netloc:
        return f"{hide(uri)!r} is not an SQLite URI: give sqlite:///PATH (sqlite:///mlflow.db, sqlite:////abs/m.db)"
    if store_scheme(uri) == "sqlite":
        return sqlite_file_error(uri)
    if store_scheme(uri) in STORE_SCHEMES:
        return _malformed(uri)
    return (
        f"{hide(uri)!r} is not a tracking store imgclf can use: give sqlite:///PATH (a file, made if missing), "
        "http(s)://HOST:PORT (mlflow server) or postgresql://... / mysql://... (a database)"
    )


def _malformed(uri: str) -> str | None:
    """Why a server's or a database's URI is no URL (a port that is no number, an IPv6 host missing its bracket:
    tracebacks from the HTTP client or SQLAlchemy), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (a port that is no number from 0 to 65535 raises)
    except ValueError:  # not its words: `http://user:pw/` puts the password where the port goes
        return f"{hide(uri)!r} is not a URL: give SCHEME://HOST:PORT/..., the port a number to 65535, [an IPv6 host]"
    if not parts.hostname and store_scheme(uri) in ("http", "https"):
        return f"{hide(uri)!r} names no host: give http(s)://HOST:PORT (the mlflow server)"
    return None


def sqlite_file_error(uri: str) -> str | None:
    """Why an sqlite URI names no database file imgclf can open (none given, a folder, a folder that cannot be made:
    SQLAlchemy would fail for half an hour of retries), or None."""
    from pathlib import Path

    from imgclf.errors import BadInput
    from imgclf.targets import sqlite_tables, unmakeable_folder

    rest = uri.split("://", 1)[1] if "://" in uri else ""
    path = (rest[1:] if rest.startswith("/") else rest).split("?")[0]  # sqlite:///rel.db, sqlite:////abs/m.db
    uri = hide(uri)  # a query's ?password=..., as every message below shows it
    if not path.strip() or path == ":memory:":
        return f"{uri!r} names no database file: give sqlite:///PATH (sqlite:///mlflow.db, sqlite:////abs/mlflow.db)"
    file = Path(path).expanduser().absolute()
    if file.is_dir():
        return f"{uri!r} names a folder: give the database file in it (sqlite:///{path.rstrip('/')}/mlflow.db)"
    if file.is_symlink() and not file.exists():  # SQLAlchemy's "unable to open database file", after retries
        return f"{uri!r}: {file} is a link that leads nowhere (or to itself)"
    if file.is_file() and file.stat().st_size > 0:  # imgclf check says what train would: not a database
        try:
            sqlite_tables(file)
        except BadInput as exc:
            return f"{uri!r}: {exc}; give an MLflow store, e.g. sqlite:///mlflow.db"
    why = unmakeable_folder(file.parent)  # a new store's folders are made, as paths.* are
    return f"{uri!r}: its folder {file.parent} {why}" if why else None
