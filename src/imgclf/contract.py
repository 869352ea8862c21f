"""The serving contract: labels.txt and preprocessing.json beside a model, and the one normalise and softmax.

Training, evaluation, `imgclf predict`, the export checks and the MLflow pyfunc model all call `normalize` and
`softmax` from here, so a page, a CLI and a served model answer the same for the same pixels. This module imports
only numpy and the standard library: the MLflow model pickles it by value and runs without imgclf installed.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS_FILE = "labels.txt"
RESIZE_MODES = ("crop", "squash")  # see ServingSpec
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
TTA_VIEWS = ("hflip", "crops")
PREPROCESSING_FILE = "preprocessing.json"
RUN_FILE = "run.json"  # beside a model: the MLflow run that trained it (models/run.json names the last train's)
# a served model's input side: timm's largest (800 px) fits; the batch memory a request costs stays bounded
MAX_INPUT_SIZE = 1024
MAX_SPEC_BYTES = 16 << 20  # labels.txt, preprocessing.json: a million class names fit; a larger file is read no further
# class names a model may have: the largest head timm ships (vit_base_patch16_224.bamboo, 115,217 classes) fits, and
# ImageNet-21k's 21,843 six times; a count read from a file sizes the head rebuilt and each image's probabilities
MAX_CLASSES = 131_072
SHOWN = 200  # characters of a value an error repeats: a 15 MB list in preprocessing.json is not written out whole


class ContractError(ValueError):
    """labels.txt or preprocessing.json out of range: the message names the file, the key and what is valid."""


def scaled_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """255 x mean and 255 x std as float32 (1, C, 1, 1): uint8 pixels normalise in one subtract and one divide."""
    scale = np.float32(255.0)
    return (
        np.asarray(mean, np.float32).reshape(1, -1, 1, 1) * scale,
        np.asarray(std, np.float32).reshape(1, -1, 1, 1) * scale,
    )


def normalize(images, scaled_mean, scaled_std):
    """uint8 NCHW pixels -> (pixel - 255 mean) / (255 std) in float32; numpy arrays or torch tensors alike."""
    x = images.astype(np.float32) if isinstance(images, np.ndarray) else images.float()
    return (x - scaled_mean) / scaled_std


def softmax(logits):
    """Class probabilities from logits (..., C), over the last axis; numpy arrays or torch tensors alike."""
    if not isinstance(logits, np.ndarray):
        return logits.softmax(-1)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def parse_labels(text: str) -> list[str]:
    """Class names, one per line, in the order of the model's outputs."""
    return [line for line in text.splitlines() if line]


def format_labels(class_names: Sequence[str]) -> str:
    return "".join(f"{c}\n" for c in class_names)


