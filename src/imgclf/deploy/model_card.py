"""The model `imgclf serve` shows: loaded from a folder or file (under the roots when the page asks), a run id or
the registry, and its card (the run, its metrics and pictures)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.contract import RUN_FILE
from imgclf.credentials import hide
from imgclf.deploy.access import inside, under
from imgclf.deploy.model_files import read_small
from imgclf.deploy.predict import Classifier
from imgclf.deploy.runtimes import RUN_SECONDS
from imgclf.errors import BadInput, MissingInput

log = logging.getLogger(__name__)

ARTIFACTS = {  # the model card's pictures: name -> the run's artifact
    "curves": "train/curves.png",
    "confusion": "evaluate/confusion_matrix.png",
    "class_counts": "data/class_counts.png",
    "samples": "data/samples.png",
}


RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids


@dataclass
class Model:
    """The model being served: its classifier, and what the card says about it."""

    ref: str
    classifier: Classifier
    run_id: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)


def load_model(ref: str, uri: str, cache: Path, roots: list[Path] | None = None, *,
               timeout: float | None = RUN_SECONDS) -> Model:  # fmt: skip
    """An export or optimised dir, a model file (.onnx, .pt2, .xml, .plan, .pt), a run id (its export) or
    `models:/name/version`. With `roots` (a switch asked for from the page), a path must lie under one of them, and
    so must every file its load reads, checked on the open file. `timeout`: seconds each run of the model may take."""
    from imgclf import tracking

    run_id, reading = None, roots
    if ref.startswith("models:/"):
        local, run_id = tracking.download_model(uri, ref, cache / "registered")
        found = sorted(local.rglob("model.onnx"))
        if not found:
            raise MissingInput(f"{ref} holds no model.onnx; register a model from `imgclf export`")
        path, reading = found[0].parent, _downloaded(cache, roots)
    elif RUN_ID.fullmatch(ref) and (roots is not None or not Path(ref).exists()):
        run_id = ref
        export = tracking.run_record(uri, ref)["tags"].get("imgclf.export_dir")
        path = _local_export(export, roots)
        if path is not None and _run_in(path, roots) != run_id:  # the folder holds another run's model now
            path = None
        if path is None:  # not on this disk, not where the page may read, or replaced: the run's logged copy
            path, reading = tracking.artifact_file(uri, ref, "export", cache / ref), _downloaded(cache, roots)
        if path is None:
            raise MissingInput(f"run {ref} has no export; run `imgclf export` (dvc repro) for it first")
    else:
        path = inside(ref, roots) if roots is not None else Path(ref).expanduser()
        if not path.exists():
            raise MissingInput(f"no model at {ref}; give an export folder, a model file, a run id or models:/NAME/N")
        if roots is not None:
            _check_model_files(path, roots)
        run_id = _run_id_beside(path, roots)
    cache.mkdir(parents=True, exist_ok=True)  # the load's private copies go in a folder of their own there
    model = Model(ref, Classifier(path, roots=reading, scratch=cache, timeout=timeout), run_id)
    model.card = model_card(model, uri, cache)
    if not ref.startswith("models:/") and (note := older_than_training(path)):  # on the card, and in the log
        model.card["note"] = note
        log.warning("%s", note)
    return model


def _downloaded(cache: Path, roots: list[Path] | None) -> list[Path] | None:
    """Where a model downloaded into the server's own folder is read from, when the page asked for it."""
    return None if roots is None else [cache.resolve()]


def _local_export(export: str | None, roots: list[Path] | None) -> Path | None:
    if not export or not Path(export).is_dir():
        return None
    if roots is None:
        return Path(export)
    try:
        return inside(export, roots)
    except (PermissionError, FileNotFoundError):
        return None


