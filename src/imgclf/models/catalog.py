"""The networks imgclf knows: torchvision's and timm's, checked by name, and timm's metadata."""

from __future__ import annotations

from imgclf.errors import BadInput, did_you_mean, shown

SOURCES = ("torchvision", "timm")
TORCHVISION_ARCHS = ("alexnet", "vgg16", "vgg16_bn")  # networks whose head is classifier[-1]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # when a timm model has no cfg


def check_name(source: str, name: str) -> None:
    """One line naming what is valid, for an unknown source or network."""
    if source == "timm":
        import timm

        if not timm.is_model(name):
            hint = did_you_mean(name, timm.list_models(), "model.name=")
            raise BadInput(
                f"unknown timm model '{shown(name, 100)}'{hint}; list them with: python -c \"import timm; "
                f"print(timm.list_models('{shown(name.split('.')[0][:4])}*'))\""
            )
    elif source != "torchvision":
        raise BadInput(f"unknown model.source '{shown(source, 100)}'; choose one of: {', '.join(SOURCES)}")
    elif name not in TORCHVISION_ARCHS:
        hint = did_you_mean(name, TORCHVISION_ARCHS)
        raise BadInput(
            f"unknown model '{shown(name, 100)}'{hint}; choose one of: {', '.join(TORCHVISION_ARCHS)}, "
            "or model=timm model.name=<any timm model>"
        )


def timm_cfg(name: str) -> dict:
    """timm's pretrained_cfg for `name` (weights location, input size, mean, std), without building the model."""
    from timm.models import get_pretrained_cfg

    check_name("timm", name)
    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}
