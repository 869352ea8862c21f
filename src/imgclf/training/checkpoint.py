"""Training checkpoints: everything needed to continue a run exactly where it stopped, written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.errors import BadInput, MissingInput
from imgclf.files import atomic_path, load_tensors, lock_folder
from imgclf.targets import remove_empty
from imgclf.training.engine import FitState

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
# keys that may change between an interrupted run and its resumption without changing what it computes
RESUMABLE_CHANGES = ("trainer.resume", "trainer.log_every", "trainer.keep", "tracking.run_name")


def fingerprint(flat_config: dict, *, world_size: int = 1, data_version: str = "", code_version: str = "") -> dict:
    """What a checkpoint was trained with: the config (minus keys that do not change the computation) with the
    process count (it changes the batches each process sees), the data version and the code version. A resume
    continues only when all three match."""
    kept = {k: v for k, v in sorted(flat_config.items()) if k not in RESUMABLE_CHANGES}
    kept["_world_size"] = world_size
    config = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config": config, "data": data_version, "code": code_version}


def mismatch(saved: object, current: dict) -> str | None:
    """Why a checkpoint with fingerprint `saved` must not be continued, in words; None when it may."""
    if saved == current:
        return None
    if not isinstance(saved, dict):  # written before data and code were part of it
        return "it was written by an older imgclf"
    what = {"config": "the config (or process count)", "data": "the data", "code": "the code"}
    return "; ".join(
        f"{what[k]} changed ({saved.get(k) or '?'} -> {current[k]})" for k in what if saved.get(k) != current[k]
    )


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random stream training draws from: Python, NumPy, torch (CPU, CUDA) and the named generators."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():  # this device's only: a resume may see fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])


@dataclass
class Resumable:
    """The objects whose state a checkpoint holds: restored in place on resume."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler | None
    generators: dict[str, torch.Generator]


def save_training_state(
    directory: Path,
    fit_state: FitState,
    objects: Resumable,
    *,
    run_id: str | None,
    fingerprint: dict,
    best_improved: bool,
    network: str | None = None,
) -> None:
    """last.pt every epoch (model, optimizer, scheduler, scaler, epoch, RNG, run id); best.pt when val/acc improved."""
    scheduler, scaler = objects.scheduler, objects.scaler
    state = {
        "model": objects.model.state_dict(),
        "optimizer": objects.optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": fit_state.epoch,
        "history": fit_state.history,
        "best_epoch": fit_state.best_epoch,
        "best_metrics": fit_state.best_metrics,
        "bad_epochs": fit_state.bad_epochs,
        "stopped_early": fit_state.stopped_early,
        "rng": rng_state(objects.generators),
        "run_id": run_id,
        "fingerprint": fingerprint,
        "network": network,  # what built the weights (source/name, classes): named when a resume cannot load them
    }
    with atomic_path(directory / LAST) as tmp:
        torch.save(state, tmp)
    if best_improved:  # after last.pt: on load, a best.pt of another epoch than last.pt's best is ignored
        with atomic_path(directory / BEST) as tmp:
            torch.save({"model": fit_state.best_state, "epoch": fit_state.best_epoch}, tmp)


@dataclass
class Resume:
    """A checkpoint to continue from, read once: its path (for messages) and its contents."""

    path: Path
    state: dict
    mismatch: str | None = None  # what differs, when trainer.resume=PATH forces a checkpoint of another fingerprint


def _read(path: Path) -> dict:
    return load_tensors(path)


def find_resume_checkpoint(resume: str, directory: Path, fingerprint: dict) -> Resume | None:
    """The checkpoint to continue from: `never` -> None; `auto` -> last.pt of this config, data and code if any;
    else a path (continued even when they differ, with a warning saying what). A last.pt or best.pt there that is no
    file (a folder, a pipe) is refused first, whatever `resume` says: the run would train, then fail to write it."""
    for name in (LAST, BEST):
        if os.path.lexists(directory / name) and not (directory / name).is_file():
            kind = "a folder" if (directory / name).is_dir() else "no regular file (a pipe, a device or a broken link)"
            raise BadInput(f"{directory / name} is {kind}: the run writes its checkpoint there; move it away")
    if resume == "never":
        return None
    path = directory / LAST if resume == "auto" else Path(resume)
    if not path.is_file():
        if resume == "auto":
            return None
        raise MissingInput(f"trainer.resume={resume}: no such checkpoint; use auto, never or the path of a last.pt")
    try:
        state = _read(path)
    except BadInput as exc:
        if resume != "auto":
            raise
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)  # kept for a look, never read again; the next run starts afresh
        log.warning("%s; moved aside to %s, starting a new run", exc, aside.name)
        return None
    if not isinstance(state, dict) or not state.keys() >= TRAINING_KEYS:  # a model.pt, or any other tensors
        if resume != "auto":
            raise BadInput(f"trainer.resume={resume}: not a training checkpoint (last.pt); use auto, never or the "
                           "path of a last.pt")  # fmt: skip
        log.warning("%s is not a training checkpoint; %s, starting a new run", path, _set_aside(path))
        return None
    why = mismatch(state.get("fingerprint"), fingerprint)
    if why:
        if resume == "auto":
            aside = _set_aside(path)  # this run's own checkpoints go where it was: the other run's are kept
            log.warning("not resuming from %s: %s; %s, starting a new run (trainer.resume=PATH resumes it)", path,
                        why, aside)  # fmt: skip
            return None
        log.warning("resuming from %s although %s: its MLflow run keeps the params it was started with", path, why)
    return Resume(path, state, why)


