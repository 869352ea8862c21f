"""Grad-CAM: where the network looked when it chose a class (captum's LayerGradCam), drawn over the image.

The layer is the network's last feature map unless named: torchvision's AlexNet and VGGs, `features` (the conv
stack's output); timm CNNs, their last feature stage (`feature_info`: `layer4` of a ResNet, `stages.3` of a
ConvNeXt); any other network, its last Conv2d. A name from `named_modules()` overrides it (predict
--explain-layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from imgclf.errors import BadInput


def default_layer(model: nn.Module) -> str:
    info = getattr(model, "feature_info", None)
    if info is not None and len(info):  # timm: its last feature stage
        return info[-1]["module"]
    if isinstance(getattr(model, "features", None), nn.Sequential):  # torchvision's AlexNet, VGG
        return "features"
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise BadInput("Grad-CAM needs a convolutional layer, and this network has none: name one (--explain-layer)")
    return convs[-1]


def find_layer(model: nn.Module, name: str | None) -> nn.Module:
    modules = dict(model.named_modules())
    name = name or default_layer(model)
    if name not in modules or not name:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-3:]
        raise BadInput(f"--explain-layer {name} is not a layer of this network; its last convolutions: {convs}")
    return modules[name]


def check_layer(model: nn.Module, name: str | None, image_size: int) -> None:
    """BadInput unless the layer (by name, or the default) gives a map of positions, (N, C, H, W), for an image of
    `image_size`: Grad-CAM weighs a map's positions; a head's or a pooling's flat output has none. One forward pass
    of a blank image, before any real one."""
    layer, shapes = find_layer(model, name), []
    hook = layer.register_forward_hook(lambda module, args, out: shapes.append(getattr(out, "shape", None)))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        hook.remove()
    if not shapes or shapes[0] is None or len(shapes[0]) != 4:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-3:]
        given = tuple(shapes[0]) if shapes and shapes[0] is not None else "no tensor"
        raise BadInput(
            f"--explain-layer {name or default_layer(model)} gives {given}, not a feature map (N, C, H, W): name a "
            f"convolutional layer, e.g. one of {convs}"
        )


def grad_cam(model: nn.Module, inputs: torch.Tensor, classes: Sequence[int], layer: str | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1] at the inputs' size: Grad-CAM of `classes[i]` for normalised `inputs[i]`."""
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    cam = LayerGradCam(model, find_layer(model, layer))
    with torch.enable_grad():
        target = torch.as_tensor(list(classes), device=inputs.device)  # on the inputs' device: CUDA too
        maps = cam.attribute(inputs, target=target, relu_attributions=True)
    maps = LayerAttribution.interpolate(maps.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp(min=0).cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0)


def overlay(images: np.ndarray, maps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 (N, 3, H, W) images with their maps drawn over them in the jet colour map."""
    from matplotlib import colormaps

    heat = colormaps["jet"](maps)[..., :3].transpose(0, 3, 1, 2) * 255  # (N, 3, H, W)
    return np.clip((1 - alpha) * images + alpha * heat, 0, 255).astype(np.uint8)
