import pytest
import torch

from imgclf.data.transforms import RandomShiftFlip, build_augment


def test_shift_moves_content_within_bounds_and_pads_with_zeros():
    images = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    images[:, :, 4, 4] = 255  # one bright pixel in the centre
    out = RandomShiftFlip(max_shift=2, seed=0)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    ys, xs = (out[:, 0] == 255).nonzero()[:, 1], (out[:, 0] == 255).nonzero()[:, 2]
    assert (out == 255).sum() == 64  # every image keeps its pixel (shift 2 < distance to the edge)
    assert set(ys.tolist()) == {2, 3, 4, 5, 6} and set(xs.tolist()) == {2, 3, 4, 5, 6}


def test_shift_is_reproducible_from_its_seed():
    images = torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(RandomShiftFlip(4, seed=1)(images), RandomShiftFlip(4, seed=1)(images))
    assert not torch.equal(RandomShiftFlip(4, seed=1)(images), RandomShiftFlip(4, seed=2)(images))


def test_hflip_flips_some_images():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 1, 16).repeat(32, 1, 1, 1)
    out = RandomShiftFlip(0, hflip=True, seed=0)(images)
    flipped = (out[:, 0, 0, 0] == 15).sum().item()
    assert 0 < flipped < 32 and torch.equal(out[out[:, 0, 0, 0] == 15][0], images[0].flip(2))


def test_no_augmentation_is_none():
    assert build_augment(0, False) is None
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        RandomShiftFlip(-1)
