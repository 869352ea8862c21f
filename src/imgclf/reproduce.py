"""`imgclf reproduce RUN_ID`: re-create a run from its MLflow record into a new run, refusing when the code or the
data it was made from are not what this checkout has, then compare the two runs' metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import tracking
from imgclf.data.download import file_digest
from imgclf.data.split import data_version
from imgclf.errors import BadInput
from imgclf.paths import Paths
from imgclf.provenance import code_version, environment
from imgclf.training.lifecycle import pretrained_start, sha256_of

COMPARED = ("best/val/acc", "test/acc", "test/macro_f1", "test/loss")
# what must match for bit-identical metrics on the CPU: the same machine, threads and library versions
SAME_MACHINE = ("cpu", "cpu_count", "torch_threads", "torch", "torchvision", "timm", "numpy", "pillow", "gpu")
TOLERANCE_ELSEWHERE = 0.02  # another CPU or library version: float sums differ, an epoch can end elsewhere


@dataclass
class Record:
    """A train run as MLflow holds it: its resolved config (train/config.yaml), tags and latest metrics."""

    run_id: str
    name: str
    config: dict[str, Any]
    tags: dict[str, str]
    metrics: dict[str, float]

    @classmethod
    def load(cls, uri: str, run_id: str) -> Record:
        import yaml

        run = tracking.run_record(uri, run_id)
        if run["tags"].get("imgclf.role") == "sweep":
            raise BadInput(f"run {run_id} is a sweep's parent run, not a training: give one of its jobs (imgclf runs "
                           f"--sweep {run_id})")  # fmt: skip
        try:
            config = yaml.safe_load(tracking.artifact_text(uri, run_id, "train/config.yaml"))
        except BadInput:  # no train/config.yaml: an lr-find run, a run that failed before it trained, not imgclf's
            raise BadInput(
                f"run {run_id} ({run['name'] or 'no name'}) is no training imgclf recorded (no train/config.yaml): "
                "give a train run's id (imgclf runs lists them)"
            ) from None
        if "paths" not in config or "imgclf.code_version" not in run["tags"]:
            raise BadInput(f"run {run_id} was made by an older imgclf: it records no code version or paths")
        return cls(run_id, run["name"], config, run["tags"], run["metrics"])


def differences(record: Record, paths: Paths) -> list[str]:
    """What this checkout has that the run did not: its code version, its data version (one phrase each)."""
    tags, found = record.tags, []
    if tags.get("imgclf.world_size", "1") != "1":
        found.append(
            f"it ran on {tags['imgclf.world_size']} processes (torchrun); reproduce re-creates one-process runs"
        )
    if tags.get("imgclf.resumed_across"):
        found.append(f"it was resumed across a change ({tags['imgclf.resumed_across']}): no one state made it")
    weights = record.config["model"].get("weights")
    if tags.get("imgclf.weights_sha256"):
        now = (
            file_digest(Path(weights).expanduser(), "sha256")
            if weights and Path(weights).expanduser().is_file()
            else "none"
        )
        if now != tags["imgclf.weights_sha256"]:
            found.append(f"model.weights {weights} differs (sha256 {tags['imgclf.weights_sha256'][:12]} -> {now[:12]})")
    cached = pretrained_start(record.config["model"])  # ImageNet weights from a cache no DVC dependency follows
    was = tags.get("imgclf.pretrained_sha256")
    if was and (sha256_of(cached) if cached else None) != was:
        now = f"sha256 {sha256_of(cached)[:12]} at {cached}" if cached else "none cached"
        found.append(f"its ImageNet weights differ (sha256 {was[:12]} then, {now} now)")
    code = code_version()
    if tags["imgclf.code_version"] != code:
        commit = tags.get("mlflow.source.git.commit", "")[:10] or "unknown"
        dirty = ", with uncommitted changes (artifact git/diff.patch)" if tags.get("imgclf.git_dirty") == "true" else ""
        found.append(
            f"the code differs: the run was made by code version {tags['imgclf.code_version']} "
            f"(commit {commit}{dirty}), this checkout has {code}"
        )
    split_dir = paths.split(record.config["data"]["name"])
    data = data_version(split_dir) if split_dir.is_dir() else "none"
    if tags.get("imgclf.data_version") != data:
        found.append(
            f"the data differs: the run trained on data version {tags.get('imgclf.data_version')}, "
            f"{split_dir} is {data} (dvc checkout or dvc repro split brings the run's data back)"
        )
    return found


def reproduction_config(record: Record, uri: str, out_dir: Path) -> dict[str, Any]:
    """The recorded config, writing into `out_dir` (never over the DVC outputs), starting afresh, into `uri`."""
    config = dict(record.config)
    config["paths"] = {
        **config["paths"],
        "models": str(out_dir / "models"),
        "reports": str(out_dir / "reports"),
        "checkpoints": str(out_dir / "checkpoints"),
    }
    config["trainer"] = {**config["trainer"], "resume": "never"}
    config["tracking"] = {**config["tracking"], "uri": uri, "run_name": f"reproduce-{record.name}"}
    return config


def tolerance_for(record: Record, tolerance: float | None) -> tuple[float, str]:
    """0 on the machine and library versions that made the run, TOLERANCE_ELSEWHERE elsewhere (or as given)."""
    env = environment()
    changed = [k for k in SAME_MACHINE if record.tags.get(f"imgclf.env.{k}") != env[k]]
    if tolerance is not None:
        return tolerance, "as given"
    if not changed:
        return 0.0, "same machine, threads and libraries: identical expected"
    return TOLERANCE_ELSEWHERE, f"{', '.join(changed)} differ: within {TOLERANCE_ELSEWHERE}"


def compare(old: dict[str, float], new: dict[str, float], tolerance: float) -> tuple[list[tuple], bool]:
    """Rows (metric, recorded, reproduced, difference) of the compared metrics both runs have; ok when all agree."""
    rows = [(k, old[k], new[k], new[k] - old[k]) for k in COMPARED if k in old and k in new]
    return rows, bool(rows) and all(abs(diff) <= tolerance for *_, diff in rows)


def format_rows(rows: list[tuple], old_id: str, new_id: str) -> str:
    lines = [f"{'metric':<16} {'run ' + old_id[:8]:>14} {'run ' + new_id[:8]:>14} {'difference':>12}"]
    lines += [f"{name:<16} {a:>14.6f} {b:>14.6f} {diff:>12.3g}" for name, a, b, diff in rows]
    return "\n".join(lines)
