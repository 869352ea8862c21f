"""Config into the objects a training step needs: shared by the train stage and `imgclf lr-find`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imgclf.contract import ContractError, ServingSpec
from imgclf.data.datasets import build_loader, load_split
from imgclf.data.report import auto_preset
from imgclf.data.sampling import class_weights
from imgclf.data.split import read_labels
from imgclf.data.transforms import Preprocess, build_augment, check_augment
from imgclf.devices import seed_everything
from imgclf.errors import BadInput
from imgclf.inference import DeviceSetup
from imgclf.models.build import build_model, check_batch_for_norm
from imgclf.models.preprocessing import resolve_preprocessing
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.training import distributed as dist
from imgclf.training.engine import Trainer
from imgclf.training.optimizers import build_optimizer


@dataclass
class Training:
    """The network, the trainer around it, the loaders, the shuffling generator and the serving contract."""

    model: nn.Module
    trainer: Trainer
    train_loader: object
    val_loader: object
    generator: torch.Generator
    spec: ServingSpec
    epochs: int  # trainer.epochs, or what epochs=auto came to for this data
    augment: str | None = None  # the preset augment=auto chose; None when the config named the ops


def build_training(opts: Options, paths: Paths, device: torch.device) -> Training:
    """Seed, data, network, optimizer, augmentation and schedule, in the order the seeded RNG sees them."""
    t, m, o = opts.trainer, opts.model, opts.optim
    check_augment(opts.augment.op_sets(), m.image_size)  # before the seed, the data and the network: one line
    setup = DeviceSetup.for_device(device, t.amp, t.channels_last)
    generator = seed_everything(opts.seed, t.deterministic)
    pre = resolve_preprocessing(
        m.source, m.name, m.image_size, m.mean, m.std, m.interpolation, crop_pct=m.crop_pct, resize=m.resize
    )
    labels = read_labels(paths.labels(opts.data.name))
    spec = ServingSpec(labels, pre.image_size, pre.mean, pre.std, pre.interpolation, pre.resize_size, pre.resize)
    try:  # what evaluate, export and serve will accept
        spec.check("model (image_size / crop_pct is resize_size)")
    except ContractError as exc:
        raise BadInput(str(exc)) from None
    root, pin = paths.dataset(opts.data.name), device.type == "cuda"
    chosen = auto_preset(root / "split") if opts.augment.preset == "auto" else None  # by what split found
    augment = opts.augment.presets[chosen] if chosen else {"ops": opts.augment.ops, "tta": opts.augment.tta}
    ops, spec.tta = augment["ops"], list(augment.get("tta", ()))  # ops {}: batches centre-cropped like val's
    train_set = load_split(root, "train", opts.data.subset, spec, crop=not ops)
    balance = opts.data.balance
    train_loader = build_loader(train_set, t.batch_size, True, generator, pin, balanced=balance == "sampler")
    val_loader = build_loader(load_split(root, "val", opts.data.subset, spec), t.batch_size, False, pin_memory=pin)
    model = build_model(
        m.name,
        len(spec.class_names),
        source=m.source,
        pretrained=m.pretrained,
        weights=m.weights,
        download=m.download,
        dropout=m.dropout,
    ).to(device)
    check_batch_for_norm(model, m.name, t.batch_size, dist.world_size())
    if dist.world_size() > 1:  # same initial weights on every rank, then each its own dropout masks and shifts
        torch.manual_seed(opts.seed + dist.rank())
    div = opts.finetune.backbone_lr_divisor
    optimizer = build_optimizer(
        opts.optim.factory(), model, lr=o.lr, weight_decay=o.weight_decay, backbone_lr_divisor=div
    )
    augment = build_augment(ops, spec.image_size, seed=opts.seed + dist.rank()) if ops else None
    epochs = t.epochs_for(len(train_loader))
    scheduler = opts.schedule.factory()(optimizer, epochs=epochs, steps_per_epoch=len(train_loader))
    weight = class_weights(train_set.labels, len(spec.class_names)).to(device) if balance == "weights" else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    preprocess = Preprocess(pre.mean, pre.std)
    trainer = Trainer(
        model,
        criterion,
        optimizer,
        setup,
        preprocess=preprocess.to(device),
        scheduler=scheduler,
        scaler=setup.grad_scaler(),
        augment=augment,
        grad_clip=t.grad_clip,
        log_every=t.log_every,
    )
    return Training(model, trainer, train_loader, val_loader, generator, spec, epochs, chosen)
