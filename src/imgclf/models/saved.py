"""model.pt, the trained network: saved with what rebuilds it, loaded weights-only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.contract import ContractError, ServingSpec
from imgclf.errors import BadInput, MissingInput, shown
from imgclf.files import load_tensors
from imgclf.models.build import build_model

# keys of `model` that choose where weights come from, not which network is trained on what: they may differ
UNTRAINED = frozenset({"download", "inputs"})


def load_checkpoint(path, model: Mapping[str, Any] | None = None) -> dict:
    """Load a checkpoint written by the train stage (tensors and plain types only); with `model` (the config's
    section), one line when the checkpoint was trained with another: a stage after train reads the network from the
    checkpoint, so a `model` key it is given (an override, an edited params.yaml not trained yet) would silently not
    apply to what it evaluates or exports."""
    if not Path(path).is_file():
        raise MissingInput(f"{path} not found; run the train stage first (dvc repro train)")
    ckpt = load_tensors(path)
    if not isinstance(ckpt, dict):
        raise BadInput(f"{path} holds a {type(ckpt).__name__}, not a checkpoint train writes (a dict of its weights)")
    config = ckpt.get("config")
    trained = config.get("model") if isinstance(config, Mapping) else None
    if model is not None and isinstance(trained, Mapping):
        changed = [k for k in sorted({*trained, *model} - UNTRAINED) if trained.get(k) != model.get(k)]
        if changed:
            key = changed[0]
            raise BadInput(
                f"model.{key}={_shown(model.get(key))}, but {path} was trained with model.{key}="
                f"{_shown(trained.get(key))}: train it first (dvc repro), or drop the override"
            )
    check_network(ckpt, path)
    return ckpt


def _shown(value: Any) -> str:
    """A config value as it is typed on the command line: null, true, [0.5, 0.5] (cut: it may come from the file)."""
    return shown(json.dumps(value) if not isinstance(value, str) else value)


def check_network(ckpt: dict, path) -> None:
    """BadInput unless the checkpoint's serving contract is valid and it holds every weight of the network it names,
    each in its shape: the network is built on the meta device (shapes, no memory) and compared with the tensors
    the file holds, before a real one is built. A 1.5 KB file naming a 6.7-billion-parameter network, or holding one
    number seen through a view of each shape, had that network built (27 GB) before its weights were found missing."""
    try:
        spec = ServingSpec.from_checkpoint(ckpt, str(path))
    except ContractError as exc:  # contract.py raises its own (it imports nothing of imgclf)
        raise BadInput(str(exc)) from None
    arch, source, state = ckpt.get("arch"), ckpt.get("source", "torchvision"), ckpt.get("model")
    if not isinstance(arch, str) or not isinstance(source, str):
        raise BadInput(f"{path}: its arch and source are not names of a network (model.name, model.source)")
    if not isinstance(state, dict) or not all(isinstance(k, str) and _plain(v) for k, v in state.items()):
        raise BadInput(f"{path}: its model is not a state dict of tensors held in the file, as train writes it")
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the seeded RNG as it was: init draws nothing
            wanted = build_model(arch, len(spec.class_names), source=source).state_dict(keep_vars=True)
    except BadInput as exc:  # a network imgclf does not know
        raise BadInput(f"{path}: {exc}") from None
    network = f"{shown(arch, 100)} with {len(spec.class_names):,} classes"
    misfit = _first_misfit(wanted, state)
    if misfit:
        raise BadInput(f"{path}: its weights do not fit {network}: {misfit}; a checkpoint holds every weight of the "
                       "network it names, in its shape")  # fmt: skip
    distinct = {id(t): (k, t) for k, t in wanted.items()}.values()  # a weight tied to another counts once
    needed = sum(t.numel() * state[k].element_size() for k, t in distinct)
    storages = {(s.data_ptr(), s.nbytes()): s.nbytes() for s in (t.untyped_storage() for t in state.values())}
    if (held := sum(storages.values())) < needed:
        raise BadInput(f"{path}: its weights do not fit {network}: they take {needed:,} bytes, and the file holds "
                       f"{held:,} (fewer tensors seen through views); a checkpoint holds every weight")  # fmt: skip


def _plain(value: Any) -> bool:
    """A dense tensor in memory, as torch.load reads one from the file: not a meta tensor (no data, any size), a
    sparse one or a subclass."""
    return type(value) in (torch.Tensor, nn.Parameter) and value.layout == torch.strided and value.device.type == "cpu"


def _first_misfit(wanted: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """The first weight, in the network's order, that the checkpoint lacks or holds in another shape; else the
    first it holds that the network has not."""
    for key, tensor in wanted.items():
        if key not in state:
            lacking = sum(k not in state for k in wanted)
            return f"{shown(key, 100)} is missing ({lacking:,} of its {len(wanted):,} weights are)"
        if state[key].shape != tensor.shape:
            held = shown(tuple(state[key].shape), 80)  # the file's: any number of dimensions
            return f"{shown(key, 100)} is {held} where the network's is {tuple(tensor.shape)}"
    extra = next((k for k in state if k not in wanted), None)
    return None if extra is None else f"{shown(extra, 100)} is no weight of that network"


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the trained network from a checkpoint (its tensors checked by load_checkpoint), weights included, in
    eval mode."""
    model = build_model(ckpt["arch"], len(ckpt["class_names"]), source=ckpt.get("source", "torchvision"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # a checkpoint that never went through check_network
        said = " ".join(line.strip() for line in str(exc).splitlines()[:2])  # torch's heading, then the first key
        raise BadInput(f"the checkpoint's weights do not fit {shown(ckpt['arch'], 100)}: {shown(said)}") from None
    return model.eval()


def save_checkpoint(path, state: dict[str, torch.Tensor], **meta) -> None:
    """Write weights plus what is needed to rebuild and preprocess (arch, class_names, image_size, ...)."""
    from imgclf.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": state, **meta}, tmp)
