"""label_issues: the labelled images whose label the trained network's embeddings contradict, ranked by cleanlab;
logged into the train run. Fix them in relabel/<data set>.csv (`imgclf relabel`, the Review page), then dvc repro."""

from __future__ import annotations

import logging

import numpy as np
import torch
from omegaconf import DictConfig

from imgclf import tracking
from imgclf.contract import ServingSpec
from imgclf.data.datasets import build_loader, load_split
from imgclf.data.transforms import Preprocess
from imgclf.devices import resolve_device
from imgclf.files import atomic_files
from imgclf.inference import DeviceSetup, compute_features
from imgclf.label_issues import find_issues, out_of_fold_probs, write_issues
from imgclf.models.saved import load_checkpoint, model_from_checkpoint
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import stage_main

log = logging.getLogger(__name__)


def label_issues(cfg: DictConfig | Options) -> float:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    paths, data, li = Paths.from_config(opts.paths), opts.data, opts.label_issues
    ckpt = load_checkpoint(paths.model_file, opts.config.get("model"))
    spec = ServingSpec.from_checkpoint(ckpt)
    t = opts.trainer
    setup = DeviceSetup.for_device(resolve_device(t.device), t.amp, t.channels_last)  # as train ran: bf16 on CUDA
    model, preprocess = model_from_checkpoint(ckpt).to(setup.device), Preprocess(spec.mean, spec.std).to(setup.device)
    sets = {name: load_split(paths.dataset(data.name), name, data.subset, spec) for name in li.splits}
    feats, labels = [], []
    with torch.no_grad():
        for dataset in sets.values():
            f, y = compute_features(model, build_loader(dataset, opts.trainer.batch_size, False), setup, preprocess)
            feats.append(f.numpy())
            labels.append(y.numpy())
    embeddings, y = np.concatenate(feats), np.concatenate(labels)
    where = [(name, i) for name, dataset in sets.items() for i in range(len(dataset))]
    probs = out_of_fold_probs(embeddings, y, len(spec.class_names), li.folds, opts.seed)
    issues = find_issues(y, probs, [sets[n].paths[i] for n, i in where], [n for n, _ in where], spec.class_names)
    index = {sets[n].paths[i]: (n, i) for n, i in where}

    def images_of(chosen: list[str]) -> np.ndarray:
        return np.stack([sets[index[p][0]].batch([index[p][1]])[0].numpy() for p in chosen])

    out = paths.report_dir("label_issues")
    with atomic_files(out) as tmp:  # a failure half-way leaves no new report beside the last run's
        write_issues(tmp, issues, images_of, li.top)
    tracking.use(opts.tracking.outbox, opts.tracking.outage_wait_s)
    with tracking.reopen(paths.run_file, opts.tracking.uri):
        tracking.log_metrics(issues.metrics)
        tracking.log_artifacts(out, "label_issues")
    log.info(
        "%d of %d labels look wrong (label health %.3f): %s/label_issues.csv",
        len(issues.rows),
        len(y),
        issues.health,
        out,
    )
    return issues.health


main = stage_main(label_issues)

if __name__ == "__main__":
    main()
