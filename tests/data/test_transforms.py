import pytest
import torch

from imgclf.config import compose
from imgclf.data.transforms import build_augment, center_crop, tta_views
from imgclf.errors import BadInput, MissingInput


def preset(name: str) -> dict:
    return compose([f"augment={name}"], resolve=True).augment.ops


def test_digits_preset_rotates_shifts_and_scales_each_image_differently_never_mirrors():
    images = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    images[:, :, 8:24, 14:18] = 255  # a vertical bar: a "1"
    out = build_augment(preset("digits"), 32, seed=0)(images)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
    # per-image parameters: no two images of the batch moved the same way (a batch-wide transform would)
    assert len({tuple(o.flatten()[::7].round().tolist()) for o in out}) == 16
    # the digit preset has no flip: mirrored inputs are not among the ops
    assert [type(op).__name__ for op in build_augment(preset("digits"), 32).ops] == ["RandomAffine"]


def test_photos_preset_crops_to_the_model_size_from_the_stored_size():
    images = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8)
    aug = build_augment(preset("photos"), 32, seed=0)
    names = [type(op).__name__ for op in aug.ops]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomErasing"]
    assert aug(images).shape == (8, 3, 32, 32)


def test_augmentation_is_reproducible_from_its_own_stream_and_leaves_the_global_one_alone():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    ops = preset("digits")
    a, b, c = (build_augment(ops, 32, seed=s) for s in (1, 1, 2))
    torch.manual_seed(0)
    global_before = torch.get_rng_state()
    first = a(images)
    assert torch.equal(torch.get_rng_state(), global_before)  # dropout and shuffling see no difference
    torch.manual_seed(123)  # the global stream does not steer it either
    assert torch.equal(first, b(images)) and not torch.equal(first, c(images))
    # a checkpoint's generator state resumes the same sequence
    state = a.generator.get_state()
    second = a(images)
    b.generator.set_state(state)
    assert torch.equal(second, b(images)) and not torch.equal(first, second)


def test_none_preset_has_no_ops_and_bad_ops_are_named():
    assert not preset("none")
    with pytest.raises(BadInput, match="augment.ops.x must name a kornia.augmentation class"):
        build_augment({"x": {"_target_": "os.system", "command": "true"}}, 32)
    with pytest.raises(BadInput, match="augment.ops.affine is not valid: TypeError"):
        build_augment({"affine": {"_target_": "kornia.augmentation.RandomAffine", "degrees": "ten"}}, 32)


def test_center_crop_and_tta_views():
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    assert torch.equal(center_crop(images, 8), images[..., 1:9, 1:9])
    with pytest.raises(BadInput, match="cannot centre-crop 10x10 images to 12 px"):
        center_crop(images, 12)
    views = tta_views(images, 8, ["hflip", "crops"])
    assert len(views) == 6 and all(v.shape == (2, 3, 8, 8) for v in views)
    assert torch.equal(views[0], images[..., 1:9, 1:9]) and torch.equal(views[1], views[0].flip(-1))
    assert torch.equal(views[2], images[..., :8, :8]) and torch.equal(views[5], images[..., 2:, 2:])
    # no margin: corners are shifts of a zero-padded image (size/32, at least 1 px)
    shifted = tta_views(images[..., :8, :8], 8, ["crops"])
    assert torch.equal(shifted[1][..., 1:, 1:], images[..., :7, :7]) and shifted[1][..., 0, :].sum() == 0
    with pytest.raises(BadInput, match="unknown test-time views \\['rotate'\\]"):
        tta_views(images, 8, ["rotate"])


def test_auto_picks_the_preset_the_split_images_call_for(tmp_path, compose_cfg):
    import json

    from imgclf.data.report import auto_preset, looks_like_symbols
    from imgclf.options import Augment, Options

    def report(modes, side):
        size = {"width": {"min": side, "max": side}, "height": {"min": side, "max": side}, "modes": modes}
        return {"image_size": size}

    assert looks_like_symbols(report({"L": 900}, 28))  # DIGITS' train_small: gray digits
    assert looks_like_symbols(report({"RGB": 50}, 32))  # tiny, in colour: icons, CIFAR-sized symbols
    assert not looks_like_symbols(report({"RGB": 50, "L": 2}, 500))  # photos, a few of them gray
    assert looks_like_symbols(report({"L": 10, "1": 3}, 300))  # scans of letters
    opts = Options.from_config(compose_cfg("data=folder", f"data.path={tmp_path}"))
    assert opts.augment.preset == "auto"  # the folder source follows its data
    split = tmp_path / "split"
    split.mkdir()
    with pytest.raises(MissingInput, match=r"augment=auto reads .*report.json, which is not there; run the split"):
        auto_preset(split)
    for modes, side, preset in (({"L": 900}, 28, "digits"), ({"RGB": 40}, 256, "photos")):
        (split / "report.json").write_text(json.dumps(report(modes, side)))
        assert auto_preset(split) == preset
        chosen = opts.augment.presets[preset]
        named = Options.from_config(compose_cfg(f"augment={preset}")).augment  # what augment=<preset> gives
        assert (dict(chosen["ops"]), tuple(chosen["tta"])) == (dict(named.ops), named.tta)
        mirrors = any("Flip" in str(op.get("_target_")) for op in chosen["ops"].values())
        assert mirrors == (preset == "photos")  # never a mirror for symbols
    explicit = Options.from_config(compose_cfg("data=folder", f"data.path={tmp_path}", "augment=digits")).augment
    assert explicit.preset is None and not explicit.presets  # named on the command line: as given
    with pytest.raises(BadInput, match=r"augment=auto needs augment.presets.digits.ops"):
        Augment.build({"preset": "auto", "presets": {"photos": {"ops": {}}}}, "augment")