def check_network(resume: Resume, network: str, shapes: dict[str, tuple]) -> None:
    """A checkpoint whose weights do not fit the network the config builds (`shapes`): one line naming both, before
    any MLflow run is reopened (load_state_dict would list every key, and the resumed run would end FAILED)."""
    saved = {k: tuple(getattr(v, "shape", ())) for k, v in resume.state["model"].items()}
    if saved == shapes:
        return
    counts = {
        "missing from it": len(shapes.keys() - saved.keys()),
        "not in the config's network": len(saved.keys() - shapes.keys()),
        "shaped differently": sum(saved[k] != shapes[k] for k in saved.keys() & shapes.keys()),
    }
    detail = ", ".join(f"{n} weights {what}" for what, n in counts.items() if n)
    theirs = resume.state.get("network") or "unnamed: written by an older imgclf"
    raise BadInput(f"trainer.resume={resume.path}: the checkpoint's network ({theirs}) does not match the config's "
                   f"({network}): {detail}; resume it with the model and data it was trained with, or start afresh "
                   "with trainer.resume=never")  # fmt: skip


def hold(directory: Path) -> Callable[[], None]:
    """One training at a time in `directory`: an exclusive lock on the folder itself (flock, released however the
    process ends), or BadInput while another process's training holds it (it would resume that run's checkpoint as
    its own and log into its MLflow run, or set its files aside under it). Returns the release, which also removes
    the folder when this call made it and nothing was written there."""
    made = not directory.is_dir()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        unlock = lock_folder(directory, wait=False)
    except BlockingIOError:
        raise BadInput(f"{directory} is in use by another training (it holds the folder's lock); wait for it to end, "
                       "or give this one its own paths.checkpoints") from None  # fmt: skip

    def release() -> None:
        unlock()
        if made:  # not empty, or removed by the run's end: kept as it is
            remove_empty([directory])

    return release


def set_aside_others(directory: Path, resume: str, resuming: Resume | None) -> None:
    """Before a run writes into `directory`: an interrupted run's last.pt (and best.pt) there that it does not resume
    (trainer.resume=never, or a PATH elsewhere: a set-aside one) goes into a folder of their own, as another config's
    does: nothing a run can resume is overwritten or removed."""
    last = directory / LAST
    if not last.is_file() or (resuming is not None and resuming.path.resolve() == last.resolve()):
        return
    then = f"resuming {resuming.path} instead" if resuming else "starting a new run"
    log.warning("not resuming from %s: trainer.resume=%s; %s, %s (trainer.resume=PATH resumes it)", last, resume,
                _set_aside(last), then)  # fmt: skip


TRAINING_KEYS = {"run_id", "model", "optimizer", "epoch", "history", "best_epoch", "best_metrics", "rng"}


def _set_aside(path: Path) -> str:
    """Move last.pt and its best.pt into a folder of their own beside them, where a new run will not overwrite or
    remove them (trainer.resume=<folder>/last.pt resumes them); says where."""
    folder = Path(tempfile.mkdtemp(prefix=f"set-aside-{time.strftime('%Y%m%dT%H%M%S')}-", dir=path.parent))
    for name in (path.name, BEST):
        if (path.parent / name).is_file():
            os.replace(path.parent / name, folder / name)
    return f"moved aside to {folder / path.name}"


def load_training_state(resume: Resume, objects: Resumable) -> FitState:
    """Restore everything save_training_state wrote into `objects`; returns the fit state."""
    ckpt = resume.state
    objects.model.load_state_dict(ckpt["model"])
    objects.optimizer.load_state_dict(ckpt["optimizer"])
    if objects.scheduler is not None and ckpt["scheduler"] is not None:
        objects.scheduler.load_state_dict(ckpt["scheduler"])
    if objects.scaler is not None and ckpt["scaler"] is not None:
        objects.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], objects.generators)
    best_file = resume.path.parent / BEST
    try:
        best = _read(best_file) if best_file.is_file() else {}
    except BadInput as exc:  # a half of best.pt cannot be (a write is atomic), but a disk can fail: not fatal
        log.warning("%s; the best weights restart from this checkpoint's epoch", exc)
        best = {}
    if best.get("epoch") != ckpt["best_epoch"]:  # killed before best.pt was written: the best is this epoch
        best = {"model": {k: v.clone() for k, v in ckpt["model"].items()}}
    state = FitState(
        epoch=ckpt["epoch"],
        history=ckpt["history"],
        best_epoch=ckpt["best_epoch"],
        best_metrics=ckpt["best_metrics"],
        best_state=best["model"],
        bad_epochs=ckpt["bad_epochs"],
        stopped_early=ckpt.get("stopped_early", False),
    )
    log.info(
        "resuming from %s after epoch %d (best val/acc %.4f at epoch %d)",
        resume.path,
        state.epoch,
        state.best_metrics.get("val/acc", float("nan")),
        state.best_epoch,
    )
    return state
