"""Packed datasets: each split is decoded and resized once into a memory-mapped .npy, then served as uint8
tensor batches."""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import PIL
import torch
from torch.utils.data import DataLoader, Dataset

from imgclf.data.images import ImageTooLarge, decode_image
from imgclf.data.parallel import parallel_map
from imgclf.data.split import read_index, read_labels, read_manifest
from imgclf.errors import BadInput
from imgclf.files import atomic_path, remove_orphans_in
from imgclf.paths import CACHE_DIR, IMAGE_DIR, SPLIT_DIR

log = logging.getLogger(__name__)

RELEASE_BYTES = 256 << 20  # a pack's pages this process has read are let go after this many bytes: RSS stays flat


class TensorImageDataset(Dataset):
    """uint8 images (N, 3, H, W), in memory or memory-mapped from a pack, and int64 labels; serves whole batches
    with one indexing op, centre-cropped to `crop` px when given (evaluation) or whole (training augments them)."""

    def __init__(self, images, labels: torch.Tensor, paths: list[str] | None = None, crop: int | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.paths, self.crop = images, labels, paths or [], crop
        self._read = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.batch([i])[0], self.labels[i]

    def __getitems__(self, indices: list[int]):
        return self.batch(indices), self.labels[torch.as_tensor(indices)]

    def batch(self, indices) -> torch.Tensor:
        """The images at `indices` as a uint8 tensor, copied out of the pack (centre-cropped when `crop`)."""
        from imgclf.data.transforms import center_crop

        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, torch.Tensor):
            out = self.images[torch.from_numpy(idx)]
        else:
            order = np.argsort(idx, kind="stable")  # read the file forwards
            out = np.empty((len(idx), *self.images.shape[1:]), self.images.dtype)
            out[order] = self.images[idx[order]]
            out = torch.from_numpy(out)
            self._release(out.nbytes)
        return center_crop(out, self.crop).contiguous() if self.crop else out

    def _release(self, nbytes: int) -> None:
        # pages of a memory-mapped file stay mapped (and counted in RSS) once read; let them go now and then
        self._read += nbytes
        mm = getattr(self.images, "_mmap", None)
        if mm is not None and self._read >= RELEASE_BYTES and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_DONTNEED)
            self._read = 0

    def with_crop(self, crop: int | None) -> TensorImageDataset:
        """The same images served at another crop (the evaluation view of a training pack, or the whole image)."""
        return TensorImageDataset(self.images, self.labels, self.paths, crop)


class PackImages:
    """A dataset's images as the model saw them, indexed lazily (`images[idx]` -> uint8 numpy (k, 3, H, W)):
    what the error analysis draws, without reading the whole pack."""

    def __init__(self, dataset: TensorImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx) -> np.ndarray:
        return self.dataset.batch(np.atleast_1d(idx)).numpy()


def _batch_collate(batch):
    # __getitems__ already returns a stacked (images, labels) batch
    return batch


def decode_checked(path: Path, sha256: str | None, size: int, interpolation: str = "bilinear", resize: str = "crop"):
    """decode_image(), refusing a file whose bytes are not the ones the split's manifest recorded."""
    content = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
        raise _changed(path)
    try:
        return decode_image(io.BytesIO(content), size, interpolation, resize)
    except ImageTooLarge as exc:  # too long and thin for this image size: split, which knows no size, took it
        raise ImageTooLarge(f"{path}: {exc}; leave it out: imgclf relabel PATH=exclude, then dvc repro") from None


def _changed(path: Path) -> BadInput:
    return BadInput(
        f"{path} changed since the split stage ran (its sha256 differs from manifest.csv); "
        "rerun split (dvc repro) so the data version follows the images"
    )


def _check_unchanged(images: Path, rows: list[tuple[str, str]], digests: Mapping[str, str], since: int) -> None:
    """An image edited after its pack was made (a stage run by hand; DVC would rerun split first) was served from
    the pack as it had been: each image modified later than the pack is read again and checked against the
    manifest, as decode_checked checks what a new pack decodes. Later by its change time too: a file moved or
    copied into place keeping an older modification time (mv, cp -p, rsync -a) is changed all the same."""
    for rel, _ in rows:
        path = images / rel
        try:
            st = path.stat()
            later = max(st.st_mtime_ns, st.st_ctime_ns) > since
        except OSError:
            raise BadInput(f"{path} is gone since the split stage ran; rerun split (dvc repro)") from None
        if later and hashlib.sha256(path.read_bytes()).hexdigest() != digests[rel]:
            raise _changed(path)


def _decode_item(item: tuple[Path, str | None], size: int, interpolation: str, resize: str) -> np.ndarray:
    return decode_checked(item[0], item[1], size, interpolation, resize).transpose(2, 0, 1)


def write_pack(
    out: Path, paths: list[Path], size: int, interpolation: str, resize: str, digests: Sequence[str] | None = None
) -> None:
    """Decode every image into the (N, 3, size, size) uint8 .npy at `out`, written through a memory map (a pack
    larger than memory is fine) under a temporary name, renamed when complete; decoded in parallel for big sets,
    each file checked against the manifest's digest when given."""
    decode = partial(_decode_item, size=size, interpolation=interpolation, resize=resize)
    items = list(zip(paths, digests if digests is not None else [None] * len(paths)))
    with atomic_path(out) as tmp:  # a half-written pack never looks complete
        pack = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
        with tmp.open("r+b") as f:  # the blocks now: a full disk is an error here, not a SIGBUS in a mapped write
            os.posix_fallocate(f.fileno(), 0, tmp.stat().st_size)
        for i, array in enumerate(parallel_map(decode, items)):
            pack[i] = array
        pack.flush()
        del pack


