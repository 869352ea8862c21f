"""export: the best model as ONNX, verified on real test images, with its labels and preprocessing."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from .. import tracking
from ..data import DATA_ROOT
from ..data.datasets import load_split
from ..engine import Preprocess
from ..export import export_onnx, export_torchscript, latency_report, verify_onnx, verify_torchscript
from ..models import load_checkpoint, model_from_checkpoint
from ..utils import atomic_path, write_json
from ._app import read_run_file, stage_main

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> None:
    ckpt = load_checkpoint("models/model.pt")
    model = model_from_checkpoint(ckpt)
    test_set = load_split(DATA_ROOT, cfg.data.name, "test", cfg.data.subset, ckpt["image_size"],
                          ckpt.get("interpolation", "bilinear"))
    inputs = Preprocess(ckpt["mean"], ckpt["std"])(test_set.images[: cfg.export.verify_images])
    with atomic_path("models/export") as tmp:
        tmp.mkdir()
        export_onnx(model, inputs[:1], tmp / "model.onnx", cfg.export.opset)
        export_torchscript(model, inputs[:1], tmp / "model.ts")
        report = {**verify_onnx(model, tmp / "model.onnx", inputs), **verify_torchscript(model, tmp / "model.ts", inputs)}
        log.info("ONNX vs PyTorch on %d test images: max |diff| %.3g, top-1 agreement %.4f", len(inputs),
                 report["export/onnx_max_abs_diff"], report["export/onnx_top1_agreement"])
        for fmt in ("onnx", "torchscript"):
            if report[f"export/{fmt}_max_abs_diff"] > cfg.export.atol:
                raise RuntimeError(f"{fmt} output differs from PyTorch by {report[f'export/{fmt}_max_abs_diff']:.3g}"
                                   f" > export.atol={cfg.export.atol}; not writing models/export")
        (tmp / "labels.txt").write_text("".join(f"{c}\n" for c in ckpt["class_names"]))
        write_json(tmp / "preprocessing.json", {
            "input": "images", "output": "logits", "layout": "NCHW", "color": "RGB",
            "image_size": ckpt["image_size"], "resize": f"{ckpt.get('interpolation', 'bilinear')}, to a square",
            "interpolation": ckpt.get("interpolation", "bilinear"),
            "scale": "pixel / 255", "mean": ckpt["mean"], "std": ckpt["std"],
        })
    latency = latency_report(model, Path("models/export"), inputs)
    for fmt, figures in latency.items():
        log.info("%-12s batch 1: %.1f ms, batch 32: %.0f img/s", fmt, figures["b1_ms"], figures["b32_images_per_sec"])
    write_json("reports/export/metrics.json", report)
    write_json("reports/export/latency.json", latency)
    with tracking.run(cfg.tracking.uri, run_id=read_run_file()["run_id"]):
        tracking.log_metrics(report)
        tracking.log_metrics({f"export/{fmt}_{k}": v for fmt, figures in latency.items() for k, v in figures.items()})
        tracking.log_artifacts("models/export", "export")
        tracking.set_tags({"imgclf.export_dir": str(Path("models/export").resolve())})  # for `imgclf runs --best`
        tracking.log_artifact("reports/export/latency.json", "export")
        examples = test_set.images[:2].permute(0, 2, 3, 1).numpy()  # what a client sends: RGB uint8, NHWC
        uri = tracking.log_served_model("models/export", examples, cfg.export.registered_name)
        tracking.set_tags({"imgclf.model_uri": uri})
        log.info("MLflow model %s%s", uri, f", registered as {cfg.export.registered_name}" if cfg.export.registered_name else "")


main = stage_main(export)

if __name__ == "__main__":
    main()
