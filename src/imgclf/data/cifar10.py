"""CIFAR-10 from cifar-10-python.tar.gz (the pickled batches), written as PNGs; test_batch is the official test."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data import TEST_LIST
from imgclf.data.download import download, extract, verify
from imgclf.data.folder import plain_name
from imgclf.errors import BadInput, MissingInput
from imgclf.files import scratch_dir

log = logging.getLogger(__name__)

ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
NUM_CLASSES = 10


# all a CIFAR batch holds: a dict of bytes/str, lists and one numpy array (and codecs for Python 3 re-pickles)
PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Only the classes a CIFAR batch is made of: a batch that names anything else (os.system, say) is refused
    before it can run."""

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(path: Path, *keys: str) -> dict:
    """A batch as {str: value}: the official Python 2 pickles have bytes keys, mirrors re-pickled under Python 3
    have str keys (torchvision reads both); anything else is one line naming the file."""
    if not path.is_file():
        raise MissingInput(f"{path.name} missing from {path.parent}; the archive is incomplete")
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # truncated, not a pickle, or a class we do not have: the file is the problem
        raise BadInput(f"{path.name}: not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise BadInput(f"{path.name}: holds a {type(obj).__name__}, expected a dict of {', '.join(keys)}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in keys if k not in batch]
    if missing:
        raise BadInput(f"{path.name}: no {', '.join(missing)} entry; it has {', '.join(map(str, batch)) or 'none'}")
    return batch


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels (N,) of one batch; rows are 1,024 R, then G, then B bytes."""
    batch = _unpickle(path, "data", "labels")
    data, labels = _checked_data(path.name, batch["data"]), _checked_labels(path.name, batch["labels"])
    if len(labels) != len(data):
        raise BadInput(f"{path.name}: {len(data)} rows of data but {len(labels)} labels; each row needs one label")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _checked_data(name: str, data: object) -> np.ndarray:
    """A batch's `data` as CIFAR-10 has it: a uint8 array of N rows of 3,072 bytes. Nothing is converted: a float or
    int64 array cast to bytes would wrap (300 becomes 44) or truncate, silently."""
    if not isinstance(data, np.ndarray):
        raise BadInput(f"{name}: data is a {type(data).__name__}; expected a uint8 array of N x 3072 (R, G, B bytes)")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise BadInput(
            f"{name}: data is an array of {data.dtype} with shape {data.shape}; expected uint8 with shape (N, 3072)"
        )
    return data


def _checked_labels(name: str, labels: object) -> np.ndarray:
    """A batch's `labels` as CIFAR-10 has them: integers in 0..9, one a row (a list, or an integer array)."""
    valid = f"expected a list of integers in 0..{NUM_CLASSES - 1}, one a row of data"
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise BadInput(f"{name}: labels is a {type(labels).__name__}; {valid}")
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError):  # lists of uneven lengths
        raise BadInput(f"{name}: labels hold nested lists; {valid}") from None
    if array.ndim != 1:
        raise BadInput(f"{name}: labels have shape {array.shape}; {valid}")
    if array.size and array.dtype.kind not in "iu":  # floats (1.5 would become 1), bools, strings, huge ints
        raise BadInput(f"{name}: labels hold {array.dtype} values; {valid}")
    if array.size and (array.min() < 0 or array.max() >= NUM_CLASSES):
        bad = array.min() if array.min() < 0 else array.max()
        raise BadInput(f"{name}: label {bad} is outside 0..{NUM_CLASSES - 1}; {valid}")
    return array.astype(np.int64)


def read_label_names(batch_dir: Path) -> list[str]:
    """The class names of batches.meta, each one plain folder name (they become folders under the output): a name
    with a `/`, a `..`, a leading `.` or a control character is refused before anything is written."""
    names = _unpickle(batch_dir / "batches.meta", "label_names")["label_names"]
    if not isinstance(names, (list, tuple)):
        raise BadInput(f"batches.meta: label_names is a {type(names).__name__}, expected a list of class names")
    names = [name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name) for name in names]
    for name in names:
        if not plain_name(name):
            raise BadInput(
                f"batches.meta: class name {name!r} is not a plain folder name; each must be one folder name: "
                "not empty, not starting with '.', without '/', '\\', control characters or line separators"
            )
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise BadInput(f"batches.meta: class name {twice!r} is given twice; each class needs a name of its own")
    return names


def fetch_cifar10(
    out_dir: str | Path,
    mirrors: Sequence[str],
    checksums: Mapping[str, str | None] | None,
    download_dir: str | Path,
    archive: str | None = None,
) -> int:
    """Download (or take `archive`), verify, extract safely, write PNGs per class; returns the image count. The
    archive is unpacked into a new scratch folder in download_dir, removed afterwards: nothing of an earlier
    archive is read."""
    checksums = checksums or {}  # data.checksums=null: none, as for a file whose checksum is null
    out_dir, download_dir = Path(out_dir), Path(download_dir)
    if archive:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise MissingInput(f"data.archive={archive} does not exist")
        verify(path, checksums.get(ARCHIVE))
    else:
        path = download(ARCHIVE, mirrors, download_dir, checksums.get(ARCHIVE))
    with scratch_dir(download_dir / "extracted") as work:
        return write_images(extract(path, work) / BATCH_DIR, out_dir)


def write_images(batch_dir: Path, out_dir: Path) -> int:
    """Every batch of batch_dir as out_dir/<class>/<batch>_<i>.png, test_batch's listed in test.txt."""
    names = read_label_names(batch_dir)
    total, test_paths = 0, []
    for batch_name in (*TRAIN_BATCHES, TEST_BATCH):
        images, labels = read_batch(batch_dir / batch_name)
        if labels.size and labels.max() >= len(names):
            raise BadInput(f"{batch_name}: label {labels.max()} but batches.meta names {len(names)} classes")
        for i, (image, label) in enumerate(zip(images, labels)):
            rel = f"{names[label]}/{batch_name}_{i:05d}.png"
            (out_dir / names[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out_dir / rel)
            if batch_name == TEST_BATCH:
                test_paths.append(rel)
        total += len(labels)
    (out_dir / TEST_LIST).write_text("".join(f"{p}\n" for p in test_paths))
    log.info("CIFAR-10: %d images, %d classes, %d in the official test set", total, len(names), len(test_paths))
    return total
