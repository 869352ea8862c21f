"""Grad-CAM (imgclf.models.explain): the layer each architecture is explained at, and a map that finds the part of
the image that decides the class."""

import numpy as np
import pytest
import torch
from torch import nn

from imgclf.models.build import build_model
from imgclf.models.explain import default_layer, grad_cam, overlay


@pytest.mark.parametrize(
    "name, source, layer",
    [
        ("alexnet", "torchvision", "features"),
        ("vgg16", "torchvision", "features"),
        ("test_resnet", "timm", "layer4"),
        ("test_convnext", "timm", "stages.3"),
    ],
)
def test_each_architecture_is_explained_at_its_last_feature_map(name, source, layer):
    model = build_model(name, 3, source=source)
    assert default_layer(model) == layer
    maps = grad_cam(model, torch.randn(2, 3, 64, 64), [0, 2])
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_the_map_lies_on_what_decides_the_class():
    """A network whose class c is the amount of colour channel c (a 1x1 convolution, pooling, a linear layer): on a
    black image with a red square and a green one, the map of "red" lies on the red square, of "green" on the green."""
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        for layer in (model[0], model[4]):
            layer.weight.copy_(torch.eye(3).view_as(layer.weight))
            layer.bias.zero_()
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, 2:10, 2:10] = 1  # red, top left
    image[0, 1, 20:28, 20:28] = 1  # green, bottom right
    red, green = grad_cam(model, image.repeat(2, 1, 1, 1), [0, 1], layer="1")
    assert red[2:10, 2:10].min() == pytest.approx(1) and red[20:28, 20:28].max() == 0
    assert green[20:28, 20:28].min() == pytest.approx(1) and green[2:10, 2:10].max() == 0
    drawn = overlay((image.numpy() * 255).astype(np.uint8), red[None])
    assert drawn.shape == (1, 3, 32, 32) and drawn.dtype == np.uint8
