"""Download a Kaggle competition's files with the official `kaggle` client, after a credentials preflight."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from imgclf.credentials import hide
from imgclf.errors import AccessDenied, MissingInput

log = logging.getLogger(__name__)

TOKEN_HELP = (
    "create a token at https://www.kaggle.com/settings (API, 'Create New Token') and either save "
    "kaggle.json in ~/.kaggle/ (chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY, or export "
    "KAGGLE_API_TOKEN"
)


def config_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")


def credentials_source() -> str | None:
    """Where the kaggle client will find credentials (never the credentials themselves), or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for name in ("access_token", "kaggle.json"):
        if (config_dir() / name).is_file():
            return str(config_dir() / name)
    return None


def download_competition(competition: str, dest_dir: str | Path) -> Path:
    """Fetch <competition>.zip into dest_dir (kept if already there); clear one-line errors for 401 and 403."""
    dest_dir = Path(dest_dir)
    archive = dest_dir / f"{competition}.zip"
    if archive.is_file():
        log.info("%s already downloaded", archive)
        return archive
    source = credentials_source()
    if source is None:
        raise AccessDenied(
            f"no Kaggle credentials found (looked at KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, "
            f"{config_dir()}/kaggle.json): {TOKEN_HELP}"
        )
    from kaggle.api.kaggle_api_extended import KaggleApi
    from requests.exceptions import ConnectionError, HTTPError, Timeout

    api = KaggleApi()
    api.authenticate()
    dest_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading competition %s with credentials from %s", competition, source)
    try:
        api.competition_download_files(competition, path=str(dest_dir), quiet=True)
    except HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise AccessDenied(f"Kaggle rejected the credentials from {source} (401): {TOKEN_HELP}") from None
        if status == 403:
            raise AccessDenied(
                f"Kaggle refused the download of '{competition}' (403): accept the competition "
                f"rules at https://www.kaggle.com/c/{competition}/rules with this account, "
                "then run fetch again"
            ) from None
        raise
    except (ConnectionError, Timeout) as exc:  # no network, a proxy that is down: the cause, in one line
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise MissingInput(
            f"cannot reach Kaggle to download '{competition}' ({hide(reason)}); check the network or proxy, or "
            "download the zip yourself and give it as data.archive"
        ) from None
    if not archive.is_file():
        raise MissingInput(f"the kaggle client finished but {archive} is missing")
    return archive
