"""export: the trained model (models/model.pt) as ONNX and a torch.export program (.pt2), verified on real test
images, with its serving contract."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from imgclf import tracking
from imgclf.contract import ServingSpec
from imgclf.data.datasets import load_split
from imgclf.data.download import file_digest
from imgclf.data.transforms import Preprocess
from imgclf.deploy.export import export_model, latency_report
from imgclf.files import write_json
from imgclf.models.saved import load_checkpoint, model_from_checkpoint
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import stage_main

log = logging.getLogger(__name__)


def export(cfg: DictConfig | Options) -> None:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    paths, e = Paths.from_config(opts.paths), opts.export
    ckpt = load_checkpoint(paths.model_file, opts.config.get("model"))
    spec = ServingSpec.from_checkpoint(ckpt)
    model = model_from_checkpoint(ckpt)
    test_set = load_split(paths.dataset(opts.data.name), "test", opts.data.subset, spec)
    inputs = Preprocess(spec.mean, spec.std)(test_set.batch(range(min(e.verify_images, len(test_set)))))
    run_id = tracking.read_run_file(paths.run_file)["run_id"]  # the model's own record, beside it
    digest = file_digest(paths.model_file, "sha256")  # which checkpoint this export is: Grad-CAM checks it
    report = export_model(
        model, inputs, paths.export_dir, spec, opset=e.opset, atol=e.atol, run_id=run_id, checkpoint_sha256=digest
    )
    latency = latency_report(model, paths.export_dir, inputs)
    for fmt, figures in latency.items():
        log.info("%-12s batch 1: %.1f ms, batch 32: %.0f img/s", fmt, figures["b1_ms"], figures["b32_images_per_sec"])
    reports = paths.report_dir("export")
    write_json(reports / "metrics.json", report)
    write_json(reports / "latency.json", latency)
    tracking.use(opts.tracking.outbox, opts.tracking.outage_wait_s)
    with tracking.reopen(paths.run_file, opts.tracking.uri):
        tracking.log_metrics(report)
        tracking.log_metrics({f"export/{fmt}_{k}": v for fmt, figures in latency.items() for k, v in figures.items()})
        tracking.log_artifacts(paths.export_dir, "export")
        tracking.set_tags({"imgclf.export_dir": str(paths.export_dir.resolve())})  # for `imgclf runs --best`
        tracking.log_artifact(reports / "latency.json", "export")
        examples = test_set.batch([0, 1]).permute(0, 2, 3, 1).numpy()  # what a client sends: RGB uint8, NHWC
        uri = tracking.log_served_model(paths.export_dir, examples, e.registered_name)
        tracking.set_tags({"imgclf.model_uri": uri})
        registered = e.registered_name
        log.info("MLflow model %s%s", uri, f", registered as {registered}" if registered else "")


main = stage_main(export)

if __name__ == "__main__":
    main()
