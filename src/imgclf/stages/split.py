"""split: check every image decodes, then write stratified train/val/test (+ sample) index files."""
from __future__ import annotations

import csv
import logging

from omegaconf import DictConfig

from ..data import DATA_ROOT, IMAGE_DIR, SPLIT_DIR, SPLITS, TEST_LIST, VAL_LIST, dataset_dir
from ..data.folder import scan_image_folder
from ..data.report import build_report, class_counts, plot_class_counts, plot_samples
from ..data.split import split_with_fixed, stratified_split, write_split
from ..utils import atomic_path, write_json
from ._app import stage_main

log = logging.getLogger(__name__)

REPORT_DIR = "reports/split"


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
    report = build_report(scan, splits)
    if report["cross_split_duplicates"]["groups"]:
        log.warning("%d groups of identical images appear in more than one split (see %s/report.json)",
                    report["cross_split_duplicates"]["groups"], REPORT_DIR)
    with atomic_path(root / SPLIT_DIR) as tmp:
        write_split(tmp, splits, scan.class_names, params.sample_per_class, params.seed)
        write_json(tmp / "report.json", report)
    write_report(root / IMAGE_DIR, scan, splits, report)
    log.info("split %s: %s images, %d classes, %d skipped", cfg.data.name,
             {s: len(splits[s]) for s in SPLITS}, len(scan.class_names), len(scan.skipped))


def write_report(image_root, scan, splits, report) -> None:
    """reports/split/: what `dvc plots` shows and the train stage logs to MLflow."""
    rows = class_counts(splits, scan.class_names)
    write_json(f"{REPORT_DIR}/report.json", report)
    with atomic_path(f"{REPORT_DIR}/class_counts.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "split", "images"])
        writer.writeheader()
        writer.writerows(rows)
    plot_class_counts(rows, f"{REPORT_DIR}/class_counts.png")
    plot_samples(image_root, splits["train"], scan.class_names, f"{REPORT_DIR}/samples.png")


main = stage_main(split)

if __name__ == "__main__":
    main()
