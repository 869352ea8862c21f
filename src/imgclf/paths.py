"""Where every file lives: conf/config.yaml's `paths` section, which dvc.yaml interpolates too.

Data sets stay under the project root; models, reports and checkpoints go under the run's root, which is the
project root for `dvc repro` and a job's own directory in a Hydra sweep.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_DIR = "images"  # data/<dataset>/images/<class>/<file>: the layout every source ends in
# data.name is a folder (data/<name>/, whose images fetch replaces) and a file name (relabel/<name>.csv): one plain
# name, never a path ('..', '/abs', 'a/b') nor a hidden one
DATA_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# data/<dataset>/predict/: unlabelled images fetch brings (dogs_vs_cats' test1), empty for the others: a DVC output
PREDICT_DIR = "predict"
SPLIT_DIR = "split"  # data/<dataset>/split/{train,val,test}.csv, labels.txt, sample/
CACHE_DIR = "cache"  # data/<dataset>/cache/: packed, resized splits; derived data, safe to delete


def user_cache(*parts: str) -> Path:
    """~/.cache/imgclf/<parts> (XDG_CACHE_HOME respected): the user's, outside the repo and DVC's temporary
    experiment copies, shared by every project and run of this user."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "imgclf", *parts)


@dataclass(frozen=True)
class Paths:
    """The project's locations; the defaults are conf/config.yaml's (a test keeps them equal)."""

    data: Path = Path("data")
    models: Path = Path("models")
    reports: Path = Path("reports")
    checkpoints: Path = Path("checkpoints")
    relabel: Path = Path("relabel")

    @classmethod
    def from_config(cls, paths: Any, root: str | Path = ".") -> Paths:
        """From the config's `paths` (a mapping or imgclf.options.Folders); outputs under `root` (a sweep job's
        directory), data where it is."""
        get = paths.get if isinstance(paths, Mapping) else lambda key, default=None: getattr(paths, key, default)
        root = Path(root)
        outputs = (root / get("models"), root / get("reports"), root / get("checkpoints"))
        return cls(Path(get("data")), *outputs, Path(get("relabel", cls.relabel)))  # a run's config before relabel

    def dataset(self, name: str) -> Path:
        return self.data / name

    def images(self, name: str) -> Path:
        return self.dataset(name) / IMAGE_DIR

    def predict(self, name: str) -> Path:
        return self.dataset(name) / PREDICT_DIR

    def split(self, name: str) -> Path:
        return self.dataset(name) / SPLIT_DIR

    def labels(self, name: str) -> Path:
        return self.split(name) / "labels.txt"

    def relabel_file(self, name: str) -> Path:
        """relabel/<data set>.csv: labels fixed by hand or from a label review, applied by split (optional)."""
        return self.relabel / f"{name}.csv"

    def report_dir(self, stage: str) -> Path:
        return self.reports / stage

    @property
    def model_file(self) -> Path:
        """The best weights with class names and preprocessing: what evaluate, export and predict read."""
        return self.models / "model.pt"

    @property
    def run_file(self) -> Path:
        """The MLflow run of the last train stage; evaluate and export log into it."""
        return self.models / "run.json"

    @property
    def export_dir(self) -> Path:
        return self.models / "export"
