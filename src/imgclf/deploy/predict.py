"""Classify images with the exported model (DIGITS' Classify One / Classify Many)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from imgclf.contract import (
    LABELS_FILE,
    MAX_SPEC_BYTES,
    PREPROCESSING_FILE,
    ContractError,
    ServingSpec,
    normalize,
    scaled_stats,
    softmax,
)
from imgclf.data.images import UNREADABLE, ImageTooLarge, decode_image, why_unreadable
from imgclf.data.transforms import center_crop, tta_views
from imgclf.deploy.model_files import ModelFiles
from imgclf.deploy.runtimes import RUN_SECONDS, runtime_words
from imgclf.errors import USER_ERRORS, BadInput, MissingInput, Overrun, shown
from imgclf.files import NotARegularFile, open_regular, twin

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    probs: np.ndarray | None = None  # None when the file could not be classified
    error: str | None = None


def _open(path: Path) -> BinaryIO:
    return open_regular(path)


class PixelBudget:
    """Pixels a request may still decode (None: no limit); an image past it is refused from its header."""

    def __init__(self, pixels: int | None):
        self.left = pixels

    def __call__(self, width: int, height: int) -> None:
        if self.left is None:
            return
        if width * height > self.left:
            self.left = 0
            raise ImageTooLarge("over this request's limit of pixels in all its images; send fewer at a time")
        self.left -= width * height


class Classifier:
    """A deployed model (ONNX FP32/INT8/FP16, the .pt2 program, OpenVINO IR, a TensorRT engine) or a checkpoint,
    with its serving contract (labels.txt and preprocessing.json beside it).

    Every file it reads is read once, and the runtimes read private copies (deploy/model_files.py). `roots`: the
    page asked for the model: each file must lie under them, and no file's text is shown in an error. `scratch`:
    the folder the copies go in (a new folder inside it, removed once loaded; default: the temporary folder).
    `timeout`: the seconds each run of the model may take, None for no limit (deploy/runtimes.py).
    """

    def __init__(self, model_path: str | Path, *, roots: list[Path] | None = None, scratch: Path | None = None,
                 timeout: float | None = RUN_SECONDS):  # fmt: skip
        model_path = Path(model_path)
        self.timeout = timeout
        with tempfile.TemporaryDirectory(prefix="imgclf-model-", dir=scratch) as private:
            files = ModelFiles(model_path if model_path.is_dir() else model_path.parent, Path(private), roots)
            try:
                self._load(model_path, files)
            except ContractError as exc:  # contract.py stays free of imgclf's imports (MLflow pickles it by value)
                raise BadInput(files.named(str(exc))) from None
            except USER_ERRORS as exc:
                if private not in str(exc):
                    raise
                raise type(exc)(files.named(str(exc))) from None

    def _load(self, model_path: Path, files: ModelFiles) -> None:
        if model_path.suffix == ".pt":
            from imgclf.deploy.runtimes import torch_logits
            from imgclf.models.saved import load_checkpoint, model_from_checkpoint

            try:
                copied = files.copy(model_path)
            except FileNotFoundError:
                raise MissingInput(f"{model_path} not found; run the train stage first (dvc repro train)") from None
            ckpt = load_checkpoint(copied)
            self.source, self.checkpoint = model_path, model_path
            self.spec = ServingSpec.from_checkpoint(ckpt, str(model_path))
            self._run = torch_logits(model_from_checkpoint(ckpt))
        else:
            from imgclf.deploy.runtimes import load_runner

            model_file = _model_file(model_path, files)
            for name in (PREPROCESSING_FILE, LABELS_FILE):  # checked before the model file is even opened
                with contextlib.suppress(FileNotFoundError):  # ServingSpec.read names it
                    files.copy(model_file.parent / name, MAX_SPEC_BYTES + 1)  # past the cap: refused, not read
            self.spec = ServingSpec.read(files.private)
            copied = files.copy(model_file)
            if model_file.suffix == ".xml":  # OpenVINO reads the weights beside the IR
                with contextlib.suppress(FileNotFoundError):
                    files.copy(model_file.with_suffix(".bin"))
            self.source, self.checkpoint = model_file.parent, None
            self._run = load_runner(copied, self.timeout)
        self._check_contract(model_path)

    def _check_contract(self, source: Path) -> None:
        """Two blank images through the model: it takes the spec's input size and any batch, and its outputs match
        labels.txt."""
        size = self.spec.image_size
        try:
            logits = np.asarray(self._run(np.zeros((2, 3, size, size), np.float32)))
        except Overrun as exc:
            raise BadInput(f"{source}: refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - each runtime words a wrong input shape its own way
            detail = runtime_words(exc)[:200]
            raise BadInput(
                f"{source}: the model does not take a batch of 3 x {size} x {size} images, as preprocessing.json "
                f"describes ({detail})"
            ) from None
        if logits.ndim != 2 or logits.shape[0] != 2:
            raise BadInput(f"{source}: the model answers shape {logits.shape} to 2 images; a row of class scores "
                           "per image is expected")  # fmt: skip
        self.spec.check_outputs(logits.shape[1], str(source))

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    def classify(
        self,
        paths: Sequence[Path],
        batch_size: int = 32,
        tta: bool = False,
        *,
        opener: Callable[[Path], BinaryIO] | None = None,
        max_pixels: int | None = None,
    ) -> list[Prediction]:
        """Softmax probabilities per image, in input order; unreadable files get an error and the rest go on.

        `tta`: averaged over the test-time views the model was trained for (its spec's `tta`), as evaluate does.
        `opener`: how a path is opened (serve's: only under its roots, checked on the open file). `max_pixels`: the
        most pixels the images may have together, from their headers; the ones past it are not decoded.
        """
        if tta and not self.spec.tta:
            raise BadInput(
                "--tta: this model lists no test-time views (its augment.tta was empty); "
                "retrain with augment.tta=[hflip] or [crops], or predict without --tta"
            )
        results = [Prediction(str(p)) for p in paths]
        batch, slots, spend = [], [], PixelBudget(max_pixels)
        for i, path in enumerate(paths):
            try:
                with (opener or _open)(path) as f:
                    batch.append(decode_image(f, self.spec.stored_size, self.spec.interpolation, self.spec.resize,
                                              on_size=spend))  # fmt: skip
                slots.append(i)
            except FileNotFoundError:
                results[i].error = "no such file"
            except ValueError as exc:  # a NUL in the name: not a path the system can open
                results[i].error = why_unreadable(exc) if not str(exc).startswith("embedded null") else "no such file"
            except NotARegularFile:
                results[i].error = NOT_A_FILE
            except IsADirectoryError:
                results[i].error = "a folder, not an image"
            except UNREADABLE as exc:
                results[i].error = why_unreadable(exc)
            if len(batch) == batch_size or (i == len(paths) - 1 and batch):
                for slot, probs in zip(slots, self._probs(np.stack(batch).transpose(0, 3, 1, 2), tta)):
                    results[slot].probs = probs
                batch, slots = [], []
        return results

    def _probs(self, images: np.ndarray, tta: bool) -> np.ndarray:
        """uint8 NCHW images at the stored size -> probabilities: the centre view, or the mean over the views."""
        stats = scaled_stats(self.spec.mean, self.spec.std)
        if not tta:
            return softmax(
                self._run(np.ascontiguousarray(normalize(center_crop(images, self.spec.image_size), *stats)))
            )
        import torch

        views = tta_views(torch.from_numpy(images), self.spec.image_size, self.spec.tta)
        probs = [softmax(self._run(np.ascontiguousarray(normalize(v.numpy(), *stats)))) for v in views]
        return np.mean(probs, axis=0)


GATE_FILE = "gate.json"  # optimise's verdict, alone in its folder when the model was not promoted


def _model_file(model_path: Path, files: ModelFiles) -> Path:
    """The model file that `model_path` names: itself, or the one its folder holds, whichever format."""
    from imgclf.deploy.runtimes import LOADERS, MODEL_FILES

    if model_path.suffix in LOADERS:  # model.onnx (FP32, INT8, FP16), model.pt2, model.xml, a .plan
        found = model_path
    elif model_path.is_file():  # labels.txt, a model.PT: not a model this command can read
        kinds = ", ".join(sorted({*LOADERS, ".pt"}))
        raise BadInput(f"{model_path} is not a model: give its folder, or a file ending in {kinds}")
    else:
        found = next((model_path / f for f in MODEL_FILES if (model_path / f).is_file()), model_path / "model.onnx")
        if not found.is_file():
            _refuse_gate(model_path, files)  # optimise's gate kept the verdict, not the model
    if not found.is_file():
        raise MissingInput(
            f"no exported model at {found}; run the pipeline (dvc repro) or pass "
            "--model models/export, models/optimised or models/model.pt"
        )
    return found


def _refuse_gate(folder: Path, files: ModelFiles) -> None:
    """MissingInput saying why optimise kept no model in `folder`, when its gate.json is there."""
    try:
        verdict = _verdict(files.read(folder / GATE_FILE), files.roots is not None)
    except FileNotFoundError:
        return
    except BadInput:  # past the cap, a pipe, a folder
        verdict = None
    if verdict is None:
        verdict = f"{folder / GATE_FILE} is not optimise's verdict (rerun dvc repro optimise)"
    raise MissingInput(f"{folder} holds no model: {verdict}")


def _verdict(data: bytes, on_page: bool) -> str | None:
    """Why optimise kept no model, as gate.json says (None: not the JSON object optimise writes). Asked from the
    page, what the file says is not shown: it is a file on the server, not the page's to read."""
    try:
        reason = json.loads(data).get("reason", "not promoted")
    except (ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(reason, str):
        return None
    return f"optimise did not promote its model ({GATE_FILE} says why)" if on_page else shown(reason, limit=None)


def serving_request(spec: ServingSpec, paths: Sequence[Path]) -> dict:
    """The JSON body of a request to `mlflow models serve`'s /invocations for the exported pyfunc: each image
    decoded and resized as preprocessing.json says, centre-cropped to the model's size, as RGB uint8 HWC."""
    images = []
    for path in paths:
        try:
            with _open(path) as f:
                stored = decode_image(f, spec.stored_size, spec.interpolation, spec.resize)
        except FileNotFoundError:
            raise BadInput(f"{path}: no such file") from None
        except NotARegularFile:
            raise BadInput(f"{path}: {NOT_A_FILE}") from None
        except IsADirectoryError:
            raise BadInput(f"{path}: a folder, not an image") from None
        except UNREADABLE as exc:
            raise BadInput(f"{path}: {why_unreadable(exc)}") from None
        images.append(center_crop(stored.transpose(2, 0, 1)[None], spec.image_size)[0].transpose(1, 2, 0))
    return {"inputs": np.stack(images).tolist()}


def top_k(pred: Prediction, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-pred.probs)[: min(k, len(class_names))]
    return [(class_names[i], float(pred.probs[i])) for i in order]


def write_table(preds: Sequence[Prediction], class_names: Sequence[str], path: str | Path) -> None:
    """CSV (path, top-1, probability of every class, error) or JSON, by the file's suffix."""
    from imgclf.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            rows = [
                {"path": p.path, "error": p.error}
                if p.error
                else {
                    "path": p.path,
                    "top1": class_names[int(p.probs.argmax())],
                    "probs": {c: float(v) for c, v in zip(class_names, p.probs)},
                }
                for p in preds
            ]
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
            return
        import csv

        # a file name that is not UTF-8 is written as its own bytes (surrogateescape): the path names that file
        with tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "top1", *(f"p_{c}" for c in class_names), "error"])
            for p in preds:
                if p.error:
                    writer.writerow([p.path, "", *([""] * len(class_names)), p.error])
                else:
                    writer.writerow([p.path, class_names[int(p.probs.argmax())], *(f"{v:.6f}" for v in p.probs), ""])


def write_submission(
    preds: Sequence[Prediction], class_names: Sequence[str], positive: str, clip: float, path: str | Path
) -> int:
    """Kaggle's `id,label` with the positive class's probability clipped to [clip, 1-clip], rows in id order."""
    from imgclf.files import atomic_path

    if positive not in class_names:
        listed = shown(", ".join(class_names)) + ("" if len(class_names) <= 20 else f" ({len(class_names)} in all)")
        raise BadInput(f"--positive {shown(positive)!r} is not a class of this model; choose one of: {listed}")
    index = list(class_names).index(positive)
    rows, named = [], {}
    for p in preds:
        stem = Path(p.path).stem
        if p.error or not (stem.isascii() and stem.isdigit()):  # '²' passes isdigit, and int() refuses it
            why = p.error or "file name is not a numeric Kaggle id (digits 0-9)"
            raise BadInput(f"{shown(p.path)}: {why}; no submission written")
        if (i := int(stem)) in named:  # 1.png, 01.png, 1.jpg: Kaggle scores one row per id
            raise BadInput(f"{shown(named[i])} and {shown(p.path)} are both id {i}: a submission has one row per id; "
                           "no submission written")  # fmt: skip
        named[i] = p.path
        rows.append((i, float(np.clip(p.probs[index], clip, 1 - clip))))
    rows.sort()
    with atomic_path(path) as tmp:
        tmp.write_text("id,label\n" + "".join(f"{i},{v:.6f}\n" for i, v in rows))
    return len(rows)


NOT_A_FILE = "not a regular file (a pipe or a device)"


def check_outputs(outputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse, before the first is written, output files that clash (one path twice, a file where a folder of
    another goes) or that this system cannot name (a part, or its temporary twin, past the file-name limit)."""
    files: dict[Path, str] = {}
    folders: dict[Path, str] = {}
    for flag, path in outputs:
        full = Path(path).resolve()
        _check_name(full, flag)
        clash = files.get(full) or folders.get(full) or next((files[p] for p in full.parents if p in files), None)
        if clash:
            raise BadInput(f"{flag} {shown(path)} clashes with {clash}: each output needs its own name, and not one "
                           "inside another's; nothing was written")  # fmt: skip
        files[full] = f"{flag} {shown(path)}"
        folders.update(dict.fromkeys(full.parents, files[full]))


def _check_name(path: Path, flag: str) -> None:
    """A path every part of which the file system takes: an over-long name fails only at its write, after others."""
    existing = next(p for p in path.parents if p.is_dir())
    limit = os.pathconf(existing, "PC_NAME_MAX")
    for part in (*path.parts[1:-1], twin(path).name):  # atomic_path writes the twin first
        if len(os.fsencode(part)) > limit:
            raise BadInput(f"{flag} {shown(path)}: a file name here has at most {limit} bytes (with the temporary "
                           "name's few more); give a shorter one. Nothing was written")  # fmt: skip
