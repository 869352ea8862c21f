"""The serving contract: labels.txt and preprocessing.json beside a model, and the one normalise and softmax.

Training, evaluation, `imgclf predict`, the export checks and the MLflow pyfunc model all call `normalize` and
`softmax` from here, so a page, a CLI and a served model answer the same for the same pixels. This module imports
only numpy and the standard library: the MLflow model pickles it by value and runs without imgclf installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS_FILE = "labels.txt"
RESIZE_MODES = ("crop", "squash")  # see ServingSpec
PREPROCESSING_FILE = "preprocessing.json"


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

    @property
    def stored_size(self) -> int:
        """The square size images are decoded (and packed) at, before the centre crop."""
        return self.resize_size if self.resize == "crop" else self.image_size

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> ServingSpec:
        return cls(
            list(ckpt["class_names"]),
            int(ckpt["image_size"]),
            list(ckpt["mean"]),
            list(ckpt["std"]),
            ckpt.get("interpolation", "bilinear"),
            ckpt.get("resize_size"),
            ckpt.get("resize", "squash"),
            list(ckpt.get("tta", [])),
        )

    def write(self, directory: str | Path) -> None:
        """labels.txt and preprocessing.json into `directory` (the export's temporary directory)."""
        directory = Path(directory)
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
        """The spec written by `write`; FileNotFoundError names the missing file."""
        directory = Path(directory)
        spec = json.loads((directory / PREPROCESSING_FILE).read_text())
        labels = parse_labels((directory / LABELS_FILE).read_text())
        resize = spec.get("resize", "squash")
        return cls(
            labels,
            int(spec["image_size"]),
            list(spec["mean"]),
            list(spec["std"]),
            spec.get("interpolation", "bilinear"),
            spec.get("resize_size"),
            resize if resize in RESIZE_MODES else "squash",
            list(spec.get("tta", [])),
        )

    def normalize_images(self, images: np.ndarray) -> np.ndarray:
        """RGB uint8 images (N, S, S, 3) resized and cropped as `how` says -> the model's float32 NCHW input."""
        return normalize(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), *scaled_stats(self.mean, self.std))
