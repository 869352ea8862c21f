"""optimise: the exported model made smaller or faster (conf/optimise/), kept only if it still answers the same.

Calibrated on a seeded sample of the train split, compared with FP32 on the whole test split. The gate: a test/acc
drop above optimise.max_acc_drop that is also significant (McNemar's exact test on the images the two disagree on,
p < optimise.significance) is not promoted: models/optimised holds only gate.json saying why and the stage still
succeeds, so the experiment (its model, FP32 metrics, the verdict) is kept. One image lost is noise, not a verdict.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
from omegaconf import DictConfig

from imgclf import tracking
from imgclf.contract import ServingSpec, export_behind, run_of, seal
from imgclf.data.datasets import load_split
from imgclf.data.transforms import Preprocess
from imgclf.deploy.quantize import build, calibration_indices, compare, gate, model_size_mb, optimised_file
from imgclf.deploy.runtimes import probabilities
from imgclf.errors import BadInput, MissingInput
from imgclf.files import atomic_dir, write_json
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import stage_main

log = logging.getLogger(__name__)
CHUNK = 256  # test images per batch: a large test split is never in memory whole


def optimise(cfg: DictConfig | Options) -> dict:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    paths, o = Paths.from_config(opts.paths), opts.optimise
    fp32 = paths.export_dir / "model.onnx"
    if not fp32.is_file():
        raise MissingInput(f"{fp32} not found; run export first (dvc repro export)")
    if behind := export_behind(paths.export_dir, paths.models):  # its result would be filed under models/run.json's run
        raise BadInput(f"{behind}: export it first (dvc repro export)")
    spec = ServingSpec.read(paths.export_dir)
    root, preprocess = paths.dataset(opts.data.name), Preprocess(spec.mean, spec.std)
    train = load_split(root, "train", opts.data.subset, spec)
    calibration = preprocess(train.batch(calibration_indices(len(train), o.calibration_images, o.seed))).numpy()
    test = load_split(root, "test", opts.data.subset, spec)
    out_dir = paths.models / "optimised"
    with atomic_dir(out_dir) as tmp:
        model_file = tmp / optimised_file(o.method)
        runner = build(o.method, fp32, model_file, calibration, per_channel=o.per_channel)
        reference, probs, labels = probabilities(fp32), [], []
        for start in range(0, len(test), CHUNK):
            indices = range(start, min(start + CHUNK, len(test)))
            x = np.ascontiguousarray(preprocess(test.batch(indices)).numpy())
            probs.append((reference(x), runner(x)))
            labels.extend(int(test.labels[i]) for i in indices)
        figures = compare(
            np.concatenate([p[0] for p in probs]), np.concatenate([p[1] for p in probs]), np.array(labels)
        )
        figures["size_mb"], figures["fp32_size_mb"] = model_size_mb(model_file), model_size_mb(fp32)
        verdict = gate(o.method, figures, o.max_acc_drop, o.significance)
        metrics = {f"optimise/{o.method}/{k}": float(v) for k, v in verdict.items() if k not in ("method", "reason")}
        write_json(tmp / "gate.json", verdict)
        (log.info if verdict["promoted"] else log.warning)(
            "%s; top-1 agreement %.4f, %.1f MB (FP32 %.1f MB)%s",
            verdict["reason"],
            figures["top1_agreement"],
            figures["size_mb"],
            figures["fp32_size_mb"],
            "" if verdict["promoted"] else f"; {out_dir} holds only gate.json",
        )
        if verdict["promoted"]:
            spec.write(tmp, run_of(paths.export_dir), run_of(paths.export_dir, "checkpoint_sha256"))  # the export's
            seal(tmp)
        for path in [] if verdict["promoted"] else [p for p in tmp.iterdir() if p.name != "gate.json"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    reports = paths.report_dir("optimise")
    write_json(reports / "metrics.json", metrics)
    tracking.use(opts.tracking.outbox, opts.tracking.outage_wait_s)
    with tracking.reopen(paths.run_file, opts.tracking.uri):
        tracking.log_metrics(metrics)
        tracking.log_artifact(reports / "metrics.json", "optimise")
        tracking.share_artifacts({"export/model.pt2": paths.export_dir / "model.pt2"})  # one file with DVC's
        tracking.set_tags({f"imgclf.optimise.{o.method}": verdict["reason"]})
        if verdict["promoted"] and optimised_file(o.method) == "model.onnx":  # for `mlflow models serve` too
            registered = opts.export.registered_name and f"{opts.export.registered_name}-{o.method}"
            examples = test.batch([0, 1]).permute(0, 2, 3, 1).numpy()  # RGB uint8 NHWC, as for export's model
            model_uri = tracking.log_served_model(out_dir, examples, registered, name=f"model-{o.method}")
            tracking.set_tags({f"imgclf.model_uri.{o.method}": model_uri})
    return metrics


main = stage_main(optimise)

if __name__ == "__main__":
    main()