# what loading a model folder reads: each must lie under the roots too, links followed
MODEL_MEMBERS = ("model.onnx", "model.pt2", "model.xml", "model.bin", "model.plan", "model.engine", "model.pt",
                 "labels.txt", "preprocessing.json", "gate.json", RUN_FILE)  # fmt: skip


def _check_model_files(path: Path, roots: list[Path]) -> None:
    """Every file the model's loader reads lies under the roots, links followed: the folder's model files, and the
    weights beside an OpenVINO IR given by its own name (OpenVINO reads foo.bin beside foo.xml). The load then
    checks each again on the file it opens (deploy/model_files.py): this first look answers the same for a link
    out to a file and one out to nothing."""
    folder = path if path.is_dir() else path.parent
    members = [folder / name for name in MODEL_MEMBERS]
    if path.suffix == ".xml":
        members.append(path.with_suffix(".bin"))
    for member in members:
        if member.is_symlink() or member.exists():
            inside(member, roots)


def _run_id_beside(path: Path, roots: list[Path] | None = None) -> str | None:
    """The training run of a model file or folder: models/run.json, beside model.pt or above export/ and
    optimised/ (and their model files); with `roots`, only a run.json under them."""
    folder = path if path.is_dir() else path.parent
    for home in (folder, folder.parent):
        record = home / RUN_FILE
        if (roots is None or under(record.resolve(), roots)) and record.is_file():
            return _run_in(home, roots)
    return None


def _run_in(folder: Path, roots: list[Path] | None) -> str | None:
    """The run id `folder`'s run.json names, read from its open file (a regular file, under the roots with roots,
    at most MAX_SMALL_BYTES); None when it names none or may not be read."""
    import json

    try:
        run_id = json.loads(read_small(folder / RUN_FILE, roots)).get("run_id")
    except (OSError, ValueError, AttributeError, RecursionError):  # missing, outside, a pipe, too long, not JSON
        return None
    return run_id if isinstance(run_id, str) else None


def model_home(path: Path) -> Path:
    """models/ for models/export, models/export/model.onnx or models/model.pt (the folder of run.json); else the
    model's own folder."""
    folder = path if path.is_dir() else path.parent
    return folder.parent if (folder.parent / "run.json").is_file() else folder


def older_than_training(path: Path) -> str | None:
    """A line when the model at `path` (models/export, models/optimised, a file in one) was made from another
    checkpoint than the models/model.pt beside it (contract.export_behind): trained since and not exported again
    (`dvc repro train` alone), so what is served is not what was just trained and evaluated."""
    from imgclf.contract import export_behind

    folder, home = (path if path.is_dir() else path.parent), model_home(path)
    behind = export_behind(folder, home) if home != folder else None
    return f"{behind}: dvc repro brings it up to date" if behind else None


def model_card(model: Model, uri: str, cache: Path) -> dict[str, Any]:
    """Run id and link, data set, classes, test metrics; the run's pictures downloaded into `cache`."""
    from imgclf import tracking

    card: dict[str, Any] = {"model": model.ref, "classes": model.classifier.class_names, "run_id": model.run_id}
    spec = model.classifier.spec
    card["input"] = f"{spec.image_size} px ({spec.resize}, {spec.interpolation})"
    if model.run_id is None:
        return card
    try:
        record = tracking.run_record(uri, model.run_id)
        card["link"] = tracking.run_link(uri, model.run_id)
    except (BadInput, MissingInput) as exc:
        card["tracking"] = f"the run is not in {hide(uri)}: {exc}"
        return card
    card["run_name"] = record["name"]
    card["dataset"] = record["tags"].get("imgclf.dataset", "")
    card["metrics"] = {k: record["metrics"][k] for k in ("test/acc", "test/macro_f1") if k in record["metrics"]}
    for name, artifact in ARTIFACTS.items():
        local = tracking.artifact_file(uri, model.run_id, artifact, cache / model.run_id)
        if local is not None:
            model.pictures[name] = local
    card["pictures"] = sorted(model.pictures)
    return card
