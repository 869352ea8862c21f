"""Pictures the web page shows: thumbnails of images (through the one decoder) and pixels as data URLs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from imgclf.data import images
from imgclf.data.images import UNREADABLE


def thumbnail(path: Path, size: int, opener=None) -> str | None:
    """A small JPEG of the image as a data URL (None when it cannot be read): the image as shown (EXIF turned, a
    16-bit or a 0-1 float image scaled to 8 bits), as the data pages show it."""
    try:
        with (opener or (lambda p: open(p, "rb")))(path) as f:
            buf = io.BytesIO()
            images.thumbnail(f, size).save(buf, format="JPEG", quality=85)
    except UNREADABLE:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def png_url(pixels) -> str:
    """uint8 HWC pixels as a PNG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
