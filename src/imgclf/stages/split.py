"""split: check every image decodes, then write stratified train/val/test (+ sample) index files."""
from __future__ import annotations

import logging
from collections import Counter

from omegaconf import DictConfig

from ..data import DATA_ROOT, IMAGE_DIR, SPLIT_DIR, SPLITS, TEST_LIST, VAL_LIST, dataset_dir
from ..data.folder import scan_image_folder
from ..data.split import split_with_fixed, stratified_split, write_split
from ..utils import atomic_path, write_json
from ._app import stage_main

log = logging.getLogger(__name__)


def split(cfg: DictConfig) -> None:
    root = dataset_dir(DATA_ROOT, cfg.data.name)
    params = cfg.data.split
    scan = scan_image_folder(root / IMAGE_DIR)
    # fixed splits: an official test set (MNIST's t10k, CIFAR's test_batch), a folder source's val/test folders
    fixed = {name: (root / IMAGE_DIR / listing).read_text().splitlines()
             for name, listing in (("val", VAL_LIST), ("test", TEST_LIST)) if (root / IMAGE_DIR / listing).is_file()}
    if fixed:
        splits = split_with_fixed(scan.items, fixed, params.val_fraction, params.test_fraction, params.seed)
    else:
        splits = stratified_split(scan.items, params.val_fraction, params.test_fraction, params.seed)
    report = {
        "class_names": scan.class_names,
        "images_per_class": {s: dict(sorted(Counter(lbl for _, lbl in splits[s]).items())) for s in SPLITS},
        "skipped": {"counts": scan.skipped_counts(), "files": [{"path": p, "reason": r} for p, r in scan.skipped]},
    }
    with atomic_path(root / SPLIT_DIR) as tmp:
        write_split(tmp, splits, scan.class_names, params.sample_per_class, params.seed)
        write_json(tmp / "report.json", report)
    log.info("split %s: %s images, %d classes, %d skipped", cfg.data.name,
             {s: len(splits[s]) for s in SPLITS}, len(scan.class_names), len(scan.skipped))


main = stage_main(split)

if __name__ == "__main__":
    main()
