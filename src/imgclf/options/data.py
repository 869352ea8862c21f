"""The options of where a stage reads and writes (paths) and of the data set (data, data.split)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import BadInput
from imgclf.options.rules import (
    ANY,
    BALANCE,
    OPTIONAL_TEXT,
    PLAIN_NAME,
    SEED,
    TEXT,
    Group,
    integer,
    number,
    one_of,
    rule,
    typed,
)
from imgclf.targets import unmakeable_folder

WRITABLE = "give a folder you can write, or one that can be made"


@dataclass(frozen=True, kw_only=True)
class Folders(Group):
    data: str = rule(TEXT)
    models: str = rule(TEXT)
    reports: str = rule(TEXT)
    checkpoints: str = rule(TEXT)
    relabel: str = rule(TEXT, "relabel")

    def check(self, where: str) -> None:
        for f in dataclasses.fields(self):
            if why := unmakeable_folder(getattr(self, f.name)):
                raise BadInput(f"{where}.{f.name}={getattr(self, f.name)!r} {why}; {WRITABLE}")


@dataclass(frozen=True, kw_only=True)
class Split(Group):
    val_fraction: float = rule(number(0, 1))
    test_fraction: float = rule(number(0, 1))
    seed: int = rule(SEED)
    sample_per_class: int = rule(integer(1))
    min_class_images: int = rule(integer(0), 20)

    def check(self, where: str) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise BadInput(
                f"{where}.val_fraction + {where}.test_fraction = {self.val_fraction + self.test_fraction:g}: "
                "must be < 1 (something is left to train on)"
            )


FOLDERS = ("path", "val_path", "test_path")  # a folder source's folders of class sub-folders, when given


@dataclass(frozen=True, kw_only=True)
class Data(Group):
    EXTRA_KEYS = True  # a source's own settings (mirrors, checksums, archive): its fetch node interpolates them

    name: str = rule(PLAIN_NAME)
    fetch: Mapping[str, Any] = rule(((lambda v: isinstance(v, Mapping) and "_target_" in v), "a node with _target_"))
    split: Split
    subset: str = rule(one_of("full", "sample"), "full")
    balance: str = rule(one_of(*BALANCE), "none")
    inputs: tuple[str, ...] = rule(ANY, ())
    path: str | None = rule(OPTIONAL_TEXT, None)
    val_path: str | None = rule(OPTIONAL_TEXT, None)
    test_path: str | None = rule(OPTIONAL_TEXT, None)
    exclude: tuple[str, ...] = rule(
        (
            (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
            "a list of class folder names, quoted where a name is a number: data.exclude=['1']",
        ),
        (),
    )
    extra: Mapping[str, Any] = field(default_factory=dict)

    def check(self, where: str) -> None:
        if self.split.val_fraction == 0 and self.val_path is None:  # the only fixed val split is a folder's
            raise BadInput(
                f"{where}.split.val_fraction=0 leaves no validation images: give a fraction > 0 and < 1, or a folder "
                f"of them ({where}.val_path)"
            )
        _check_downloads(self.extra, where)
        if self.path is None and str(self.fetch.get("_target_", "")).endswith(".fetch_folder"):
            raise BadInput(f"{where}={self.name} needs {where}.path=/path/to/folder (one sub-folder per class)")
        for key in FOLDERS:
            path = getattr(self, key)
            if path is not None and not Path(os.path.expanduser(path)).is_dir():
                what = "is a file" if Path(os.path.expanduser(path)).exists() else "does not exist"
                shown = path if path.isprintable() else repr(path)
                raise BadInput(f"{where}.{key}={shown} {what}: give a folder with one sub-folder per class")


def _check_downloads(extra: Mapping[str, Any], where: str) -> None:
    """A source's mirrors are a list of URLs; its checksums a mapping of file name to digest (or null: none), or
    null, no checksums at all, each file then downloaded again at every fetch as one whose digest is null is."""
    mirrors = extra.get("mirrors", [])
    if not isinstance(mirrors, (list, tuple)) or not all(map(_is_url, mirrors)):
        raise BadInput(f"{where}.mirrors={typed(mirrors)} is not valid: a list of URLs (https://host/path)")
    checksums = extra.get("checksums")
    if checksums is not None and not (
        isinstance(checksums, Mapping) and all(isinstance(v, (str, type(None))) for v in checksums.values())
    ):
        raise BadInput(
            f"{where}.checksums={typed(checksums)} is not valid: a mapping of file name to md5 or sha256 digest "
            "(a digest, or the whole mapping, null: downloaded again at every fetch, unverified)"
        )


def _is_url(value: Any) -> bool:
    """A URL a download can start from: http(s) or ftp with a host, or file."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value.isprintable() or " " in value:
        return False
    url = urlsplit(value)
    return url.scheme == "file" or (url.scheme in ("http", "https", "ftp") and bool(url.hostname))
