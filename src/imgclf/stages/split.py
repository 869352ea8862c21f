"""split: check every image decodes, then write stratified train/val/test (+ sample) index files and the report."""

from __future__ import annotations

import functools
import logging

from omegaconf import DictConfig

from imgclf.contract import MAX_CLASSES
from imgclf.data import SPLITS, TEST_LIST, VAL_LIST
from imgclf.data.folder import scan_image_folder
from imgclf.data.relabel import EXCLUDE, apply_fixes, check_fixes, read_fixes
from imgclf.data.report import build_report, write_data_report
from imgclf.data.split import split_with_fixed, stratified_split, write_split
from imgclf.files import atomic_dir, write_json
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import stage_main

log = logging.getLogger(__name__)


def split(cfg: DictConfig | Options) -> None:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    paths = Paths.from_config(opts.paths)
    images, params = paths.images(opts.data.name), opts.data.split
    scan = scan_image_folder(images, max_classes=MAX_CLASSES)  # what train, export, predict and serve take
    # fixed splits: an official test set (MNIST's t10k, CIFAR's test_batch), a folder source's val/test folders
    fixed = {
        name: (images / listing).read_text().splitlines()
        for name, listing in (("val", VAL_LIST), ("test", TEST_LIST))
        if (images / listing).is_file()
    }
    if fixed:
        splits = split_with_fixed(scan.items, fixed, params.val_fraction, params.test_fraction, params.seed)
    else:
        splits = stratified_split(scan.items, params.val_fraction, params.test_fraction, params.seed)
    relabel = paths.relabel_file(opts.data.name)  # drawn from the source's labels, then fixed: nothing else moves
    fixes = read_fixes(relabel)
    check_fixes(relabel, fixes, scan.info, scan.class_names)
    drawn, splits = splits, apply_fixes(splits, fixes)
    report = build_report(scan, splits, params.min_class_images)
    report["relabel"] = {"file": str(relabel), "relabelled": sum(v != EXCLUDE for v in fixes.values())}
    report["relabel"]["excluded"] = len(fixes) - report["relabel"]["relabelled"]
    report_dir = paths.report_dir("split")
    if small := report["small_classes"]["classes"]:
        log.warning(
            "%d classes have fewer than %d training images (%s): data.balance=weights or sampler evens them out",
            len(small),
            params.min_class_images,
            ", ".join(f"{r['class']} {r['train_images']}" for r in small[:5]) + (", ..." if len(small) > 5 else ""),
        )
    for key, what in (
        ("cross_split_duplicates", "of identical images in more than one split"),
        ("conflicting_labels", "of identical images under two classes"),
        ("lookalike_classes", "of class names that differ only by case or Unicode form (one folder on macOS)"),
    ):
        if report[key]["groups"]:
            log.warning("%d groups %s (%s/report.json: %s)", report[key]["groups"], what, report_dir, key)
    with atomic_dir(paths.split(opts.data.name)) as tmp:
        digests = {path: info.sha256 for path, info in scan.info.items()}
        fix = functools.partial(apply_fixes, fixes=fixes)
        write_split(tmp, drawn, scan.class_names, params.sample_per_class, params.seed, digests, fix=fix)
        write_json(tmp / "report.json", report)
    write_data_report(report_dir, images, scan, splits, report)
    log.info(
        "split %s: %s images, %d classes, %d skipped",
        opts.data.name,
        {s: len(splits[s]) for s in SPLITS},
        len(scan.class_names),
        len(scan.skipped),
    )


main = stage_main(split)

if __name__ == "__main__":
    main()
