"""OmegaConf.load memoised by the text it reads, in the test processes only: Hydra loads every file of conf/ (and its
own) anew for each composition, and the suite composes thousands of times in its own processes (each stage's main
three times: the override check, Hydra's mode, the run). A text seen before is answered with a deep copy of what
loading it gave, far cheaper than parsing it again; a text not seen before, or one that fails to load, goes to
OmegaConf itself, so every error the tests provoke is OmegaConf's own. The stage processes the tests start (warm or
not) never import this."""

from __future__ import annotations

import copy
import os

from omegaconf import OmegaConf

_LOAD = OmegaConf.load
_LOADED: dict[str, object] = {}  # never handed out: callers change what they get (Hydra pops `defaults`)


def _load(file_):
    if isinstance(file_, (str, os.PathLike)) or not getattr(file_, "seekable", lambda: False)():
        return _LOAD(file_)  # a path, or a stream read once: as OmegaConf reads it
    text = file_.read()
    file_.seek(0)
    if not isinstance(text, str):  # bytes: a file of a zipped package
        return _LOAD(file_)
    if text not in _LOADED:
        _LOADED[text] = _LOAD(file_)
    return copy.deepcopy(_LOADED[text])


def install() -> None:
    OmegaConf.load = staticmethod(_load)