def decoder() -> str:
    """How images become pixels (turned by their EXIF orientation, 16-bit scaled to 8, RGB; the shorter side resized
    and the centre cropped to a square, or the whole image squashed to one): Pillow's version and the source of the
    code that decodes, so that an edit to it makes new packs as a new Pillow does (a version tag bumped by hand was
    forgotten, and the stages DVC reran read pixels the old code made)."""
    import inspect

    from imgclf.data import images

    code = inspect.getsource(images) + "".join(map(inspect.getsource, (decode_checked, _decode_item, write_pack)))
    return f"pillow-{PIL.__version__}-{hashlib.sha256(code.encode()).hexdigest()[:16]}"


def pack_key(rows: list[tuple[str, str]], digests: Mapping[str, str], size: int, interpolation: str, resize: str):
    """The pack's cache key: every image's content digest in index order, the size, the resampling, the resize mode
    and the decoder, so an image edited in place (same name, new pixels), a new Pillow or new decoding code makes a
    new pack."""
    h = hashlib.sha256(f"{decoder()}|{size}|{interpolation}|{resize}\n".encode())
    for rel, _ in rows:
        if rel not in digests:
            raise BadInput(f"{rel} is indexed but missing from the split's manifest.csv; rerun split (dvc repro split)")
        h.update(f"{rel},{digests[rel]}\n".encode())
    return h.hexdigest()[:16]


def packed_split(
    root: Path,
    rows: list[tuple[str, str]],
    digests: Mapping[str, str],
    size: int,
    tag: str,
    *,
    interpolation: str = "bilinear",
    resize: str = "crop",
) -> np.ndarray:
    """The split's images decoded once at `size` and packed in data/<ds>/cache/, keyed by their content
    (pack_key); returned memory-mapped, read-only: only the batches in use are in memory."""
    key = pack_key(rows, digests, size, interpolation, resize)
    cache = root / CACHE_DIR / f"{tag}-{size}px-{key}.npy"
    remove_orphans_in(cache.parent)  # half-written packs of killed writers: keyed by content, never read again
    pack = _open_pack(cache, (len(rows), 3, size, size)) if cache.is_file() else None
    if pack is not None:
        _check_unchanged(root / IMAGE_DIR, rows, digests, cache.stat().st_mtime_ns)
    else:
        expected = [digests[rel] for rel, _ in rows]
        write_pack(cache, [root / IMAGE_DIR / rel for rel, _ in rows], size, interpolation, resize, expected)
        pack = np.load(cache, mmap_mode="r")
    return pack


def _open_pack(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The pack memory-mapped, or None (and a warning) when it is damaged: truncated, or of another shape."""
    try:
        pack = np.load(path, mmap_mode="r")
        if pack.shape == shape and pack.dtype == np.uint8:
            return pack
        problem = f"holds {pack.shape} {pack.dtype}, expected {shape} uint8"
    except (ValueError, OSError) as exc:  # numpy: "mmap length is greater than file size", a bad header
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.warning("pack %s is damaged (%s); decoding the images again", path, problem)
    return None


def load_split(
    root: str | Path,
    split: str,
    subset: str,
    spec,
    crop: bool = True,
) -> TensorImageDataset:
    """One split (`train|val|test`) of the data set in `root`, full or its `sample` subset, as the serving spec
    says (imgclf.contract.ServingSpec): packed at its stored size, served centre-cropped to the model's input
    (`crop`) or whole (training batches, which the augmentation crops)."""
    root = Path(root)
    split_dir = root / SPLIT_DIR / ("sample" if subset == "sample" else "")
    index_file = split_dir / f"{split}.csv"
    rows = read_index(index_file)
    class_names = read_labels(root / SPLIT_DIR / "labels.txt")
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({label for _, label in rows} - class_to_idx.keys())
    if unknown:
        raise BadInput(f"{index_file} has labels {unknown} missing from labels.txt")
    manifest = read_manifest(root / SPLIT_DIR)
    tag = f"{subset}-{split}"
    images = packed_split(
        root, rows, manifest, spec.stored_size, tag, interpolation=spec.interpolation, resize=spec.resize
    )
    labels = torch.tensor([class_to_idx[label] for _, label in rows], dtype=torch.int64)
    view = spec.image_size if crop and spec.stored_size != spec.image_size else None
    return TensorImageDataset(images, labels, [r for r, _ in rows], view)


def build_loader(
    dataset: TensorImageDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    balanced: bool = False,
) -> DataLoader:
    """Whole batches fetched from memory (no per-sample collate); under torchrun, this rank's share of each batch.

    Training batches come from one seeded permutation split across ranks, so N processes see the global batches
    one process would (`balanced`: from seeded draws that give every class the same share); evaluation batches
    cover each sample exactly once over all ranks.
    """
    from imgclf.data.sampling import ShardedBatchSampler, rank, sample_weights, shard_for_eval, world_size

    if shuffle:
        weights = sample_weights(dataset.labels) if balanced else None
        sampler = ShardedBatchSampler(len(dataset), batch_size, True, generator, rank(), world_size(), weights=weights)
    else:
        sampler = shard_for_eval(len(dataset), batch_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_batch_collate, pin_memory=pin_memory)
