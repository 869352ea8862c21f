"""The one way an image file becomes pixels, for split, training's packs, evaluation, `imgclf predict` and
`imgclf serve`: its size read from the header and checked against one pixel limit before anything is decoded."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from imgclf.errors import BadInput

# PIL's own default (about 9459 x 9459): above every camera's photo, below what a 20 KB PNG can claim. One decode
# holds at most MAX_PIXELS x 4 bytes as RGB (358 MB) plus the file's own mode while converting (up to as much).
MAX_PIXELS = 89_478_485
# 32-bit grayscale (integer or float) holds 4 bytes a pixel, its 8-bit scaling 1 (as_shown) and the RGB copy 4:
# 9, so fewer pixels
MAX_PIXELS_32_BIT_GRAY = MAX_PIXELS * 8 // 9
# PIL's WebP decoder holds about 15 bytes a pixel at its peak (libwebp's RGBA, PIL's copy, the RGB conversion):
# half the pixels, so that a WebP stays within the memory another format of MAX_PIXELS takes
MAX_PIXELS_WEBP = MAX_PIXELS // 2
RESIZE_MODES = ("crop", "squash")  # contract.py's, which imports nothing of imgclf (tests/test_serving.py: equal)


# the raster formats a photo or a data set comes in; PIL would also open EPS (through Ghostscript, a program run on
# the file), PDF, icons and a few dozen rarer formats whose decoders a crafted file reaches: those are not images here
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM")


class ImageTooLarge(BadInput):
    """An image whose header claims more pixels than MAX_PIXELS: refused before it is decoded."""


@contextmanager
def open_image(source, on_size: Callable[[int, int], None] | None = None) -> Iterator[Image.Image]:
    """PIL's lazy open (the header only) of a path or a file object, refused past MAX_PIXELS; decode inside.
    `on_size(width, height)`, called before any decoding, may refuse it too (a request's pixel budget)."""
    with warnings.catch_warnings():
        # the size is checked here, against our limit; PIL's own warning (or its error at 2x) would come later
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source, formats=FORMATS) as img:
            width, height = img.size
            limit = MAX_PIXELS_32_BIT_GRAY if img.mode in ("I", "F") else MAX_PIXELS
            limit = MAX_PIXELS_WEBP if img.format == "WEBP" else limit
            if width * height > limit:
                raise ImageTooLarge(f"image of {width} x {height} pixels is over the limit of {limit:,} pixels")
            if on_size is not None:
                on_size(width, height)
            yield img


def decode_image(
    source, size: int, interpolation: str = "bilinear", resize: str = "crop", *, on_size=None
) -> np.ndarray:
    """Decode any PIL-readable image to RGB (grayscale expanded) as a `size` x `size` HWC uint8 array: `crop`
    resizes the shorter side to `size` and keeps the centre (torchvision's Resize + CenterCrop); `squash`
    resizes the whole image to the square (fast.ai 2017)."""
    if resize not in RESIZE_MODES:
        raise BadInput(f"unknown model.resize '{resize}'; choose one of: {', '.join(RESIZE_MODES)}")
    method = Image.Resampling[interpolation.upper()]
    with open_image(source, on_size) as img:
        w, h = img.size  # an EXIF turn swaps them: nothing below depends on which is which
        if resize == "crop" and w != h:
            scale = size / min(w, h)
            w, h = max(size, int(w * scale)), max(size, int(h * scale))  # torchvision's Resize(size)
        else:
            w, h = size, size
        _check_resize(img.size, (w, h), size)
        img = as_shown(img).convert("RGB")
        if (w, h) != img.size:
            img = img.resize((w, h), method)
        if (w, h) != (size, size):
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def _check_resize(source: tuple[int, int], target: tuple[int, int], size: int) -> None:
    """A long, thin image resized to `target` would hold more than MAX_PIXELS: the image (a 1 x 300,000 PNG is a
    few hundred bytes) would cost memory in proportion to its length times `size`. PIL resizes across, then down:
    it holds the target's width times the source's height on the way."""
    (width, height), (w, h) = source, target
    if max(w * h, w * max(width, height)) > MAX_PIXELS:
        raise ImageTooLarge(
            f"image of {width} x {height} pixels is too long and thin for {size} px: resized, it would be over the "
            f"limit of {MAX_PIXELS:,} pixels"
        )


def thumbnail(path: Path | BinaryIO, size: int = 128) -> Image.Image:
    """The RGB image as shown, at most `size` px a side, for a grid of samples: under the pixel limit, and a JPEG
    decoded at the smallest scale that still gives `size` (a 12 MP photo: 1/8 of its pixels)."""
    with open_image(path) as img:
        img.draft("RGB", (size, size))
        img = as_shown(img)
        img.thumbnail((size, size))
        return img.convert("RGB")


EXIF_ORIENTATION = 0x0112
WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale (PNG, TIFF), as PIL opens it


def as_shown(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it: turned by its EXIF orientation (a phone stores a portrait photo sideways
    with a tag saying so), and 16-bit grayscale scaled to 8 bits (PIL's convert clips it: all but black is white)."""
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        from PIL import ImageOps

        img = ImageOps.exif_transpose(img)
    if img.mode in WIDE_GRAY:
        img = _to_8_bits(img, lambda band: (np.clip(band, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8))
    elif img.mode == "F":  # float grayscale (TIFF): 0 to 1 when no value is above 1 (PIL's convert made it black)
        scale = 255.0 if _bands_max(img) <= 1 else 1.0
        img = _to_8_bits(img, lambda band: np.clip(np.nan_to_num(band) * scale, 0, 255).round().astype(np.uint8))
    return img


def _bands(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """The image's rows in bands of about BAND_PIXELS: no full-size copy beside the image (2 or 4 bytes a pixel)."""
    width, height = img.size
    rows = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, np.asarray(img.crop((0, top, width, min(top + rows, height))))


def _bands_max(img: Image.Image) -> float:
    return max((float(np.nanmax(band, initial=0.0)) for _, band in _bands(img)), default=0.0)


def _to_8_bits(img: Image.Image, convert: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    shown = np.empty((img.size[1], img.size[0]), np.uint8)
    for top, band in _bands(img):
        shown[top : top + len(band)] = convert(band)
    return Image.fromarray(shown, "L")


BAND_PIXELS = 1 << 22  # as_shown converts 16-bit grayscale about 4 M pixels at a time


# what a file that is not a readable image raises while it is opened or decoded (ImageTooLarge is a ValueError)
# (RuntimeError: libavif's "Failed to decode image")
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, RuntimeError, Image.DecompressionBombError)


def why_unreadable(exc: BaseException) -> str:
    """The reason a file could not be decoded, in a few words for a message or a report."""
    if isinstance(exc, ImageTooLarge):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError):  # PIL's own check, at twice the limit, came first
        return f"image over the limit of {MAX_PIXELS:,} pixels"
    return f"not a readable image ({type(exc).__name__})"
