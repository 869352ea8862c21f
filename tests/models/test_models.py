"""build_model(): torchvision and timm networks, weights from caches and local files, head swap, preprocessing."""

import logging

import pytest
import torch

from imgclf.models.build import build_model, features, head, set_backbone_trainable
from imgclf.models.preprocessing import resolve_preprocessing
from imgclf.models.weights import WeightsNotFound
from imgclf.training.optimizers import param_groups


def torchvision_cache(torch_home, arch):
    """Write a state dict of `arch` where torchvision's weights API looks for it; return that state dict."""
    from torchvision import models as tv

    url = tv.get_model_weights(arch).DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tv.get_model(arch, weights=None).state_dict()
    torch.save(state, path)
    return state


def hf_cache(hf_home, repo, state):
    """Write `state` as model.safetensors in Hugging Face's cache layout for `repo` (refs/main -> snapshot)."""
    from safetensors.torch import save_file

    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")


def test_torchvision_pretrained_weights_come_from_torch_home_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    saved = torchvision_cache(tmp_path, "alexnet")
    caplog.set_level(logging.INFO, logger="imgclf.models")
    model = build_model("alexnet", 3, pretrained=True, download=False)
    torch.testing.assert_close(model.features[0].weight, saved["features.0.weight"])
    assert head(model).out_features == 3
    assert "loaded 14/16 tensors of alexnet" in caplog.text  # all but the 1000-class ImageNet head
    assert "skipped (shape differs) keys (2): classifier.6.bias, classifier.6.weight" in caplog.text


def test_missing_weights_is_one_clear_error_never_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFound) as err:
        build_model("vgg16", 3, pretrained=True, download=False)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message and "model.weights=" in message


def test_local_weights_file_safetensors_and_own_checkpoint(tmp_path, caplog):
    from safetensors.torch import save_file

    donor = build_model("alexnet", 5)
    save_file(donor.state_dict(), tmp_path / "w.safetensors")
    model = build_model("alexnet", 5, weights=str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(model.classifier[1].weight, donor.classifier[1].weight)
    # our own checkpoint as a starting point for 3 classes: the 5-class head does not fit and is reported
    torch.save({"model": donor.state_dict(), "class_names": list("abcde")}, tmp_path / "model.pt")
    caplog.set_level(logging.INFO, logger="imgclf.models")
    model = build_model("alexnet", 3, weights=str(tmp_path / "model.pt"))
    torch.testing.assert_close(model.features[3].weight, donor.features[3].weight)
    assert "skipped (shape differs) keys (2): classifier.6.bias, classifier.6.weight" in caplog.text
    # an earlier run's checkpoint for the same classes continues with its head too
    same = build_model("alexnet", 3, weights=str(tmp_path / "model.pt"))
    torch.save({"model": same.state_dict()}, tmp_path / "three.pt")
    torch.testing.assert_close(
        build_model("alexnet", 3, weights=str(tmp_path / "three.pt")).classifier[6].weight, same.classifier[6].weight
    )
    with pytest.raises(FileNotFoundError, match="model.weights file .*nope.pth not found"):
        build_model("alexnet", 3, weights=str(tmp_path / "nope.pth"))
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no tensor in .* fits alexnet"):
        build_model("alexnet", 3, weights=str(tmp_path / "other.safetensors"))


def test_timm_pretrained_from_hugging_face_cache(tmp_path, monkeypatch):
    import timm

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFound, match=r"not found in .*hub \(models--timm--resnet18.a1_in1k\)"):
        build_model("resnet18", 4, source="timm", pretrained=True, download=False)
    state = timm.create_model("resnet18").state_dict()
    hf_cache(tmp_path, "timm/resnet18.a1_in1k", state)
    model = build_model("resnet18", 4, source="timm", pretrained=True, download=False)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    assert model.get_classifier().out_features == 4
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        build_model("resnet_nope", 4, source="timm")


def test_unknown_torchvision_model_lists_choices():
    with pytest.raises(
        ValueError, match=r"unknown model 'vgg61' \(did you mean vgg16\?\); choose one of: alexnet, vgg16, vgg16_bn"
    ):
        build_model("vgg61", 3)


def test_preprocessing_follows_weights_metadata_unless_overridden():
    spec = resolve_preprocessing("torchvision", "alexnet")
    assert (spec.image_size, spec.interpolation, spec.min_size) == (224, "bilinear", 63)
    assert spec.mean == pytest.approx([0.485, 0.456, 0.406]) and spec.std == pytest.approx([0.229, 0.224, 0.225])
    assert resolve_preprocessing("torchvision", "alexnet", image_size=64, mean=[0.5] * 3).mean == [0.5] * 3
    with pytest.raises(ValueError, match="model.image_size=32 is too small for alexnet; it needs at least 63 px"):
        resolve_preprocessing("torchvision", "alexnet", image_size=32)
    assert (spec.crop_pct, spec.resize_size) == (224 / 256, 256)  # torchvision's Resize(256) + CenterCrop(224)
    small = resolve_preprocessing("torchvision", "alexnet", image_size=64)
    assert small.resize_size == 73 and resolve_preprocessing("torchvision", "alexnet", 64, crop_pct=1).resize_size == 64
    timm_spec = resolve_preprocessing("timm", "resnet18")
    assert (timm_spec.image_size, timm_spec.interpolation) == (224, "bicubic")


@pytest.mark.parametrize("name,source", [("alexnet", "torchvision"), ("resnet18", "timm")])
def test_features_then_head_is_the_model(name, source):
    model = build_model(name, 3, source=source).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(head(model)(features(model, x)), model(x))


def test_param_groups_no_decay_on_norms_and_biases_and_slower_backbone():
    model = build_model("vgg16_bn", 3)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_divisor=10)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.features[1].weight)]["weight_decay"] == 0.0  # BatchNorm scale
    assert by_id[id(model.features[0].bias)]["weight_decay"] == 0.0
    assert by_id[id(model.features[0].weight)] == {
        **by_id[id(model.features[0].weight)],
        "weight_decay": 0.05,
        "lr": pytest.approx(1e-4),
    }
    assert by_id[id(head(model).weight)]["lr"] == 1e-3 and groups[-1]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_set_backbone_trainable_freezes_all_but_the_head():
    model = build_model("alexnet", 3)
    set_backbone_trainable(model, False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.6.weight", "classifier.6.bias"]
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())
