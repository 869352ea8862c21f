"""Every metric name the stages log to MLflow or write to reports/<stage>/metrics.json, with what it measures.

The docs' metrics reference is generated from this list, and tests hold it to what the stages really log: each
logged name matches one pattern and each pattern is logged, so adding a metric without a line here fails a test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    pattern: str  # the name; <class> is a class name, <format> a model format, <batch> a batch size
    stage: str
    meaning: str

    def matches(self, name: str) -> bool:
        parts = re.split(r"(<\w+>)", self.pattern)
        regex = "".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts)
        return re.fullmatch(regex, name) is not None


METRICS = (
    Metric("train/loss", "train", "mean training loss of the epoch (a step per epoch)"),
    Metric("train/acc", "train", "training accuracy of the epoch, on the augmented images"),
    Metric("val/loss", "train", "validation loss after the epoch"),
    Metric("val/acc", "train", "validation accuracy after the epoch: the objective of sweeps and trainer.keep=best"),
    Metric("lr", "train", "learning rate at the end of the epoch"),
    Metric("train/epoch_time_s", "train", "seconds the epoch took (CPU and GPU runs compare here)"),
    Metric("train/images_per_sec", "train", "training throughput of the epoch"),
    Metric("epochs_run", "train", "epochs trained (fewer than asked when early stopping stopped the run)"),
    Metric("best_epoch", "train", "the epoch of the best val/acc"),
    Metric("best/<name>", "train", "a per-epoch figure at the best epoch (best/val/acc, best/train/loss, ...)"),
    Metric("best/<name>/<name>", "train", "as best/<name>, for the figures with a slash (best/val/acc, ...)"),
    Metric("kept_epoch", "train", "the epoch model.pt holds (trainer.keep: last or best)"),
    Metric("kept/val/<name>", "train", "val/acc and val/loss of the epoch model.pt holds"),
    Metric("baseline/val/acc", "train", "val/acc of a logistic regression on 16 px grayscale pixels: the floor"),
    Metric("data/skipped_files", "train", "files split skipped (unreadable, too small, not images)"),
    Metric("data/cross_split_duplicates", "train", "groups of pixel-identical images in more than one split"),
    Metric("test/acc", "evaluate", "top-1 accuracy on the test split"),
    Metric("test/loss", "evaluate", "cross-entropy on the test split"),
    Metric("test/macro_f1", "evaluate", "F1 averaged over classes, each class weighted equally"),
    Metric(
        "test/balanced_acc", "evaluate", "recall averaged over classes: accuracy as if every class had as many images"
    ),
    Metric("test/top5_acc", "evaluate", "top-5 accuracy (k capped at the number of classes)"),
    Metric("test/precision/<class>", "evaluate", "precision of one class"),
    Metric("test/recall/<class>", "evaluate", "recall of one class"),
    Metric("test/f1/<class>", "evaluate", "F1 of one class"),
    Metric("test/support/<class>", "evaluate", "test images of one class"),
    Metric("test_tta/acc", "evaluate", "test/acc averaged over the test-time views (evaluate.tta)"),
    Metric("test_tta/loss", "evaluate", "test/loss with the test-time views"),
    Metric("test_tta/macro_f1", "evaluate", "test/macro_f1 with the test-time views"),
    Metric("label_issues/count", "label_issues", "labelled images cleanlab flags as likely mislabelled"),
    Metric("label_issues/fraction", "label_issues", "label_issues/count over the labelled images checked"),
    Metric(
        "label_issues/health", "label_issues", "cleanlab's overall label health score: the share of labels it trusts"
    ),
    Metric("export/<format>_max_abs_diff", "export", "largest |logit difference| of onnx or pt2 against PyTorch"),
    Metric("export/<format>_top1_agreement", "export", "share of images where onnx or pt2 and PyTorch agree"),
    Metric("export/verified_images", "export", "real test images the export was checked on (export.verify_images)"),
    Metric("export/<format>_b<batch>_ms", "export", "ms per batch of 1 or 32 (pytorch, onnxruntime, pt2) on this CPU"),
    Metric("export/<format>_b<batch>_images_per_sec", "export", "images/s at batch 1 or 32 on this CPU"),
    Metric("optimise/<format>/fp32/test_acc", "optimise", "test/acc of the FP32 export on the same images"),
    Metric("optimise/<format>/fp32/test_macro_f1", "optimise", "test/macro_f1 of the FP32 export"),
    Metric("optimise/<format>/optimised/test_acc", "optimise", "test/acc of the optimised model"),
    Metric("optimise/<format>/optimised/test_macro_f1", "optimise", "test/macro_f1 of the optimised model"),
    Metric("optimise/<format>/acc_drop", "optimise", "FP32 test/acc minus the optimised model's"),
    Metric("optimise/<format>/top1_agreement", "optimise", "share of test images where both predict the same"),
    Metric("optimise/<format>/max_prob_diff", "optimise", "largest probability difference between the two"),
    Metric("optimise/<format>/images_lost", "optimise", "test images FP32 gets right and the optimised one wrong"),
    Metric("optimise/<format>/images_gained", "optimise", "test images the optimised one gets right and FP32 wrong"),
    Metric("optimise/<format>/drop_p_value", "optimise", "McNemar's exact test of the drop (optimise.significance)"),
    Metric("optimise/<format>/promoted", "optimise", "1 when the gate passed and models/optimised holds the model"),
    Metric("optimise/<format>/size_mb", "optimise", "size of the optimised model file"),
    Metric("optimise/<format>/fp32_size_mb", "optimise", "size of the FP32 model it was made from"),
    Metric("lr_find/suggested_lr", "lr_find", "the rate at the steepest fall of the smoothed loss"),
    Metric("lr_find/min_loss_lr_over_10", "lr_find", "the rate of the lowest loss, divided by 10 (fast.ai's rule)"),
    Metric("sweep/trials", "sweep parent", "jobs the sweep started"),
    Metric("sweep/finished", "sweep parent", "jobs that finished with val/acc (pruned ones not counted)"),
    Metric("sweep/pruned", "sweep parent", "jobs an Optuna pruner stopped early (tag imgclf.pruned)"),
    Metric("sweep/failed", "sweep parent", "jobs that failed"),
)


def metric_for(name: str) -> Metric | None:
    """The catalogue entry a logged name is an instance of (the most specific pattern first)."""
    return next((m for m in sorted(METRICS, key=lambda m: m.pattern.count("<")) if m.matches(name)), None)