@dataclass
class ServingSpec:
    """What a client must do to an image before the model sees it, and what the outputs mean.

    `resize: crop` (the weights' way): resize the shorter side to `resize_size`, keep the centre `resize_size`
    square (what the pack stores), then the centre `image_size` square (what the model sees). `resize: squash`:
    the whole image to `image_size` x `image_size` (fast.ai 2017). `tta`: the test-time views the model was
    trained for (imgclf.data.transforms.tta_views), used by `imgclf predict --tta`.
    """

    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    resize_size: int | None = None  # None: image_size (no margin to crop)
    resize: str = "squash"  # what models written before the crop existed did
    tta: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.resize_size = int(self.resize_size or self.image_size)

    def check(self, source: str) -> ServingSpec:
        """This spec held to what `checked` accepts from a file, so a model trained with it can be served: a
        config's mean of 5 or a resize of 1,100 px is refused before training, not by evaluate afterwards."""
        keys = ("image_size", "mean", "std", "interpolation", "resize_size", "resize", "tta")
        return self.checked(source, self.class_names, {k: getattr(self, k) for k in keys})

    @property
    def stored_size(self) -> int:
        """The square size images are decoded (and packed) at, before the centre crop."""
        return self.resize_size if self.resize == "crop" else self.image_size

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str = "the checkpoint") -> ServingSpec:
        return cls.checked(
            source,
            ckpt.get("class_names"),
            {k: ckpt.get(k) for k in ("image_size", "mean", "std", "interpolation", "resize_size", "resize", "tta")},
        )

    @classmethod
    def checked(cls, source: str, class_names, spec: dict) -> ServingSpec:
        """A spec from untrusted values (a file anyone may have written), each checked against its valid range."""

        def bad(key, valid):
            return ContractError(f"{source}: {key}={_shown(spec.get(key))} is not valid: {valid}")

        if isinstance(class_names, (list, tuple)) and len(class_names) > MAX_CLASSES:
            raise ContractError(f"{source}: {len(class_names):,} class names; a classifier has 2 to {MAX_CLASSES:,}")
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(c, str) and c for c in class_names):
            raise ContractError(f"{source}: the class names are not a list of names")
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ContractError(f"{source}: {len(class_names)} class names, {len(set(class_names))} distinct; "
                                "a classifier needs at least 2, each once")  # fmt: skip
        size, resize_size = spec.get("image_size"), spec.get("resize_size")
        if not _integer(size) or not 1 <= size <= MAX_INPUT_SIZE:
            raise bad("image_size", f"an integer from 1 to {MAX_INPUT_SIZE}")
        if resize_size is not None and (not _integer(resize_size) or not size <= resize_size <= MAX_INPUT_SIZE):
            raise bad("resize_size", f"null or an integer from image_size ({size}) to {MAX_INPUT_SIZE}")
        for key, low in (("mean", 0.0), ("std", 1e-6)):
            values = spec.get(key)
            if not isinstance(values, list) or len(values) != 3 or not all(_fraction(v, low) for v in values):
                raise bad(key, f"3 numbers from {low:g} to 1 (R, G, B, of pixel / 255)")
        interpolation, resize = spec.get("interpolation") or "bilinear", spec.get("resize") or "squash"
        if interpolation not in INTERPOLATIONS:
            raise bad("interpolation", "one of " + ", ".join(INTERPOLATIONS))
        if resize not in RESIZE_MODES:
            raise bad("resize", "one of " + ", ".join(RESIZE_MODES))
        tta = spec.get("tta") or []
        if not isinstance(tta, list) or not set(tta) <= set(TTA_VIEWS):
            raise bad("tta", "a list of: " + ", ".join(TTA_VIEWS))
        means, stds = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
        return cls(list(class_names), size, means, stds, interpolation, resize_size, resize, list(tta))

    def write(self, directory: str | Path, run_id: str | None = None, checkpoint_sha256: str | None = None) -> None:
        """labels.txt and preprocessing.json into `directory` (the export's temporary directory), and with `run_id`
        run.json: which run's model this is, whatever models/run.json says after a later train, and the sha256 of
        the checkpoint it was exported from (Grad-CAM reads that checkpoint, and only that one)."""
        directory = Path(directory)
        if run_id or checkpoint_sha256:
            record = {"run_id": run_id, **({"checkpoint_sha256": checkpoint_sha256} if checkpoint_sha256 else {})}
            (directory / RUN_FILE).write_text(json.dumps(record) + "\n")
        (directory / LABELS_FILE).write_text(format_labels(self.class_names))
        if self.resize == "crop":
            how = f"{self.interpolation}: the shorter side to {self.stored_size}, then the centre {self.image_size} px"
        else:
            how = f"{self.interpolation}: the whole image to {self.image_size} x {self.image_size}"
        spec = {
            "input": "images",
            "output": "logits",
            "layout": "NCHW",
            "color": "RGB",
            "image_size": self.image_size,
            "resize": self.resize,
            "resize_size": self.resize_size,
            "how": how,
            "interpolation": self.interpolation,
            "scale": "pixel / 255",
            "mean": self.mean,
            "std": self.std,
            "tta": self.tta,
        }
        (directory / PREPROCESSING_FILE).write_text(json.dumps(spec, indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | Path) -> ServingSpec:
        """The spec written by `write`, checked (ContractError names the file and the key); FileNotFoundError names
        a missing file."""
        directory = Path(directory)
        spec_file, labels_file = directory / PREPROCESSING_FILE, directory / LABELS_FILE
        for file in (spec_file, labels_file):
            if file.exists() and not file.is_file():  # a pipe would block the read, a device never end it
                raise ContractError(f"{file}: not a regular file; a model is served with the files export writes")
            if not file.is_file():
                raise FileNotFoundError(f"{file} not found: a model is served with its {LABELS_FILE} and "
                                        f"{PREPROCESSING_FILE} beside it, as export writes them")  # fmt: skip
        try:
            spec = json.loads(_read_spec_file(spec_file))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractError(f"{spec_file}: not valid JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(spec, dict):
            raise ContractError(f"{spec_file}: a JSON object of the preprocessing keys is expected")
        try:
            labels = parse_labels(_read_spec_file(labels_file))
        except UnicodeDecodeError:
            raise ContractError(f"{labels_file}: not UTF-8 text (one class name per line)") from None
        if len(labels) < 2:
            raise ContractError(f"{labels_file}: {len(labels)} class names; one per line, at least 2")
        return cls.checked(str(spec_file), labels, spec)

    def check_outputs(self, num_outputs: int, source: str) -> None:
        """The model's outputs and labels.txt must agree one to one."""
        if num_outputs != len(self.class_names):
            raise ContractError(
                f"{source}: the model has {num_outputs} outputs but labels.txt names {len(self.class_names)} "
                "classes; they must match one to one"
            )

    def normalize_images(self, images: np.ndarray) -> np.ndarray:
        """RGB uint8 images (N, S, S, 3) resized and cropped as `how` says -> the model's float32 NCHW input."""
        return normalize(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), *scaled_stats(self.mean, self.std))


def _shown(value) -> str:
    """`repr(value)` cut to SHOWN characters, by reprlib: a huge list or string is never written out whole first."""
    said = _REPR.repr(value)
    return said if len(said) <= SHOWN else said[:SHOWN] + "..."


_REPR = reprlib.Repr()  # past these, reprlib writes `...`: short values read as repr writes them
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 30, 30, 30
_REPR.maxstring = _REPR.maxother = SHOWN


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(value, low: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= 1


def run_of(directory: str | Path, key: str = "run_id") -> str | None:
    """The run whose model `directory` holds (its run.json), or None when it does not say; with `key`
    "checkpoint_sha256", the digest of the checkpoint that model was exported from."""
    try:
        value = json.loads((Path(directory) / RUN_FILE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def seal(directory: str | Path) -> None:
    """run.json (written first, by ServingSpec.write) records the sha256 of each file beside it: a file edited or
    replaced since (labels.txt reordered, preprocessing.json changed, another network's model.onnx copied over it) is
    refused when the model is loaded, not served with wrong labels (deploy/model_files.py checks the copies)."""
    directory = Path(directory)
    record = json.loads((directory / RUN_FILE).read_text())
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != RUN_FILE}
    (directory / RUN_FILE).write_text(json.dumps({**record, "files": files}) + "\n")


def export_behind(folder: str | Path, home: str | Path) -> str | None:
    """A line when the model in `folder` (models/export, models/optimised) was made from another checkpoint than
    `home`'s model.pt: another run's, by run.json's run ids (trained since, not exported again), or the same run's
    trained further since (a resumed run), by the sha256 export recorded; None when they agree or nothing says."""
    folder, home = Path(folder), Path(home)
    made, trained, exported = run_of(folder), run_of(home), run_of(folder, "checkpoint_sha256")
    if not made or not trained:
        return None
    if made != trained:
        return f"{folder} holds run {made}'s model, {home / 'model.pt'} run {trained}'s"
    try:
        checkpoint, since = (home / "model.pt").stat(), (folder / RUN_FILE).stat().st_mtime_ns
    except OSError:
        return None
    if not exported or max(checkpoint.st_mtime_ns, checkpoint.st_ctime_ns) <= since:  # hashed only when newer
        return None
    if _sha256(home / "model.pt") == exported:
        return None
    return f"{folder} was exported from run {made}'s model.pt before {home / 'model.pt'} was trained further"


def _sha256(path: Path) -> str:
    """A file's sha256 (here, not imgclf's file_digest: this module travels into MLflow models without imgclf)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_spec_file(file: Path) -> str:
    """A spec file's text, read no further than MAX_SPEC_BYTES: memory follows the limit, not the file."""
    with open(file, "rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise ContractError(f"{file}: more than {MAX_SPEC_BYTES >> 20} MB, no file export writes; it is not read")
    return data.decode("utf-8")
